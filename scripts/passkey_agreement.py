#!/usr/bin/env python3
"""Passkey agreement with dense: each method scored on the trials that dense got right.

  scripts/passkey_agreement.py --dense DENSE.json --out STEM METHOD.json ...

Reads `saap --json eval passkey` results (one per method, same lengths, depths, trials and seeds)
and writes STEM.csv and STEM.json (with provenance): per method and length, the dense-correct
trials, how many of them the method also got right (agreement, with a Wilson 95% interval), the
trials only the method got right, and what it read over dense K/V: K/V and index together
(lookup_fraction), and K/V alone (kv_fraction) where the input has it.
"""
import argparse
import csv
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402


def wilson(k, n, z=1.959964):
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (c - h, c + h)


def trial_key(t):
    return (t["length"], t["depth"], t["trial"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense", required=True)
    ap.add_argument("--out", required=True, help="output stem (STEM.csv, STEM.json)")
    ap.add_argument("methods", nargs="+")
    a = ap.parse_args()
    dense = json.load(open(a.dense))
    ref = {trial_key(t): t for t in dense["passkey"]["trials"]}
    rows = []
    for path in a.methods:
        d = json.load(open(path))
        trials = {trial_key(t): t for t in d["passkey"]["trials"]}
        if set(trials) != set(ref):
            sys.exit(f"{path}: its trials are not dense's (lengths, depths or trial counts differ)")
        for t in trials.values():
            if t["passkey"] != ref[trial_key(t)]["passkey"]:
                sys.exit(f"{path}: trial {trial_key(t)} has another passkey than dense's (another seed)")
        for length in sorted({k[0] for k in ref}) + [0]:
            keys = [k for k in ref if length in (0, k[0])]
            right = [k for k in keys if ref[k]["correct"]]
            agree = sum(trials[k]["correct"] for k in right)
            lo, hi = wilson(agree, len(right))
            rows.append({
                "method": d["method"], "length": length or "all", "trials": len(keys),
                "dense_correct": len(right), "agree": agree,
                "agreement": agree / len(right) if right else float("nan"),
                "wilson95_lo": lo, "wilson95_hi": hi,
                "only_method_correct": sum(trials[k]["correct"] and not ref[k]["correct"] for k in keys),
                "lookup_fraction": d["passkey"]["lookup_fraction"],  # K/V + index over dense K/V
                "kv_fraction": d["passkey"].get("kv_fraction", ""),  # K/V alone ("": a file from before it)
            })
    inputs = [provenance.input_file("dense", a.dense)] + [provenance.input_file("method", p) for p in a.methods]
    prov = provenance.collect(inputs)
    with open(a.out + ".json", "w") as f:
        json.dump({"provenance": prov, "rows": rows}, f, indent=1)
    cols = list(rows[0])
    with open(a.out + ".csv", "w", newline="") as f:
        f.write(provenance.csv_lines(prov))
        w = csv.writer(f)  # quotes a method's name, which holds commas: saap(lookup=0.05,sinks=4,...)
        w.writerow(cols)
        w.writerows([f"{r[c]:.4f}" if isinstance(r[c], float) else r[c] for c in cols] for r in rows)
    for r in rows:
        if r["length"] == "all":
            print(f"{r['method']:<55} agreement {r['agree']}/{r['dense_correct']} = {r['agreement']:.3f} "
                  f"[{r['wilson95_lo']:.2f}, {r['wilson95_hi']:.2f}]  read {r['lookup_fraction']:.4f}")


if __name__ == "__main__":
    main()
