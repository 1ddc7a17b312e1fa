#!/usr/bin/env python3
"""The method x budget table of an `saap eval saap-grid` result (attention mass, recall@k, the K/V
and index fractions read), as Markdown with provenance, for the README.

    python3 scripts/gemma_attention_table.py results/gemma3_attention_32k_2026-12-03.json \
        --out results/gemma3_attention_32k_2026-12-03.md

Rows are grouped by method; a fraction row is "f%", a fixed-budget row "B tokens". The numbers are
the grid's overall means: over the layers it replayed (Gemma-3: the global layers 5, 11, 17), their
query heads and the sampled queries. A second table gives the mass per layer at each budget.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402

ORDER = ["oracle", "partition-oracle", "saap", "kmeans", "loki", "quest", "streaming", "h2o"]
NAMES = {"oracle": "oracle top-k", "partition-oracle": "partition oracle", "saap": "Saap", "kmeans": "k-means",
         "loki": "Loki (d_f 0.25)", "quest": "Quest", "streaming": "StreamingLLM", "h2o": "H2O"}


def method_of(run):
    return run["label"].split("@")[0]


def budget_of(run):
    return f"{run['budget_tokens']} tokens" if run["budget_tokens"] else f"{run['lookup'] * 100:g}%"


def budgets(runs):
    fr = sorted({r["lookup"] for r in runs if not r["budget_tokens"]})
    tk = sorted({r["budget_tokens"] for r in runs if r["budget_tokens"]})
    return [f"{f * 100:g}%" for f in fr] + [f"{t} tokens" for t in tk]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", help="the JSON that saap eval saap-grid wrote")
    ap.add_argument("--out", required=True, help="the Markdown file to write")
    ap.add_argument("--note", action="append", default=[], help="a paragraph to add under the tables (repeatable)")
    a = ap.parse_args()
    with open(a.grid) as f:
        doc = json.load(f)
    runs = doc["runs"]
    cells = {(method_of(r), budget_of(r)): r for r in runs}
    methods = [m for m in ORDER if any(k[0] == m for k in cells)]
    cols = budgets(runs)
    global_layers = [i for i, layer in enumerate(runs[0]["attention"]["layers"]) if layer["samples"] > 0]

    lines = [f"# Attention at {doc['window_len']} tokens, Gemma-3-270M, global layers {global_layers}\n", "\n"]
    lines.append(
        f"`saap eval saap-grid` on `eval.txt`: {doc['windows']} windows of {doc['window_len']} tokens (BOS first), "
        f"{doc['queries_per_window']} queries a window at positions >= {doc['first_query']} (mean prefix "
        f"{doc['mean_sampled_prefix']:.0f} tokens), seed {doc['seed']}, replay `{doc['replay']}`; "
        f"sinks {doc['sinks']} + window {doc['window']} for Saap, k-means, partition oracle and Quest; "
        f"recall@{doc['top_k']}. Local layers keep their exact 512-token window and are not counted. "
        f"Each cell: mass / recall@{doc['top_k']} / K/V fraction read (measured at the sampled queries; "
        f"a KV head reads the union of its 4 query heads' selections). From `{os.path.basename(a.grid)}`.\n\n")
    def table(cell):  # one row per method, one column per budget; cell(run) -> text
        lines.append("| method | " + " | ".join(cols) + " |\n")
        lines.append("|---|" + "---|" * len(cols) + "\n")
        for m in methods:
            row = ["—" if cells.get((m, c)) is None else cell(cells[(m, c)]) for c in cols]
            lines.append(f"| {NAMES.get(m, m)} | " + " | ".join(row) + " |\n")

    table(lambda r: f"{r['attention']['mass']:.3f} / {r['attention']['recall']:.3f} / {100 * r['kv_fraction']:.2f}%")
    lines.append("\nIndex bytes read besides K/V, as a fraction of the dense K/V bytes at these prefixes: ")
    idx = []
    for m in methods:
        vals = [r["index_fraction"] for r in runs if method_of(r) == m]
        lo, hi = min(vals), max(vals)
        idx.append(f"{NAMES.get(m, m)} {lo:.3g}" if hi - lo < 5e-4 else f"{NAMES.get(m, m)} {lo:.3g}–{hi:.3g}")
    lines.append(", ".join(idx) + ".\n\n")
    lines.append("Mass per global layer (" + ", ".join(f"L{l}" for l in global_layers) + "):\n\n")
    table(lambda r: " / ".join(f"{r['attention']['layers'][l]['mass']:.3f}" for l in global_layers))

    for note in a.note:
        lines.append("\n" + note + "\n")

    prov = provenance.collect(inputs=[provenance.input_file("grid", a.grid)])
    with open(a.out, "w") as f:
        f.write(provenance.md_line(prov))
        f.writelines(lines)
    sys.stdout.writelines(lines)


if __name__ == "__main__":
    main()
