#!/usr/bin/env python3
"""Plots decode_bench results (time per layer vs context length) and writes a markdown table.

    scripts/plot_gpu_bench.py CSV [CSV ...] [--sdpa SDPA_JSON ...] [--png OUT.png] [--md OUT.md]
                              [--title TEXT] [--shape 32x8x128] [--defaults] [--vs-sdpa]

CSV is decode_bench's output; SDPA_JSON is bench/cuda/sdpa_bench.py's output from the same run
(several runs' files: their rows are merged, e.g. a run's 32k rows beside the main run).
--shape keeps one head shape; --defaults keeps each method's default rows (dense, Saap 5% and
2048 tokens, Quest 1024 tokens, Loki (0.25, 0.25)); --vs-sdpa plots each method's speed against
SDPA (SDPA ms / ms, 1 = level) instead of its time. The PNG and the markdown table carry their
provenance (scripts/provenance.py), with the CSVs and SDPA_JSONs as inputs (sha256).
"""
import argparse
import csv
import json
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402


# Each method's default rows (--defaults): the README's table.
DEFAULT_ROWS = {("dense", ""), ("saap", "lookup=0.05;lognormal"), ("saap", "tokens=2048;lognormal"),
                ("quest", "tokens=1024"), ("loki", "d_f=0.25;k_f=0.25")}


def label(method, param):
    if method == "dense":
        return "dense (ours)"
    if method == "saap":
        return "Saap " + param.replace("lookup=", "lookup ").replace("tokens=", "tokens ").replace(";lognormal", "")
    if method == "loki":
        return "Loki " + param.replace(";", " ")
    if method == "quest" and param:
        return "Quest " + param.replace("tokens=", "tokens ")
    return method


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv", nargs="+")
    ap.add_argument("--sdpa", action="append", default=[])
    ap.add_argument("--png")
    ap.add_argument("--md")
    ap.add_argument("--title", default="decode attention per layer, Llama-3.1-8B shapes (32q/8kv, d=128, bf16)")
    ap.add_argument("--shape", help="keep this head shape only (HQxHKVxD)")
    ap.add_argument("--defaults", action="store_true", help="each method's default rows only")
    ap.add_argument("--vs-sdpa", action="store_true", help="plot SDPA ms / ms instead of ms")
    a = ap.parse_args()
    rows = []
    for path in a.csv:
        with open(path, newline="") as f:
            rows += list(csv.DictReader(provenance.skip_comments(f)))
    rows = [r for r in rows if (not a.shape or r.get("shape", a.shape) == a.shape)
            and (not a.defaults or (r["method"], r["param"]) in DEFAULT_ROWS)]
    prov = provenance.collect(inputs=[provenance.input_file("csv", p) for p in a.csv]
                              + [provenance.input_file("sdpa", p) for p in a.sdpa])
    sdpa = {}
    for path in a.sdpa:
        for r in json.load(open(path))["rows"]:
            if not a.shape or r.get("shape", a.shape) == a.shape:
                sdpa[(int(r["batch"]), int(r["context"]))] = float(r["ms"])
    series = defaultdict(dict)  # (batch, label) -> {context: ms, or SDPA ms / ms}
    floor = defaultdict(dict)
    for r in rows:
        b, n = int(r["batch"]), int(r["context"])
        ms = float(r["ms"])
        if a.vs_sdpa:
            if (b, n) in sdpa:
                series[(b, label(r["method"], r["param"]))][n] = sdpa[(b, n)] / ms
        else:
            series[(b, label(r["method"], r["param"]))][n] = ms
        if r["method"] == "dense":
            floor[b][n] = float(r["floor_ms"])
    if not a.vs_sdpa:
        for (b, n), ms in sdpa.items():
            series[(b, "PyTorch SDPA")][n] = ms
    batches = sorted({b for b, _ in series})

    if a.png:
        fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 5), squeeze=False)
        for ax, b in zip(axes[0], batches):
            for (bb, name), pts in sorted(series.items()):
                if bb != b:
                    continue
                xs = sorted(pts)
                style = "--" if name == "PyTorch SDPA" else "-"
                ax.plot(xs, [pts[x] for x in xs], style, marker="o", ms=3, label=name)
            if a.vs_sdpa:
                ax.axhline(1.0, ls="--", color="black", lw=1, label="PyTorch SDPA (level)")
                ax.set_ylabel("speed vs PyTorch SDPA (SDPA time / time)")
            else:
                xs = sorted(floor[b])
                ax.plot(xs, [floor[b][x] for x in xs], ":", color="black",
                        label="dense floor (bytes / the run's best read bandwidth)")
                ax.set_ylabel("time per layer (ms)")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("context length (tokens)")
            ax.set_title(f"batch {b}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(a.title, fontsize=10)
        fig.tight_layout()
        fig.savefig(a.png, dpi=120)
        provenance.stamp_png(a.png, prov)

    if a.md:
        # Runs from before the CUDA-graph timing have no graph_ms column.
        graph = "graph_ms" in rows[0]
        head = "| method | batch | context | ms | GB/s | floor ms | lookup | speed-up vs dense |"
        rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
        if graph:
            head += " graph ms | speed-up, graph vs dense graph |"
            rule += "---:|---:|"
        lines = [head, rule]
        for r in rows:
            line = (f"| {label(r['method'], r['param'])} | {r['batch']} | {r['context']} | {float(r['ms']):.4f} | "
                    f"{float(r['gbps']):.0f} | {float(r['floor_ms']):.4f} | {float(r['lookup']):.3f} | "
                    f"{float(r['speedup']):.2f}x |")
            if graph:
                g = float(r["graph_ms"])
                line += f" {g:.4f} | {float(r['graph_speedup']):.2f}x |" if g > 0 else " | |"
            lines.append(line)
        for (b, n), ms in sorted(sdpa.items()):
            lines.append(f"| PyTorch SDPA | {b} | {n} | {ms:.4f} | {2 * b * 8 * n * 128 * 2 / (ms * 1e-3) / 1e9:.0f} | | 1.000 | |"
                         + (" | |" if graph else ""))
        with open(a.md, "w") as f:
            f.write(provenance.md_line(prov) + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
