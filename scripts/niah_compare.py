#!/usr/bin/env python3
"""Per-trial comparison of our runner's retrieval (saap eval niah result JSONs) with Hugging Face
transformers' on the same prompts (scripts/niah_transformers.py's hf_progress.jsonl), and the two
perplexities of the same windows (its ppl rows). No torch: runs anywhere.

    python3 scripts/niah_compare.py --saap R/niah_*.json --hf HF_DIR --out DIR [--stem longctx_compare]

Trials are joined on (task, haystack, length, depth, trial); a pair whose expected numbers differ is
refused (not the same prompts). Writes DIR/STEM.csv (one row per trial: our answer, HF's per mode and
dtype, right or wrong) and DIR/STEM.md (per task, haystack and length: trials, right by each, the
trials where they disagree; the perplexity rows), both with provenance.
"""
import argparse
import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402


def key(t, task, haystack):
    return (task, haystack, int(t["length"]), round(float(t["depth"]), 6), int(t["trial"]))


def load_saap(paths):
    trials, methods = {}, set()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        if "niah" not in doc:
            sys.exit(f"niah_compare: {path} has no 'niah' object (not a saap eval niah result)")
        methods.add(doc.get("method"))
        n = doc["niah"]
        for t in n["trials"]:
            trials[key(t, n["task"], n["haystack"])] = t
    return trials, methods


