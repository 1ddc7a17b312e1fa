#!/usr/bin/env python3
"""Folds the per-process runs of scripts/saap_experiments.sh into the results tables.

--ppl DIR: <method>_<fraction>_s<shard>.json (saap eval ppl --json, windows split in shards) and
dense.json (the same windows, exact). Writes saap_ppl.{json,csv}: per (method, fraction) the
perplexity over all windows, the delta to dense on the same windows, the measured KV fraction and
on how many windows Saap's NLL is below k-means'.
--passkey DIR: <method>_<fraction>_<length>.json (saap eval passkey --json). Writes
saap_passkey.{json,csv}: accuracy per (method, fraction, length) and every failed trial's answer.

Each table carries its provenance (scripts/provenance.py: date, machine, commit, command, and every
run file it folds in as an input, by sha256) and "runs": where and when the runs themselves were
made, gathered from the run files' own provenance (saap --json writes it), not from free text.
"""
import argparse, csv, glob, json, math, os, re, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402


def runs_summary(paths):
    """Commits, machines and the date range of the run files, from their provenance records."""
    provs = [json.load(open(p)).get("provenance") for p in paths]
    known = [p for p in provs if p]
    return {"files": len(paths), "without_provenance": len(provs) - len(known),
            "commits": sorted({p["commit"] + (" (dirty)" if p.get("dirty") else "") for p in known}),
            "machines": sorted({provenance.machine_line(p) for p in known}),
            "first": min((p["date"] for p in known), default=None),
            "last": max((p["date"] for p in known), default=None)}


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


def write(out, stem, rows, columns, run_files, note):
    prov = provenance.collect(inputs=[provenance.input_file("run", p) for p in sorted(run_files)])
    runs = runs_summary(run_files)
    with open(os.path.join(out, stem + ".json"), "w") as f:
        json.dump({"provenance": prov, "runs": runs, "note": note, "rows": rows}, f, indent=1)
    with open(os.path.join(out, stem + ".csv"), "w", newline="") as f:
        f.write(provenance.csv_lines(prov))
        f.write(f"# runs: {runs['files']} files ({runs['without_provenance']} without provenance), "
                f"{runs['first']} to {runs['last']}, commits {', '.join(runs['commits'])}; "
                f"machines {' | '.join(runs['machines'])}\n")
        if note:
            f.write(f"# note: {note}\n")
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
    ppl = ppl_table(a.ppl)
    write(a.out, "saap_ppl" + a.suffix, ppl, ["method", "lookup", "windows", "kv_fraction", "perplexity", "dense_perplexity",
                                   "delta", "windows_below_kmeans"], glob.glob(os.path.join(a.ppl, "*.json")), a.note)
    pk = passkey_table(a.passkey)
    write(a.out, "saap_passkey" + a.suffix, pk, ["method", "lookup", "length", "correct", "trials"],
          glob.glob(os.path.join(a.passkey, "*.json")), a.note)
    for r in ppl:
        print(f"ppl {r['method']:7s} {r['lookup']:.2f}: {r['perplexity']:.3f} (dense {r['dense_perplexity']:.3f}, "
              f"delta {r['delta']:+.3f}, kv {r['kv_fraction']:.4f})"
              + (f", below k-means on {r['windows_below_kmeans']}/{r['windows']} windows" if "windows_below_kmeans" in r else ""))
    for r in pk:
        print(f"passkey {r['method']:7s} {r['lookup'] or 0:.2f} {r['length']:5d}: {r['correct']}/{r['trials']}")


if __name__ == "__main__":
    main()
