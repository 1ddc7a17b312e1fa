#!/usr/bin/env python3
"""Plots decode_bench results (time per layer vs context length) and writes a markdown table.

    scripts/plot_gpu_bench.py CSV [--sdpa SDPA_JSON] [--png OUT.png] [--md OUT.md] [--title TEXT]

CSV is decode_bench's output; SDPA_JSON is bench/cuda/sdpa_bench.py's output from the same run.
The PNG and the markdown table carry their provenance (scripts/provenance.py), with the CSV and
SDPA_JSON as inputs (sha256).
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


def label(method, param):
    if method == "dense":
        return "dense (ours)"
    if method == "saap":
        return "Saap " + param.replace("lookup=", "lookup ")
    if method == "loki":
        return "Loki " + param.replace(";", " ")
    return method


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--sdpa")
    ap.add_argument("--png")
    ap.add_argument("--md")
    ap.add_argument("--title", default="decode attention per layer, Llama-3.1-8B shapes (32q/8kv, d=128, bf16)")
    a = ap.parse_args()
    with open(a.csv, newline="") as f:
        rows = list(csv.DictReader(provenance.skip_comments(f)))
    prov = provenance.collect(inputs=[provenance.input_file("csv", a.csv)]
                              + ([provenance.input_file("sdpa", a.sdpa)] if a.sdpa else []))
    sdpa = {}
    if a.sdpa:
        for r in json.load(open(a.sdpa))["rows"]:
            sdpa[(int(r["batch"]), int(r["context"]))] = float(r["ms"])
    series = defaultdict(dict)  # (batch, label) -> {context: ms}
    floor = defaultdict(dict)
    for r in rows:
        b, n = int(r["batch"]), int(r["context"])
        series[(b, label(r["method"], r["param"]))][n] = float(r["ms"])
        if r["method"] == "dense":
            floor[b][n] = float(r["floor_ms"])
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
            xs = sorted(floor[b])
            ax.plot(xs, [floor[b][x] for x in xs], ":", color="black", label="dense floor (bytes / copy bandwidth)")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("context length (tokens)")
            ax.set_ylabel("time per layer (ms)")
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
