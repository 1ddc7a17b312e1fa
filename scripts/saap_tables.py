#!/usr/bin/env python3
"""Folds the per-process runs of scripts/saap_experiments.sh into the results tables.

--ppl DIR: <method>_<fraction>_s<shard>.json (saap eval ppl --json, windows split in shards) and
dense.json (the same windows, exact). Writes saap_ppl.{json,csv}: per (method, fraction) the
perplexity over all windows, the delta to dense on the same windows, the measured KV fraction and
on how many windows Saap's NLL is below k-means'.
--passkey DIR: <method>_<fraction>_<length>.json (saap eval passkey --json). Writes
saap_passkey.{json,csv}: accuracy per (method, fraction, length) and every failed trial's answer.
"""
import argparse, csv, datetime, glob, json, math, os, re, subprocess


def provenance():
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"tabulated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"), "commit": commit,
            "script": "scripts/saap_experiments.sh"}


def ppl_table(folder):
    dense = json.load(open(os.path.join(folder, "dense.json")))["window_nll"]
    runs = {}
    for path in glob.glob(os.path.join(folder, "*_s*.json")):
        method, fraction, shard = re.match(r"(\w+?)_([\d.]+)_s(\d+)\.json", os.path.basename(path)).groups()
        r = json.load(open(path))
        runs.setdefault((method, fraction), {})[int(r["first_window"])] = r
    rows = []
    for (method, fraction), shards in sorted(runs.items()):
        nll, kv, queries = [], 0.0, 0
        for first in sorted(shards):
            r = shards[first]
            assert first == len(nll), f"{method} {fraction}: shards leave a gap before window {first}"
            nll += r["window_nll"]
            kv += r["kv_fraction"] * r["method_queries"]
            queries += r["method_queries"]
        n = len(nll)
        ppl, ppl_dense = math.exp(sum(nll) / n), math.exp(sum(dense[:n]) / n)
        rows.append({"method": method, "lookup": float(fraction), "windows": n, "perplexity": ppl,
                     "dense_perplexity": ppl_dense, "delta": ppl - ppl_dense, "kv_fraction": kv / queries,
                     "window_nll": nll})
    by = {(r["method"], r["lookup"]): r for r in rows}
    for r in rows:
        other = by.get(("kmeans", r["lookup"]))
        if r["method"] == "saap" and other:
            r["windows_below_kmeans"] = sum(a < b for a, b in zip(r["window_nll"], other["window_nll"]))
    return rows


def passkey_table(folder):
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        method, fraction, length = re.match(r"(\w+?)_([\d.]+)_(\d+)\.json", os.path.basename(path)).groups()
        p = json.load(open(path))["passkey"]
        rows.append({"method": method, "lookup": float(fraction) or None, "length": int(length),
                     "correct": sum(t["correct"] for t in p["trials"]), "trials": len(p["trials"]),
                     "failed": [{"depth": t["depth"], "passkey": t["passkey"], "answer": t["answer"]}
                                for t in p["trials"] if not t["correct"]]})
    return sorted(rows, key=lambda r: (r["method"], r["lookup"] or 0, r["length"]))


def write(out, stem, rows, columns, meta):
    with open(os.path.join(out, stem + ".json"), "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    with open(os.path.join(out, stem + ".csv"), "w", newline="") as f:
        f.write(f"# tabulated {meta['tabulated']} at commit {meta['commit']} by {meta['script']}; runs: {meta['note']}\n")
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([r.get(c, "") for c in columns])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ppl", required=True)
    ap.add_argument("--passkey", required=True)
    ap.add_argument("--out", default="results")
    ap.add_argument("--note", default="", help="Where and how the runs were made, recorded in the files")
    ap.add_argument("--suffix", default="", help="Appended to the file stems (e.g. _post for another artifact)")
    a = ap.parse_args()
    meta = provenance()
    meta["note"] = a.note
    ppl = ppl_table(a.ppl)
    write(a.out, "saap_ppl" + a.suffix, ppl, ["method", "lookup", "windows", "kv_fraction", "perplexity", "dense_perplexity",
                                   "delta", "windows_below_kmeans"], meta)
    pk = passkey_table(a.passkey)
    write(a.out, "saap_passkey" + a.suffix, pk, ["method", "lookup", "length", "correct", "trials"], meta)
    for r in ppl:
        print(f"ppl {r['method']:7s} {r['lookup']:.2f}: {r['perplexity']:.3f} (dense {r['dense_perplexity']:.3f}, "
              f"delta {r['delta']:+.3f}, kv {r['kv_fraction']:.4f})"
              + (f", below k-means on {r['windows_below_kmeans']}/{r['windows']} windows" if "windows_below_kmeans" in r else ""))
    for r in pk:
        print(f"passkey {r['method']:7s} {r['lookup'] or 0:.2f} {r['length']:5d}: {r['correct']}/{r['trials']}")


if __name__ == "__main__":
    main()
