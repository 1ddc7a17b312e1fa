#!/usr/bin/env python3
"""PyTorch SDPA decode time at the shapes of decode_bench (--shapes HQxHKVxD,...; default 32 query /
8 KV heads, d=128; bf16), measured the same way: CUDA events, L2 flushed (256 MB read) before each repetition, median.
Writes JSON rows {shape, batch, context, ms, bytes, gbps} to --out, with the run's provenance (date, machine
and GPU, commit, command: scripts/provenance.py)."""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import provenance  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", default="16384,65536,131072,262144,524288")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--shapes", default="32x8x128")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    dev = torch.device("cuda")
    prov = provenance.collect()
    name = torch.cuda.get_device_name(0)
    if not any(g["name"] == name for g in prov["machine"]["gpus"]):  # no driver entry seen: the device measured
        prov["machine"]["gpus"] = [{"name": name, "driver": "unknown"}]
    flush = torch.ones(64 << 20, dtype=torch.int32, device=dev)  # 256 MB, read to evict the L2
    rows, skipped = [], []
    for shape in a.shapes.split(","):
        hq, hkv, d = map(int, shape.split("x"))
        for b in map(int, a.batches.split(",")):
            for n in map(int, a.contexts.split(",")):
                need = 2 * b * hkv * n * d * 2
                free, _ = torch.cuda.mem_get_info()
                if need * 1.2 + (2 << 30) > free:
                    skipped.append(f"shape {shape} batch {b} context {n}: needs {need/1e9:.1f} GB, {free/1e9:.1f} GB free")
                    continue
                q = torch.randn(b, hq, 1, d, device=dev, dtype=torch.bfloat16)
                k = torch.randn(b, hkv, n, d, device=dev, dtype=torch.bfloat16)
                v = torch.randn(b, hkv, n, d, device=dev, dtype=torch.bfloat16)
                fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                for _ in range(3):
                    fn()
                times = []
                for i in range(a.reps):
                    flush.sum()
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record()
                    fn()
                    e.record()
                    e.synchronize()
                    times.append(s.elapsed_time(e))
                times.sort()
                ms = times[len(times) // 2]
                rows.append({"method": "sdpa", "shape": shape, "n_q_heads": hq, "n_kv_heads": hkv, "head_dim": d,
                             "batch": b, "context": n, "ms": ms, "bytes": need, "gbps": need / (ms * 1e-3) / 1e9})
                print(f"sdpa {shape} batch {b} context {n}: {ms:.4f} ms, {need / (ms * 1e-3) / 1e9:.0f} GB/s", flush=True)
                del q, k, v
                torch.cuda.empty_cache()
    with open(a.out, "w") as f:
        json.dump({"provenance": prov, "torch": torch.__version__, "device": torch.cuda.get_device_name(0), "rows": rows,
                   "skipped": skipped}, f, indent=2)


if __name__ == "__main__":
    main()
