#!/usr/bin/env python3
"""Plots dense decode against PyTorch SDPA per head shape and batch, one bar per run.

    scripts/plot_dense_shapes.py --run LABEL BENCH_CSV SDPA_JSON [--run ...] --context 131072 --png OUT.png

Each run is decode_bench's CSV and bench/cuda/sdpa_bench.py's JSON from the same machine session;
a bar is SDPA ms / dense ms (1 = level) for the default dense row (empty param) of one shape and
batch at --context. Shapes and batches are those of the first run. The PNG carries its provenance
(scripts/provenance.py), with every input file (sha256).
"""
import argparse
import csv
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402


def dense_vs_sdpa(bench_csv, sdpa_json, context):
    """{(shape, batch): SDPA ms / dense ms} at `context` tokens."""
    with open(bench_csv, newline="") as f:
        dense = {(r["shape"], int(r["batch"])): float(r["ms"]) for r in csv.DictReader(provenance.skip_comments(f))
                 if r["method"] == "dense" and r["param"] == "" and int(r["context"]) == context}
    sdpa = {(r["shape"], int(r["batch"])): float(r["ms"]) for r in json.load(open(sdpa_json))["rows"]
            if int(r["context"]) == context}
    return {k: sdpa[k] / ms for k, ms in dense.items() if k in sdpa}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", nargs=3, action="append", required=True, metavar=("LABEL", "BENCH_CSV", "SDPA_JSON"))
    ap.add_argument("--context", type=int, default=131072)
    ap.add_argument("--png", required=True)
    a = ap.parse_args()
    runs = [(label, dense_vs_sdpa(b, s, a.context)) for label, b, s in a.run]
    keys = sorted(runs[0][1], key=lambda k: (k[0], k[1]))
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(keys)), 4.5))
    for i, (label, ratio) in enumerate(runs):
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(keys))]
        ax.bar(xs, [ratio.get(k, 0) for k in keys], width, label=label)
    ax.axhline(1.0, ls="--", color="black", lw=1, label="PyTorch SDPA (level)")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{s}\nb{b}" for s, b in keys], fontsize=8)
    ax.set_ylabel("dense speed vs PyTorch SDPA (SDPA time / time)")
    ax.set_title(f"dense decode per layer at {a.context // 1024}k tokens, by head shape (q x kv x d) and batch",
                 fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.png, dpi=120)
    inputs = [provenance.input_file(kind, p) for _, b, s in a.run for kind, p in (("bench", b), ("sdpa", s))]
    provenance.stamp_png(a.png, provenance.collect(inputs=inputs))


if __name__ == "__main__":
    main()
