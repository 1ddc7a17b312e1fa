#!/usr/bin/env python3
"""Tabulates one GPU run of decode_bench and sdpa_bench (issue 11): per (shape, batch, context) our
dense step against PyTorch SDPA and the read floor, and every method's step (plain and as a CUDA
graph) against dense, SDPA and its own byte floor. The floor bandwidth is the best read of the run:
the read kernel's, any method's, or SDPA's (each row's bytes over its time).

    python3 scripts/decode_bench_report.py --bench gpu_out/decode_bench.json \\
        --sdpa gpu_out/sdpa_bench.json --out gpu_out/decode_report.md

Writes Markdown with the provenance line (scripts/provenance.py) naming both inputs."""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402


def key(r):
    return (r.get("shape", "32x8x128"), r["batch"], r["context"])


def attend_floor(r, floor_gbps):
    """The selected K/V bytes' floor over the attend time (nan where lookup is not a token fraction)."""
    if r["method"] not in ("saap", "quest") or r["attend_ms"] <= 0:
        return float("nan")
    return selected_kv_bytes(r) / (floor_gbps * 1e9) * 1e3 / r["attend_ms"]


def read_same_ms(curve, nbytes):
    """The read kernel's time for nbytes (decode_bench's read_curve: [[bytes, ms], ...], 1 MB to 2 GB,
    interpolated linearly in bytes; past its ends, at its end points' bandwidth). nan without a curve."""
    if not curve or nbytes <= 0:
        return float("nan")
    if nbytes <= curve[0][0]:
        return curve[0][1]
    for (b0, t0), (b1, t1) in zip(curve, curve[1:]):
        if nbytes <= b1:
            return t0 + (t1 - t0) * (nbytes - b0) / (b1 - b0)
    return curve[-1][1] * nbytes / curve[-1][0]


def selected_kv_bytes(r):
    """The K/V bytes a Saap or Quest row selected: lookup fraction x the dense K/V."""
    hkv, d = r.get("n_kv_heads", 8), r.get("head_dim", 128)
    return r.get("lookup_fraction", r.get("lookup", 0)) * r["context"] * r["batch"] * hkv * d * 4


def tuning_summary(by, sd):
    """Which tuning wins where: per context the fastest dense row (default or tuned) against SDPA, and
    per Quest / Loki budget the fastest attend tuning against the default (rows whose param is the
    default's plus ';prefetch=...;waves=...')."""
    out = ["", "## Winners by tuning", "",
           "Dense: the fastest row per context. Quest and Loki: per budget, the attend tuning with the "
           "fastest step (the default row has no tuning suffix).", "",
           "| shape | batch | context | method | fastest | ms | vs default | vs SDPA |", "|---|---|---|---|---|---|---|---|"]
    for k in sorted(by):
        rs = by[k]
        s = sd.get(k)
        dense = [r for r in rs if r["method"] == "dense"]
        if dense:
            base = next((r for r in dense if not r["param"]), dense[0])
            best = min(dense, key=lambda r: r["ms"])
            out.append(f"| {k[0]} | {k[1]} | {k[2]} | dense | {best['param'] or 'default'} | {best['ms']:.4f} | "
                       f"{base['ms'] / best['ms']:.3f}x | {(s['ms'] / best['ms']) if s else float('nan'):.3f}x |")
        for method in ("quest", "loki"):
            groups = {}
            for r in rs:
                if r["method"] != method:
                    continue
                cut = r["param"].find(";prefetch=")
                groups.setdefault(r["param"][:cut] if cut >= 0 else r["param"], []).append(r)
            for budget, g in groups.items():
                base = next((r for r in g if r["param"] == budget), None)
                best = min(g, key=lambda r: r["ms"])
                if not base:
                    continue
                tuning = best["param"][len(budget) + 1:] or "default"
                out.append(f"| {k[0]} | {k[1]} | {k[2]} | {method} {budget} | {tuning} | {best['ms']:.4f} | "
                           f"{base['ms'] / best['ms']:.3f}x | {(s['ms'] / best['ms']) if s else float('nan'):.3f}x |")
    return out


