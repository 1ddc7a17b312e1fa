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


def self_test():
    """A raw page as ncu writes it (its log lines first, units in the second row, thousands
    separators, ns and byte units), summarised: medians, units, stall order and short names."""
    import tempfile
    head = ["ID", "Process ID", "Kernel Name", "gpu__time_duration.sum", "dram__bytes_read.sum",
            "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed", "launch__grid_size",
            "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",
            "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",
            "smsp__average_warps_issue_stalled_wait_per_issue_active.ratio"]
    units = ["", "", "", "ns", "byte", "%", "", "inst", "inst", "inst"]
    ring = "void saap::dense_decode_bulk_kernel<__nv_bfloat16, 128, 4, 1>(const T1 *, int)"
    rows = [["0", "1", ring, "120,000", "536,870,912", "90.0", "264", "0.5", "12.0", "0.7"],
            ["1", "1", ring, "130,000", "536,870,912", "92.0", "264", "0.4", "13.0", "0.9"],
            ["2", "1", ring, "125,000", "536,870,912", "91.0", "264", "0.6", "11.0", "0.8"],
            ["3", "1", "void saap::radix_topk::find_kernel<0>(int *)", "4,500", "1,024", "1.0", "32", "9.0", "0", "2.0"]]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ncu_dense_b1_131072.csv")
        with open(path, "w") as f:
            f.write("==PROF== Connected to process 1\n")
            csv.writer(f, quoting=csv.QUOTE_ALL).writerows([head, units] + rows)
        got = {k["kernel"]: k for k in summarise(path)}
    ring_k, find_k = got["dense_decode_bulk_kernel<__nv_bfloat16, 128, 4, 1>"], got["find_kernel<0>"]
    checks = [
        (ring_k["launches"] == 3, "three launches of the ring kernel"),
        (abs(ring_k["us"] - 125.0) < 1e-9, "median time 125 us from ns with separators"),
        (abs(ring_k["mb"] - 536.870912) < 1e-9, "bytes to MB"),
        (ring_k["dram_pct"] == 91.0, "median DRAM %"),
        (ring_k["stalls"].startswith("long_scoreboard 12.0, wait 0.8"), "stalls largest first"),
        (find_k["stalls"] == "barrier 9.0, wait 2.0", "zero stalls left out"),
        (list(got) == ["dense_decode_bulk_kernel<__nv_bfloat16, 128, 4, 1>", "find_kernel<0>"], "longest first"),
    ]
    failed = [what for ok, what in checks if not ok]
    for what in failed:
        print("FAIL:", what)
    print(f"ncu_summary self-test: {len(checks) - len(failed)} of {len(checks)} checks passed")
    return 1 if failed else 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
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
