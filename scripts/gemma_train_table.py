#!/usr/bin/env python3
"""Training times and held-out statistics of the Gemma-3 long-context artifacts, read from the
"train" header each artifact carries (saap/kmeans: per layer and head; loki: explained variance),
-> <out>.json and <out>.csv with provenance.

    python3 scripts/gemma_train_table.py --out results/gemma3_longctx_train_2026-12-03 ART.safetensors ...

Per head: `seconds` is the wall time of its router's training on the one OpenMP thread that ran it
(one head per thread), i.e. CPU time of one core; the labels (true attention of every captured
query) are computed once per layer for all its heads and reported per layer apart.
"""
import argparse
import csv
import json
import os
import statistics
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402


def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        meta = json.loads(f.read(n)).get("__metadata__", {})
    if len(meta) != 1:
        sys.exit(f"{path}: expected one method entry in __metadata__, found {list(meta)}")
    (_, text), = meta.items()
    h = json.loads(text)
    return h.get("method", _), h


def row(path):
    method, h = header(path)
    t = h.get("train", {})
    r = {"artifact": path, "bytes": os.path.getsize(path), "method": method, "layers": h.get("layers"),
         "partitions": h.get("partitions"), "rope": h.get("rope", "pre" if h.get("pre_rope") else None),
         "seconds": t.get("seconds")}
    if method == "saap":
        heads = [hd for layer in t["layers"] for hd in layer["heads"]]
        secs = [hd["seconds"] for hd in heads]
        r.update({"kmeans_seconds": t["kmeans_seconds"], "labels_seconds": t["labels_seconds"],
                  "router_seconds": t["router_seconds"], "threads": t["threads"],
                  "queries_per_layer": [layer["queries"] for layer in t["layers"]],
                  "heads": len(heads), "head_seconds_min": min(secs), "head_seconds_median": statistics.median(secs),
                  "head_seconds_max": max(secs), "head_epochs": [hd["epochs_run"] for hd in heads],
                  "stat_lookup": t["stat_lookup"], "val_mass_router": t["mean_val_mass_at_budget"],
                  "val_mass_symmetric": t["mean_val_symmetric_mass_at_budget"],
                  "val_mass_partition_oracle": t["mean_val_oracle_mass_at_budget"],
                  "options": t["options"]})
    elif method == "loki":
        r.update({"keys": t.get("keys"), "windows": t.get("windows"), "window_len": t.get("window_len"),
                  "mean_explained_variance": t.get("mean_explained_variance")})
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output path without extension")
    ap.add_argument("artifacts", nargs="+")
    a = ap.parse_args()
    rows = [row(p) for p in a.artifacts]
    prov = provenance.collect(inputs=[provenance.input_file("artifact", p) for p in a.artifacts])
    with open(a.out + ".json", "w") as f:
        json.dump({"rows": rows, "provenance": prov}, f, indent=1)
    cols = ["method", "partitions", "rope", "layers", "seconds", "kmeans_seconds", "labels_seconds", "router_seconds",
            "threads", "heads", "head_seconds_min", "head_seconds_median", "head_seconds_max", "stat_lookup",
            "val_mass_router", "val_mass_symmetric", "val_mass_partition_oracle", "bytes", "artifact"]
    with open(a.out + ".csv", "w", newline="") as f:
        f.write(provenance.csv_lines(prov))
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([" ".join(map(str, r[c])) if isinstance(r.get(c), list) else r.get(c, "") for c in cols])
    for r in rows:
        print({k: v for k, v in r.items() if k not in ("options", "head_epochs")})


if __name__ == "__main__":
    main()