def quest_floor_table(by, floor_gbps, curve):
    """Issue 10: Quest's step against its byte floor (K/V read + page metadata), per budget at the
    default attend tuning, the step split into score, top-k (select - score), attend and the rest
    (append and launch gaps); the target is a step within 1.3x of the floor at >= 128k tokens."""
    out = ["", "## Quest's step vs its floor (issue 10)", "",
           "Default attend tuning. The default select is the score kernel, then the select kernel: top-k = select - "
           "score (the select kernel and its launch). Rows \"select=fused\": one cooperative kernel (score, top-k "
           "and compaction fused), its score column the whole select and top-k 0. Rows \"select=cluster\" and "
           "\"select=block\": the score kernel, then the select kernel over a thread-block cluster per (b, h), or "
           "one block per (b, h) (the default row takes the cluster from 16384 pages per (b, h) on), top-k as the "
           "default's. "
           "rest = step - select - attend (the append, gaps). step / floor: the target is <= 1.3x at >= 128k "
           "tokens. read us: the read kernel over as many bytes in one launch (the run's read curve), what a step "
           "reading them can reach; "
           "step / read beside it (not the target).", "",
           "| shape | batch | context | budget | score us | top-k us | attend us | rest us | step us | graph us | "
           "floor us | step / floor | target | read us | step / read |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in sorted(by):
        for r in by[k]:
            if r["method"] != "quest" or ";prefetch=" in r["param"]:
                continue
            fl = r["bytes"] / (floor_gbps * 1e9) * 1e6
            step, sel, score, att = (r[f] * 1e3 for f in ("ms", "select_ms", "score_ms", "attend_ms"))
            ratio = step / fl if fl > 0 else float("nan")
            target = "n/a (< 128k)" if k[2] < 131072 else ("met" if ratio <= 1.3 else "missed")
            rd = read_same_ms(curve, r["bytes"]) * 1e3
            out.append(f"| {k[0]} | {k[1]} | {k[2]} | {r['param']} | {score:.1f} | {sel - score:.1f} | {att:.1f} | "
                       f"{step - sel - att:.1f} | {step:.1f} | {r['graph_ms'] * 1e3:.1f} | {fl:.1f} | {ratio:.2f}x | "
                       f"{target} | {rd:.1f} | {step / rd:.2f}x |")
    return out


def attend_table(by, floor_gbps, curve, method, mark, heading, what, target_min):
    """A sparse method's attend stage against the floor of the K/V it selected, per budget and attend
    tuning (a tuned row's param is the budget's plus mark..., the default row has no suffix; rows of
    the one-kernel step, whose attend is not timed apart, and of the fused and cluster selects, whose
    attend is the default's, are left out); target_min: the attend of floor to reach at >= 128k tokens, or None."""
    target_text = f"Target: attend of floor >= {target_min:.2f} at >= 128k tokens. " if target_min else ""
    out = ["", heading, "",
           f"attend us: {what} (attend kernel + combine, L2 flushed); floor us: the selected K/V bytes "
           f"(lookup fraction x dense K/V) at the floor bandwidth. {target_text}"
           "read us: the read kernel over as many bytes in one launch (the run's read curve); attend of read beside "
           "it (not the target).",
           "", "| shape | batch | context | budget | tuning | attend us | floor us | attend of floor | step us | "
           "graph us | target | read us | attend of read |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in sorted(by):
        for r in by[k]:
            if r["method"] != method or any(f";{x}" in r["param"] for x in ("step=fused", "select=")):
                continue
            cut = r["param"].find(mark)
            budget, tuning = (r["param"][:cut], r["param"][cut + 1:]) if cut >= 0 else (r["param"], "default")
            f = attend_floor(r, floor_gbps)
            att = r["attend_ms"] * 1e3
            target = ("n/a" if not target_min else "n/a (< 128k)" if k[2] < 131072 else
                      "met" if f >= target_min else "missed")
            rd = read_same_ms(curve, selected_kv_bytes(r)) * 1e3
            out.append(f"| {k[0]} | {k[1]} | {k[2]} | {budget} | {tuning} | {att:.1f} | {f * att:.1f} | {f:.2f} | "
                       f"{r['ms'] * 1e3:.1f} | {r['graph_ms'] * 1e3:.1f} | {target} | {rd:.1f} | {rd / att:.2f} |")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True)
    ap.add_argument("--sdpa")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    bench = json.load(open(a.bench))
    sdpa = json.load(open(a.sdpa)) if a.sdpa and os.path.exists(a.sdpa) else {"rows": []}
    rows = bench["rows"]
    sd = {key(r): r for r in sdpa["rows"]}
    floor_gbps = max([bench.get("floor_gbps", 0), bench.get("read_kernel_gbps", 0)] +
                     [r["bytes"] / (r["ms"] * 1e-3) / 1e9 for r in rows + sdpa["rows"] if r["ms"] > 0])
    prov = provenance.collect(inputs=[provenance.input_file("bench", a.bench)] +
                              ([provenance.input_file("sdpa", a.sdpa)] if a.sdpa and os.path.exists(a.sdpa) else []))
    out = [provenance.md_line(prov).rstrip("\n"), "",
           f"# decode_bench on {bench.get('device', '?')}", "",
           f"Floor bandwidth (best read of the run): **{floor_gbps:.0f} GB/s** (read kernel "
           f"{bench.get('read_kernel_gbps', 0):.0f} GB/s, copy {bench.get('copy_bandwidth_gbps', 0):.0f} GB/s "
           "read+write). floor ms = bytes / floor bandwidth; \"of floor\" = floor ms / ms.", "",
           "## Dense vs SDPA vs the read floor", "",
           "| shape | batch | context | read kernel ms | dense ms | dense graph ms | SDPA ms | dense vs SDPA | dense of floor | SDPA of floor |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in rows:
        by.setdefault(key(r), []).append(r)
    for k in sorted(by):
        rs = by[k]
        dense = next((r for r in rs if r["method"] == "dense" and not r["param"]), None)
        read = next((r for r in rs if r["method"] == "read"), None)
        s = sd.get(k)
        if not dense:
            continue
        fl = dense["bytes"] / (floor_gbps * 1e9) * 1e3
        out.append(f"| {k[0]} | {k[1]} | {k[2]} | {read['ms'] if read else float('nan'):.4f} | {dense['ms']:.4f} | "
                   f"{dense['graph_ms']:.4f} | {s['ms'] if s else float('nan'):.4f} | "
                   f"{(s['ms'] / dense['ms']) if s else float('nan'):.2f}x | {fl / dense['ms']:.2f} | "
                   f"{(fl / s['ms']) if s else float('nan'):.2f} |")
    out += ["", "## Dense tunings (dense_decode_tuned: waves of resident blocks, interleaved splits, register prefetch, tensor-core logits, fewest tokens a split)", "",
            "| shape | batch | context | tuning | ms | vs default dense | vs SDPA |", "|---|---|---|---|---|---|---|"]
    for k in sorted(by):
        rs = by[k]
        dense = next((r for r in rs if r["method"] == "dense" and not r["param"]), None)
        s = sd.get(k)
        for r in rs:
            if r["method"] == "dense" and r["param"] and dense:
                out.append(f"| {k[0]} | {k[1]} | {k[2]} | {r['param']} | {r['ms']:.4f} | {dense['ms'] / r['ms']:.3f}x | "
                           f"{(s['ms'] / r['ms']) if s else float('nan'):.3f}x |")
    out += ["", "## Every method's step", "",
            "Speed-ups are time ratios (higher is faster): vs our dense step, vs SDPA, and the graph step vs the "
            "dense graph. \"score ms\" is the part of the select to the end of its first kernel: Quest's score kernel (the rest is its top-k kernel), Saap's router (the rest is its rank-and-fill kernel). "
            "\"of floor\" is the method's byte floor over its step time; \"attend of floor\" the floor "
            "of the K/V it selected (lookup fraction x dense K/V bytes) over its attend time (Saap, Quest).", "",
            "| shape | batch | context | method | param | ms | select ms | score ms | attend ms | graph ms | vs dense | vs SDPA | graph vs dense graph | of floor | attend of floor |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in sorted(by):
        rs = by[k]
        dense = next((r for r in rs if r["method"] == "dense" and not r["param"]), None)
        s = sd.get(k)
        for r in rs:
            if r["method"] in ("read", "dense"):
                continue
            fl = r["bytes"] / (floor_gbps * 1e9) * 1e3
            vs_dense = dense["ms"] / r["ms"] if dense else float("nan")
            vs_sdpa = s["ms"] / r["ms"] if s else float("nan")
            g = dense["graph_ms"] / r["graph_ms"] if dense and r["graph_ms"] > 0 else float("nan")
            out.append(f"| {k[0]} | {k[1]} | {k[2]} | {r['method']} | {r['param']} | {r['ms']:.4f} | "
                       f"{r['select_ms']:.4f} | {r.get('score_ms', 0):.4f} | {r['attend_ms']:.4f} | {r['graph_ms']:.4f} | {vs_dense:.2f}x | "
                       f"{vs_sdpa:.2f}x | {g:.2f}x | {fl / r['ms']:.2f} | {attend_floor(r, floor_gbps):.2f} |")
    curve = bench.get("read_curve", [])
    if curve:
        out += ["", "## The read kernel by size", "",
                "One launch of the read kernel over B bytes (half as K, half as V), L2 flushed, best launch shape: "
                "what any kernel reading B bytes reaches. The bandwidth floor is B / floor bandwidth.", "",
                "| MB | read us | floor us | read of floor |", "|---|---|---|---|"]
        for b, ms in curve:
            fl = b / (floor_gbps * 1e9) * 1e3
            out.append(f"| {b / 1e6:.0f} | {ms * 1e3:.1f} | {fl * 1e3:.1f} | {fl / ms:.2f} |")
    out += quest_floor_table(by, floor_gbps, curve)
    # Issue 10's target is Quest's step (above); its attend by tuning (the register loop, the bulk ring) is
    # the part the ring changes. Issue 11's target is Saap's attend.
    out += attend_table(by, floor_gbps, curve, "quest", ";prefetch=",
                        "## Quest's attend vs its byte floor, by attend tuning (issue 10)", "QuestIndex::attend", None)
    out += attend_table(by, floor_gbps, curve, "saap", ";bulk=", "## Saap's attend vs its byte floor (issue 11)",
                        "SaapIndex::attend", 0.70)
    out += tuning_summary(by, sd)
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out[2:]))


if __name__ == "__main__":
    main()