def load_hf(folder):
    """{column: {trial key: row}} for niah rows, and the ppl rows, from hf_progress.jsonl files."""
    columns, ppl = {}, []
    path = os.path.join(folder, "hf_progress.jsonl")
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if r.get("file") == "ppl":
                ppl.append(r)
                continue
            column = "hf_" + r["mode"] + ("" if r.get("dtype", "float32") == "float32" else "_bf16")
            columns.setdefault(column, {})[key(r, r["task"], r["haystack"])] = r
    return columns, ppl, path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--saap", nargs="+", required=True, help="saap eval niah result JSONs (dense)")
    ap.add_argument("--hf", nargs="+", required=True, help="folders with niah_transformers.py's hf_progress.jsonl")
    ap.add_argument("--saap-column", nargs="*", default=[], metavar="NAME=FILE",
                    help="more saap eval niah result JSONs, each a column of its own (e.g. ours_b1=... at batch 1)")
    ap.add_argument("--saap-ppl", help="saap eval ppl JSON of the same windows: our window NLLs beside HF's")
    ap.add_argument("--out", required=True)
    ap.add_argument("--stem", default="longctx_compare")
    args = ap.parse_args()
    saap, methods = load_saap(args.saap)
    hf, ppl, inputs = {}, [], [provenance.input_file("saap", p) for p in args.saap]
    for folder in args.hf:
        cols, rows, path = load_hf(folder)
        for c, trials in cols.items():
            hf.setdefault(c, {}).update(trials)
        ppl += rows
        inputs.append(provenance.input_file("hf", path))
    if args.saap_ppl:
        with open(args.saap_ppl, encoding="utf-8") as f:
            ours = json.load(f)
        inputs.append(provenance.input_file("saap_ppl", args.saap_ppl))
        for r in ppl:
            if r["tokens"] == ours.get("window_len") and r["window"] < len(ours.get("window_nll", [])):
                r["saap_mean_nll"] = ours["window_nll"][r["window"]]
    extra = {}
    for spec in args.saap_column:
        name, _, path = spec.partition("=")
        if not name or not path:
            sys.exit(f"niah_compare: --saap-column {spec!r} is not NAME=FILE")
        extra.setdefault(name, {}).update(load_saap([path])[0])
        inputs.append(provenance.input_file(name, path))
    order = sorted(extra) + [c for c in ("hf_plain", "hf_classic", "hf_plain_bf16", "hf_classic_bf16") if c in hf]
    hf.update(extra)
    keys = sorted(set(saap) | {k for c in order for k in hf[c]})
    rows = []
    for k in keys:
        s = saap.get(k)
        row = {"task": k[0], "haystack": k[1], "length": k[2], "depth": k[3], "trial": k[4]}
        expected = s["expected"] if s else None
        row["saap_answer"] = s["answer"] if s else ""
        row["saap_correct"] = s["correct"] if s else ""
        for c in order:
            r = hf[c].get(k)
            if r and expected is not None and r["expected"] != expected:
                sys.exit(f"niah_compare: trial {k}: saap expected {expected}, {c} {r['expected']}: not the same prompts")
            expected = expected if expected is not None else (r["expected"] if r else None)
            row[c + "_answer"] = r["answer"] if r else ""
            row[c + "_correct"] = r["correct"] if r else ""
            row[c + "_prompt_tokens"] = r["prompt_tokens"] if r else ""
        row["expected"] = " ".join(expected or [])
        rows.append(row)
    os.makedirs(args.out, exist_ok=True)
    prov = provenance.collect(inputs=inputs)
    columns = ["task", "haystack", "length", "depth", "trial", "expected", "saap_correct", "saap_answer"]
    for c in order:
        columns += [c + "_correct", c + "_answer", c + "_prompt_tokens"]
    with open(os.path.join(args.out, args.stem + ".csv"), "w", encoding="utf-8", newline="") as f:
        f.write(provenance.csv_lines(prov))
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow(r)

    def right(rs, col):
        have = [r for r in rs if r[col] != ""]
        return f"{sum(bool(r[col]) for r in have)}/{len(have)}" if have else "-"

    lines = [provenance.md_line(prov).rstrip("\n"), "",
             f"Dense retrieval, our runner ({', '.join(sorted(m for m in methods if m))}) beside Hugging Face "
             "transformers on the same prompts (plain: the dumped token ids; classic: the classic passkey format "
             "around the same haystack). Right / trials; 'differ': trials where our runner and HF plain disagree "
             "(ours right, HF wrong / ours wrong, HF right).", "",
             "| task | haystack | length | ours | " + " | ".join(order) + " | differ (ours/HF plain) |",
             "|---|---|---|---|" + "---|" * len(order) + "---|"]
    groups = sorted({(r["task"], r["haystack"], r["length"]) for r in rows})
    for g in groups:
        rs = [r for r in rows if (r["task"], r["haystack"], r["length"]) == g]
        both = [r for r in rs if r["saap_correct"] != "" and r.get("hf_plain_correct", "") != ""]
        only_ours = sum(bool(r["saap_correct"]) and not r["hf_plain_correct"] for r in both)
        only_hf = sum(not r["saap_correct"] and bool(r["hf_plain_correct"]) for r in both)
        lines.append(f"| {g[0]} | {g[1]} | {g[2]} | {right(rs, 'saap_correct')} | "
                     + " | ".join(right(rs, c + "_correct") for c in order)
                     + (f" | {only_ours}/{only_hf} |" if both else " | - |"))
    if ppl:
        lines += ["", "Perplexity of the same eval.txt windows (BOS + W-1 text tokens), mean NLL in nats:", "",
                  "| window | tokens | ids scored | HF tokenizer's cut the same | HF NLL | ours NLL | ours - HF | HF s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in ppl:
            ours = r.get("saap_mean_nll")
            lines.append(f"| {r['window']} | {r['tokens']} | {r.get('ids', '-')} | {r.get('hf_tokenizer_same_ids', '-')} | "
                         f"{r['hf_mean_nll']:.5f} | "
                         + (f"{ours:.5f} | {ours - r['hf_mean_nll']:+.5f}" if ours is not None else "- | -")
                         + f" | {r['seconds']} |")
    with open(os.path.join(args.out, args.stem + ".md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[2:]))
    print(f"wrote {os.path.join(args.out, args.stem)}.csv/.md")


if __name__ == "__main__":
    main()
