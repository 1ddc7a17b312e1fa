#!/usr/bin/env python3
"""Real partition sizes for decode_bench (issue 11): every calibration key of every layer and KV head
assigned to its partition of a trained k-means artifact (spherical: argmax k.c, as SaapIndex and
the CPU assign; L2: argmax k.c - |c|^2/2), counted per partition. One CSV row per (layer, KV head):
`layer,kv_head,keys,counts` with the C counts space-separated, after the provenance lines.

    bash scripts/python.sh scripts/partition_sizes.py --calib calib.safetensors \\
        --artifact kmeans-c256-pre.safetensors --out bench/cuda/partition_sizes_smollm2_c256.csv

The keys are those the artifact was trained on (keys_pre or keys_post, by its "rope"); a
calibration set holds separate windows, whose keys are counted together: the sizes of one context
of windows x window_len tokens."""
import argparse
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402


def read_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), 8 + n


def tensor(path, header, offset, name):
    info = header[name]
    if info["dtype"] != "F32":
        raise SystemExit(f"{path}: tensor {name} is {info['dtype']}, expected F32")
    begin, end = info["data_offsets"]
    return np.memmap(path, dtype=np.float32, mode="r", offset=offset + begin, shape=tuple(info["shape"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", required=True)
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    ch, coff = read_header(a.calib)
    ah, aoff = read_header(a.artifact)
    meta = json.loads(ah["__metadata__"]["saap"])
    rope, spherical = meta["rope"], bool(meta.get("spherical", False))
    rows = []
    for layer in meta["layers"]:
        keys = tensor(a.calib, ch, coff, f"layer.{layer}.keys_{rope}")  # [windows][len][Hkv][D]
        cent = np.asarray(tensor(a.artifact, ah, aoff, f"centroids.{layer}"), dtype=np.float64)  # [Hkv][C][D]
        for h in range(cent.shape[0]):
            k = np.asarray(keys[:, :, h, :], dtype=np.float64).reshape(-1, cent.shape[2])
            score = k @ cent[h].T
            if not spherical:
                score -= 0.5 * (cent[h] ** 2).sum(axis=1)
            counts = np.bincount(score.argmax(axis=1), minlength=cent.shape[1])
            rows.append((layer, h, len(k), counts))
    prov = provenance.collect(inputs=[provenance.input_file("calib", a.calib),
                                      provenance.input_file("artifact", a.artifact)])
    with open(a.out, "w") as f:
        f.write(provenance.csv_lines(prov))
        f.write(f"# partitions: {cent.shape[1]}, rope {rope}, spherical {spherical}; keys counted over "
                f"{keys.shape[0]} windows x {keys.shape[1]} tokens\n")
        f.write("layer,kv_head,keys,counts\n")
        for layer, h, n, counts in rows:
            f.write(f"{layer},{h},{n},{' '.join(str(int(c)) for c in counts)}\n")
    sizes = np.concatenate([r[3] for r in rows]).astype(np.float64)
    print(f"{len(rows)} (layer, head) rows; sizes mean {sizes.mean():.1f}, cv {sizes.std() / sizes.mean():.2f}, "
          f"empty {np.mean(sizes == 0):.3f}, max/mean {sizes.max() / sizes.mean():.1f}")


if __name__ == "__main__":
    main()
