#!/usr/bin/env python3
"""Quality versus lookup fraction, one curve per method family, from `saap eval sweep` CSV files.

usage: scripts/plot_quality.py results/quality_2026-11-23.csv [more.csv ...] -o results/quality.png

Left: perplexity increase over dense; middle: softmax mass captured; right: recall of the true
top-k keys. The x axis is the lookup fraction each setting actually read (KV plus index bytes over
a dense read), so methods are compared at equal cost. The PNG carries its provenance (the inputs:
each CSV's sha256) in a "provenance" text chunk (scripts/provenance.py).
"""
import argparse
import csv
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402


def read_rows(paths):
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows.extend(csv.DictReader(provenance.skip_comments(f)))
    if not rows:
        sys.exit(f"no rows in {', '.join(paths)}")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", nargs="+", help="CSV files written by saap eval sweep")
    ap.add_argument("-o", "--out", required=True, help="PNG to write")
    args = ap.parse_args()

    rows = read_rows(args.csv)
    families = defaultdict(list)
    for r in rows:
        families[r["family"]].append(r)
    panels = [("ppl_delta", "perplexity − dense perplexity (log)", "log"),
              ("mass", "softmax mass captured", "linear"),
              ("recall", "recall of true top-k keys", "linear")]
    colors = {f: f"C{i}" for i, f in enumerate(sorted(families))}  # one color per family in every panel
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    for ax, (key, label, yscale) in zip(axes, panels):
        for family, rs in sorted(families.items()):
            pts = sorted((float(r["lookup_fraction"]), float(r[key])) for r in rs if r.get(key, "") != "")
            if yscale == "log":  # dense has delta 0: it is the reference, not a point on a log axis
                pts = [p for p in pts if p[1] > 0]
            if not pts:
                continue
            xs, ys = zip(*pts)
            style = "*" if family == "dense" else "o-"
            ax.plot(xs, ys, style, color=colors[family], label=family, markersize=10 if family == "dense" else 5)
        ax.set_xlabel("lookup fraction (bytes read / dense)")
        ax.set_ylabel(label)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if yscale == "log":
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("Attention quality vs lookup fraction (" + ", ".join(args.csv) + ")", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    provenance.stamp_png(args.out, provenance.collect(inputs=[provenance.input_file("csv", p) for p in args.csv]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
