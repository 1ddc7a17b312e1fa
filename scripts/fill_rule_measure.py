#!/usr/bin/env python3
"""Which fill rule reads more attention per key: skip-and-continue (take a partition if it fits
what is left, else skip it and go on) or the prefix that fits (stop at the first misfit), at equal
budget, on real SmolLM2 keys and queries (a `saap calibrate` capture) and a k-means partition (`saap
train kmeans`). For every layer, captured query and KV group it replays decode's budget
(selection_rules.h: ceil(lookup * n) tokens, sinks and window first) with the partitions ranked two
ways: by true attention density (the partition oracle) and by the heads' nearest centroids merged
round-robin (symmetric k-means). Mass = the exact softmax mass (post-RoPE, over the causal prefix)
inside what is read, sinks and window included, averaged over the group's heads.

    scripts/fill_rule_measure.py CALIB.safetensors KMEANS.safetensors OUT.csv [--sinks 4 --window 16]
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dt = {"F32": np.float32, "I32": np.int32}
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[a:b], dtype=dt[v["dtype"]]).reshape(v["shape"])
    return header.get("__metadata__", {}), out


def rope(x, pos, base):  # interleaved pairs (2i, 2i+1); x [..., n, d], pos [n]
    d = x.shape[-1]
    theta = pos[:, None].astype(np.float64) * base ** (-2.0 * np.arange(d // 2) / d)
    c, s = np.cos(theta), np.sin(theta)
    a, b = x[..., 0::2], x[..., 1::2]
    y = np.empty_like(x, dtype=np.float64)
    y[..., 0::2] = a * c - b * s
    y[..., 1::2] = a * s + b * c
    return y


def fill(order, size, budget, stop_at_misfit):
    taken, used = [], 0
    for c in order:
        n = size[c]
        if n <= 0:
            continue
        if used + n > budget:
            if stop_at_misfit:
                break
            continue
        taken.append(c)
        used += n
    return taken, used


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("calib")
    ap.add_argument("kmeans")
    ap.add_argument("out")
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2, 0.3])
    ap.add_argument("--layers", type=int, nargs="*", default=None)
    a = ap.parse_args()
    meta, cal = read_safetensors(a.calib)
    info = json.loads(meta["saap"])
    _, km = read_safetensors(a.kmeans)
    base, d, H, KV = info["rope"]["base"], info["head_dim"], info["n_heads"], info["n_kv_heads"]
    G = H // KV
    layers = a.layers if a.layers else list(range(info["n_layers"]))
    # acc[(ranking, rule, fraction)] = [mass sum, keys read sum, prefix tokens sum, count]
    acc = {}
    for l in layers:
        keys = cal[f"layer.{l}.keys_pre"].astype(np.float64)  # [W][T][KV][d]
        qs = cal[f"layer.{l}.queries_pre"].astype(np.float64)  # [Q][H][d]
        qpos, qwin = cal[f"layer.{l}.query_pos"], cal[f"layer.{l}.query_window"]
        cent = km[f"centroids.{l}"].astype(np.float64)  # [KV][C][d]
        C = cent.shape[1]
        T = keys.shape[1]
        pos_all = np.arange(T)
        part = np.argmax(np.einsum("wtkd,kcd->wktc", keys, cent), axis=-1)  # spherical: nearest = max dot
        kpost = rope(np.transpose(keys, (0, 2, 1, 3)), pos_all, base)  # [W][KV][T][d]
        for qi in range(qs.shape[0]):
            w, p = int(qwin[qi]), int(qpos[qi])
            n = p + 1
            qpost = rope(qs[qi][:, None, :], np.array([p]), base)[:, 0, :]  # [H][d]
            sink_end = min(a.sinks, n)
            win_begin = max(n - a.window, sink_end)
            for g in range(KV):
                logits = qpost[g * G:(g + 1) * G] @ kpost[w, g, :n].T / math.sqrt(d)  # [G][n]
                prob = np.exp(logits - logits.max(axis=1, keepdims=True))
                prob /= prob.sum(axis=1, keepdims=True)
                pc = part[w, g, :n]
                mid = np.zeros(n, bool)
                mid[sink_end:win_begin] = True
                size = np.bincount(pc[mid], minlength=C)
                mass_c = np.stack([np.bincount(pc[mid], weights=prob[h][mid], minlength=C) for h in range(G)])  # [G][C]
                fixed_mass = prob[:, ~mid].sum(axis=1)  # [G]
                density = np.where(size > 0, mass_c.sum(axis=0) / np.maximum(size, 1), -np.inf)
                oracle_order = sorted(range(C), key=lambda c: (-density[c], c))
                sym = qs[qi][g * G:(g + 1) * G] @ cent[g].T  # [G][C]
                head_orders = [sorted(range(C), key=lambda c, h=h: (-sym[h][c], c)) for h in range(G)]
                seen, rr = set(), []
                for r in range(C):
                    for h in range(G):
                        c = head_orders[h][r]
                        if c not in seen:
                            seen.add(c)
                            rr.append(c)
                fixed = sink_end + (n - win_begin)
                for f in a.fractions:
                    budget = max(0, math.ceil(f * n - 1e-9) - fixed) if f < 1 else n
                    for ranking, order in (("partition-oracle", oracle_order), ("kmeans", rr)):
                        for rule, stop in (("skip-and-continue", False), ("prefix-that-fits", True)):
                            taken, used = fill(order, size, budget, stop)
                            mass = float((fixed_mass + mass_c[:, taken].sum(axis=1)).mean())
                            s = acc.setdefault((ranking, rule, f), [0.0, 0.0, 0.0, 0])
                            s[0] += mass
                            s[1] += fixed + used
                            s[2] += n
                            s[3] += 1
        print(f"layer {l} done", file=sys.stderr)
    prov = provenance.collect(inputs=[provenance.input_file("calibration", a.calib),
                                      provenance.input_file("partition", a.kmeans)])
    with open(a.out, "w") as f:
        f.write(provenance.csv_lines(prov))
        # The prefix rule's mass at the skip rule's measured fraction (linear between its budgets):
        # the two rules compared at equal keys read, not only at equal budget.
        f.write("ranking,rule,lookup,kv_fraction,mass,mass_per_kv_fraction,prefix_mass_at_this_kv_fraction,samples\n")
        for (ranking, rule, fr), (m, k, t, c) in sorted(acc.items()):
            at = ""
            if rule == "skip-and-continue":
                curve = sorted((v[1] / v[2], v[0] / v[3]) for (r2, u2, _), v in acc.items()
                               if r2 == ranking and u2 == "prefix-that-fits")
                x = k / t
                for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
                    if x0 <= x <= x1:
                        at = f"{y0 + (y1 - y0) * (x - x0) / (x1 - x0):.4f}"
            f.write(f"{ranking},{rule},{fr},{k / t:.5f},{m / c:.4f},{(m / c) / (k / t):.3f},{at},{c}\n")
    with open(a.out) as f:
        print(f.read())


if __name__ == "__main__":
    main()
