#!/usr/bin/env bash
# Gathers results/saap_* (written by scripts/saap_experiments.sh) into results/saap_summary.{json,csv}
# and the README table rows results/saap_README_rows.md. Usage: scripts/saap_summarize.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import csv, datetime, glob, json, os, platform, subprocess

R = "results"
def load(p):
    with open(p) as f:
        return json.load(f)

commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
summary = {"date": datetime.datetime.utcnow().isoformat() + "Z", "machine": {"host": platform.node(), "cpu": cpu,
           "cores": os.cpu_count()}, "commit": commit, "rows": []}

train = {}
for p in sorted(glob.glob(f"{R}/saap_train_*.json")):
    t = load(p)
    train[os.path.basename(p)[len("saap_train_"):-5]] = t
summary["training"] = train

att = load(f"{R}/saap_attention.json") if os.path.exists(f"{R}/saap_attention.json") else {"runs": []}
ppl = {os.path.basename(p)[len("saap_ppl_"):-5]: load(p) for p in sorted(glob.glob(f"{R}/saap_ppl_*.json"))}
pk = {os.path.basename(p)[len("saap_passkey_"):-5]: load(p) for p in sorted(glob.glob(f"{R}/saap_passkey_*.json"))}
dense = ppl.get("dense")

rows = []
for r in att["runs"]:
    label, f = r["label"], r["lookup"]
    key = f"{label}_{f:g}"
    row = {"label": label, "lookup": f, "kv_fraction": r["kv_fraction"], "index_fraction": r["index_fraction"],
           "mass": r["attention"]["mass"], "recall": r["attention"]["recall"]}
    if key in ppl:
        row["ppl"] = ppl[key]["perplexity"]
        row["ppl_kv_fraction"] = ppl[key].get("kv_fraction")
        if dense:
            n = len(ppl[key]["window_nll"])
            import math
            d = math.exp(sum(dense["window_nll"][:n]) / n)
            row["ppl_dense"] = d
            row["ppl_delta"] = ppl[key]["perplexity"] - d
    if key in pk:
        row["passkey"] = pk[key]["accuracy"]
    tr = r.get("artifact", {}).get("train", {})
    row["train_seconds"] = tr.get("seconds")
    rows.append(row)
summary["rows"] = rows
summary["passkey"] = {k: {"accuracy": v["accuracy"], "by_length_depth": v.get("by_length_depth")} for k, v in pk.items()}
json.dump(summary, open(f"{R}/saap_summary.json", "w"), indent=1)
cols = ["label", "lookup", "kv_fraction", "index_fraction", "mass", "recall", "ppl", "ppl_dense", "ppl_delta",
        "passkey", "train_seconds"]
with open(f"{R}/saap_summary.csv", "w") as f:
    f.write(f"# date {summary['date']} commit {commit} machine {platform.node()} ({cpu}, {os.cpu_count()} cores)\n")
    w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
lines = ["| Method | Lookup (KV read) | Attention mass | Recall@32 | PPL Δ vs dense | Passkey | Training time |",
         "|---|---|---|---|---|---|---|"]
for r in rows:
    if r["label"] == "oracle":
        continue
    d, pk_acc, secs = r.get("ppl_delta"), r.get("passkey"), r.get("train_seconds")
    lines.append(f"| {r['label']} | {r['lookup']:.0%} (measured {r['kv_fraction']:.2%}) | {r['mass']:.3f} | "
                 f"{r['recall']:.3f} | {'—' if d is None else f'{d:+.3f}'} | "
                 f"{'—' if pk_acc is None else f'{pk_acc:.0%}'} | "
                 f"{'—' if secs is None else f'{secs / 60:.1f} min'} |")
open(f"{R}/saap_README_rows.table.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
