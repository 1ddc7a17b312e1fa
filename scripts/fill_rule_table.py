#!/usr/bin/env python3
"""The fill-rule measurement: two `saap eval saap-grid` runs of the same partition, one built with
the skip-and-continue fill (selection_rules.h) and one with the fill stopped at the first partition
that does not fit (the prefix that fits). Writes results/fill_rule_<date>.csv: per method and
lookup, each rule's measured K/V fraction, attention mass, mass per key read (mass / kv_fraction),
and the mass of the prefix rule interpolated at the skip rule's measured fraction (equal keys read).

    scripts/fill_rule_table.py SKIP.csv PREFIX.csv OUT.csv
"""
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402


def rows_of(path):
    with open(path) as f:
        return list(csv.DictReader(provenance.skip_comments(f)))


def interpolate(points, x):
    """Linear interpolation of y at x over (x, y) points sorted by x; None outside their range."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y0
    return None


def main(skip_path, prefix_path, out_path):
    skip, prefix = rows_of(skip_path), rows_of(prefix_path)
    table = []
    for method in sorted({r["method"] for r in skip}):
        s_rows = sorted((r for r in skip if r["method"] == method), key=lambda r: float(r["lookup"]))
        p_rows = sorted((r for r in prefix if r["method"] == method), key=lambda r: float(r["lookup"]))
        p_curve = sorted((float(r["kv_fraction"]), float(r["mass"])) for r in p_rows)
        for s, p in zip(s_rows, p_rows):
            assert s["lookup"] == p["lookup"], (s["lookup"], p["lookup"])
            skf, smass, pkf, pmass = (float(s["kv_fraction"]), float(s["mass"]), float(p["kv_fraction"]),
                                      float(p["mass"]))
            at_equal = interpolate(p_curve, skf)
            table.append({
                "method": method, "lookup": s["lookup"],
                "skip_kv_fraction": f"{skf:.5f}", "skip_mass": f"{smass:.4f}", "skip_mass_per_kv": f"{smass / skf:.3f}",
                "prefix_kv_fraction": f"{pkf:.5f}", "prefix_mass": f"{pmass:.4f}",
                "prefix_mass_per_kv": f"{pmass / pkf:.3f}",
                "prefix_mass_at_skip_kv_fraction": "" if at_equal is None else f"{at_equal:.4f}",
            })
    prov = provenance.collect(inputs=[provenance.input_file("skip-and-continue run", skip_path),
                                      provenance.input_file("prefix-that-fits run", prefix_path)])
    with open(out_path, "w", newline="") as f:
        f.write(provenance.csv_lines(prov))
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    for r in table:
        print(r)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
