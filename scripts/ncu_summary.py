#!/usr/bin/env python3
"""Summarises Nsight Compute raw-page CSVs (scripts/gpu_profile.sh: ncu_<method>_b<batch>_<context>.csv)
into one Markdown table per context and batch: per kernel, its launches and the median over them of
time, DRAM throughput (% of peak) and bytes read, SM throughput, warps active (achieved occupancy),
grid, registers, and the three largest warp stall reasons (cycles per issued instruction). The file starts
with the run's provenance (scripts/provenance.py): run it on the machine that profiled."""
import argparse
import csv
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402

SCALE = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6,  # to microseconds
         "byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1.0, "Gbyte": 1e3}  # to MB
STALL = re.compile(r"smsp__average_warps?_issue_stalled_(\w+?)_per_issue_active\.ratio$")
NAME = re.compile(r"ncu_(\w+?)_b(\d+)_(\d+)\.csv$")


def read_raw(path):
    """(header, units, rows) of ncu's raw page, or None when the file holds no kernel rows."""
    lines = open(path, errors="replace").read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        return None
    table = list(csv.reader(l for l in lines[start:] if l.startswith('"')))
    if len(table) < 3:
        return None
    return table[0], table[1], table[2:]


def short(kernel):
    """The kernel's name and template arguments, without its parameters, return type and namespaces."""
    name = kernel.split("(")[0].removeprefix("void ")
    return re.sub(r"\b(saap|cuda|radix_topk)::", "", name)


def number(text, unit):
    try:
        return float(text.replace(",", "")) * SCALE.get(unit, 1.0)
    except ValueError:
        return None


def summarise(path):
    raw = read_raw(path)
    if raw is None:
        return None
    head, units, rows = raw
    col = {name: i for i, name in enumerate(head)}
    by_kernel = {}
    for r in rows:
        by_kernel.setdefault(r[col["Kernel Name"]], []).append(r)

    def med(rs, metric):
        if metric not in col:
            return None
        vals = [v for v in (number(r[col[metric]], units[col[metric]]) for r in rs) if v is not None]
        return statistics.median(vals) if vals else None

    out = []
    stall_cols = [(m.group(1), name) for name in head for m in [STALL.match(name)] if m]
    for kernel, rs in by_kernel.items():
        stalls = sorted(((med(rs, c) or 0.0, reason) for reason, c in stall_cols), reverse=True)
        out.append({
            "kernel": short(kernel), "launches": len(rs),
            "us": med(rs, "gpu__time_duration.sum"),
            "dram_pct": med(rs, "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed"),
            "mb": med(rs, "dram__bytes_read.sum"),
            "sm_pct": med(rs, "sm__throughput.avg.pct_of_peak_sustained_elapsed"),
            "warps_pct": med(rs, "sm__warps_active.avg.pct_of_peak_sustained_active"),
            "grid": med(rs, "launch__grid_size"), "regs": med(rs, "launch__registers_per_thread"),
            "stalls": ", ".join(f"{reason} {v:.1f}" for v, reason in stalls[:3] if v > 0),
        })
    return sorted(out, key=lambda k: -(k["us"] or 0))


def fmt(v, spec):
    return "" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("csvs", nargs="+")
    a = ap.parse_args()
    groups = {}
    for path in a.csvs:
        m = NAME.search(os.path.basename(path))
        if m:
            groups.setdefault((int(m.group(3)), int(m.group(2))), []).append((m.group(1), path))
    lines = ["# Nsight Compute per kernel (median over launches)", "",
             "Stalls: the three largest WarpStateStats reasons, cycles per issued instruction.", ""]
    for (ctx, batch), runs in sorted(groups.items()):
        lines += [f"## context {ctx}, batch {batch}", "",
                  "| method | kernel | launches | µs | DRAM % | MB read | SM % | warps active % | grid | regs | stalls |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for method, path in sorted(runs):
            kernels = summarise(path)
            if kernels is None:
                lines.append(f"| {method} | (no kernel rows in {os.path.basename(path)}) | | | | | | | | | |")
                continue
            for k in kernels:
                lines.append(f"| {method} | `{k['kernel']}` | {k['launches']} | {fmt(k['us'], '.2f')} | "
                             f"{fmt(k['dram_pct'], '.1f')} | {fmt(k['mb'], '.2f')} | {fmt(k['sm_pct'], '.1f')} | "
                             f"{fmt(k['warps_pct'], '.1f')} | {fmt(k['grid'], '.0f')} | {fmt(k['regs'], '.0f')} | "
                             f"{k['stalls']} |")
        lines.append("")
    open(a.out, "w").write(provenance.md_line(provenance.collect()) + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
