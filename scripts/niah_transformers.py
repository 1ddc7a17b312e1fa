#!/usr/bin/env python3
"""An independent reference for issue 14's long-context retrieval and perplexity: Hugging Face
transformers (torch; fp32 weights by default, attn_implementation="sdpa", batch 1, greedy) loading
the same GGUF, run on the exact prompts our runner gets, so that a collapse of our dense retrieval
with length is pinned on our runner, on the prompt format, or on the model.

    saap eval niah --model gemma3 --task passkey --lengths 32768 --trials 2 --dump-prompts P.jsonl
    python3 scripts/niah_transformers.py --model GEMMA.gguf --prompts P.jsonl [Q.jsonl ...] \\
        [--modes plain classic] [--ppl-text eval.txt --ppl-windows 2 --ppl-window 32768 \\
         --ppl-saap-result ppl_dense_w32768_cuda.json] --out DIR [--device cuda] [--dtype float32]

Prompt modes (files in the order given, each in every mode before the next file):
  plain    the dumped token ids as they are (BOS + instructions + haystack with needles, then
           "\\n\\nQuestion: ...\\nAnswer: " + lead-in), max_new_tokens from the file;
  classic  passkey trials only: the classic passkey format (Mohtashami & Jaggi's landmark-attention
           prompt) around the SAME haystack: "There is an important info hidden inside a lot of
           irrelevant text. ..." / haystack before / "The pass key is N. Remember it. N is the pass
           key." / haystack after / "What is the pass key? The pass key is", lines joined by "\\n",
           the haystack text decoded from the dumped ids, the whole encoded by the HF tokenizer with
           BOS first (its length differs from the dumped one by a few tokens).
Answers are decoded with the HF tokenizer and scored by score_niah's rule (src/eval/niah.cpp): an
expected number counts when the answer holds it with no digit right before or after.

Perplexity (--ppl-text): the windows of `saap eval ppl` (src/eval/perplexity.cpp): the text
tokenized without BOS, window w = BOS + tokens[w*(W-1), (w+1)*(W-1)), scored on its W-1 next
tokens; with --ppl-saap-windows (`saap eval ppl --dump-windows`) our own ids are scored, and each
row says whether the HF tokenizer's cut is the same; the lm_head runs over chunks of positions (a 32k x 262k fp32 logits matrix would be 34 GB).
--ppl-saap-result (a saap eval ppl JSON of the same windows) puts our runner's per-window NLL beside.

Writes to --out (each file with provenance, scripts/provenance.py):
  <prompt file stem>_<mode>_hf.json / .csv   per trial: place, expected, HF's answer and its ids,
                                             found/correct, prompt tokens, seconds;
  ppl_hf_w<W>.json / .csv                    per window: HF NLL (and ours when given);
  hf_progress.jsonl                          one line per finished trial or window (flushed: what
                                             a killed run had done).
--time-limit S: no trial or window starts once S seconds have passed since the script began (those
left are listed as skipped). DEVICE=cpu and a 1k length run it on a CPU for a check.
"""
import argparse
import csv
import json
import math
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402

T0 = time.time()
CLASSIC_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                 "I will quiz you about the important information there.")
CLASSIC_QUESTION = "What is the pass key? The pass key is"


def score_niah(expected, answer):
    """score_niah of src/eval/niah.cpp on the answer's UTF-8 bytes: (found, total)."""
    data = answer.encode("utf-8")
    digits = b"0123456789"
    found = 0
    for v in expected:
        needle = v.encode("utf-8")
        if not needle:
            continue
        at = data.find(needle)
        while at != -1:
            before = at > 0 and data[at - 1] in digits
            end = at + len(needle)
            after = end < len(data) and data[end] in digits
            if not before and not after:
                found += 1
                break
            at = data.find(needle, at + 1)
    return found, len(expected)


def read_prompts(path):
    """(provenance of the dump or None, [trial records]) of a `saap eval niah --dump-prompts` file."""
    dump_prov, records = None, []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            j = json.loads(line)
            if "provenance" in j:
                dump_prov = j["provenance"]
                continue
            for field in ("task", "length", "depth", "trial", "seed", "context", "query", "max_new_tokens", "expected"):
                if field not in j:
                    sys.exit(f"niah_transformers: {path}:{n} has no '{field}' (not a --dump-prompts file)")
            records.append(j)
    return dump_prov, records


def classic_prompt(tok, rec):
    """The classic passkey prompt around the record's haystack, HF-tokenized with BOS first."""
    ctx, begin = rec["context"], rec["haystack_begin"]
    start, size = rec["needle_tokens"][0], rec["needle_lengths"][0]
    before = tok.decode(ctx[begin:start]).strip()
    after = tok.decode(ctx[start + size:]).strip()
    key = rec["expected"][0]
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    text = "\n".join([CLASSIC_INTRO, before, needle, after, CLASSIC_QUESTION])
    ids = tok(text)["input_ids"]
    if ids[0] != tok.bos_token_id:
        ids = [tok.bos_token_id] + ids
    return ids, len(tok(CLASSIC_INTRO + "\n" + before)["input_ids"])  # about where the needle starts


def load(args):
    where, name = os.path.dirname(os.path.abspath(args.model)), os.path.basename(args.model)
    t = time.time()
    if args.tokenizer_cache and os.path.isdir(args.tokenizer_cache):
        tok = AutoTokenizer.from_pretrained(args.tokenizer_cache)
    else:  # converting the GGUF's 262k vocabulary takes tens of seconds: keep the result for the next process
        tok = AutoTokenizer.from_pretrained(where, gguf_file=name)
        if args.tokenizer_cache:
            tok.save_pretrained(args.tokenizer_cache)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=dtype, attn_implementation=args.attn)
    model.to(args.device).eval()
    print(f"loaded {args.model} ({type(model).__name__}, {args.dtype}, {args.attn}, {args.device}) in "
          f"{time.time() - t:.1f} s", flush=True)
    return tok, model


def eos_ids(tok, model):
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = ids if isinstance(ids, list) else [ids] if ids is not None else []
    return sorted(set(ids + ([tok.eos_token_id] if tok.eos_token_id is not None else [])))


def generate(model, ids, max_new_tokens, eos, device):
    """Greedy continuation of ids (HF's cache): the new token ids, end-of-generation tokens dropped."""
    x = torch.tensor([ids], device=device)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos,
                              pad_token_id=eos[0] if eos else 0)
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=config)
    new = out[0, len(ids):].tolist()
    return [t for t in new if t not in eos]


def timed_out(args):
    return args.time_limit > 0 and time.time() - T0 > args.time_limit


def progress(args, row):
    with open(os.path.join(args.out, "hf_progress.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def write_result(args, stem, doc, rows, columns, inputs):
    prov = provenance.collect(inputs=inputs)
    doc = dict(doc, provenance=prov)
    with open(os.path.join(args.out, stem + ".json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.join(args.out, stem + ".csv"), "w", encoding="utf-8", newline="") as f:
        f.write(provenance.csv_lines(prov))
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([json.dumps(r[c]) if isinstance(r.get(c), (list, dict)) else r.get(c, "") for c in columns])
    print(f"wrote {os.path.join(args.out, stem)}.json/.csv", flush=True)


TRIAL_COLUMNS = ["task", "haystack", "length", "depth", "trial", "seed", "mode", "prompt_tokens", "needle_token",
                 "expected", "answer", "found", "total", "correct", "distractor_answer", "seconds"]


def run_niah(args, tok, model, path, mode, inputs):
    dump_prov, records = read_prompts(path)
    if mode == "classic" and not any(r["task"] == "passkey" for r in records):
        print(f"classic: {os.path.basename(path)} holds no passkey trial (the classic format is a passkey's)")
        return
    eos = eos_ids(tok, model)
    trials, skipped = [], []
    for rec in records:
        place = {k: rec[k] for k in ("task", "haystack", "length", "depth", "trial", "seed")}
        if mode == "classic" and rec["task"] != "passkey":
            continue
        if timed_out(args):
            skipped.append(place)
            continue
        t = time.time()
        if mode == "plain":
            ids, needle = rec["context"] + rec["query"], rec["asked_needle_token"]
        else:
            ids, needle = classic_prompt(tok, rec)
        new = generate(model, ids, rec["max_new_tokens"], eos, args.device)
        if args.device == "cuda":
            torch.cuda.synchronize()
        answer = tok.decode(new, skip_special_tokens=True)
        found, total = score_niah(rec["expected"], answer)
        correct = total > 0 and found == total
        row = dict(place, mode=mode, dtype=args.dtype, prompt_tokens=len(ids), needle_token=needle,
                   expected=rec["expected"], distractors=rec.get("distractors", []), answer=answer,
                   answer_ids=new, found=found, total=total, correct=correct,
                   distractor_answer=not correct and score_niah(rec.get("distractors", []), answer)[0] > 0,
                   seconds=round(time.time() - t, 3))
        if mode == "plain":  # does the HF tokenizer read the query's ids back as they are?
            row["hf_query_roundtrip"] = tok(tok.decode(rec["query"]), add_special_tokens=False)["input_ids"] == rec["query"]
        trials.append(row)
        progress(args, dict(row, file=os.path.basename(path)))
        print(f"  {mode} {place['task']}/{place['haystack']} L={place['length']} depth={place['depth']} "
              f"trial={place['trial']}: {'right' if correct else 'WRONG'} {answer!r} (want {rec['expected']}) "
              f"{row['seconds']:.2f} s", flush=True)
    by_length = {}
    for r in trials:
        n, k = by_length.get(r["length"], (0, 0))
        by_length[r["length"]] = (n + 1, k + int(r["correct"]))
    summary = [{"length": length, "trials": n, "correct": k} for length, (n, k) in sorted(by_length.items())]
    stem = os.path.splitext(os.path.basename(path))[0] + f"_{mode}_hf" + ("" if args.dtype == "float32" else "_bf16")
    doc = {"engine": "transformers", "transformers": __import__("transformers").__version__,
           "torch": torch.__version__, "dtype": args.dtype, "attn_implementation": args.attn, "device": args.device,
           "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
           "mode": mode, "prompts": path, "dump_provenance": dump_prov, "summary": summary,
           "skipped": skipped, "trials": trials}
    write_result(args, stem, doc, trials, TRIAL_COLUMNS, inputs + [provenance.input_file("prompts", path)])
    for s in summary:
        print(f"{mode} {os.path.basename(path)} L={s['length']}: {s['correct']}/{s['trials']} right", flush=True)


def window_nll(model, ids, device, chunk):
    """Mean NLL (nats) of ids[1:] given ids[:-1], the lm_head over `chunk` positions at a time."""
    x = torch.tensor([ids], device=device)
    cap = getattr(model.config, "final_logit_softcapping", None)
    total = 0.0
    with torch.no_grad():
        hidden = model.model(input_ids=x, use_cache=False).last_hidden_state[0]  # [W][width], final norm applied
        for a in range(0, len(ids) - 1, chunk):
            b = min(len(ids) - 1, a + chunk)
            logits = model.lm_head(hidden[a:b]).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            nll = -torch.log_softmax(logits, dim=-1).gather(1, x[0, a + 1:b + 1, None])
            total += float(nll.double().sum())
    return total / (len(ids) - 1)


def run_ppl(args, tok, model, inputs):
    with open(args.ppl_text, encoding="utf-8") as f:
        tokens = tok(f.read(), add_special_tokens=False)["input_ids"]
    W, per = args.ppl_window, args.ppl_window - 1  # BOS + W-1 text tokens (Gemma's vocabulary asks for BOS)
    windows = min(args.ppl_windows, len(tokens) // per)
    cut = {w: [tok.bos_token_id] + tokens[w * per:(w + 1) * per] for w in range(windows)}
    # Our runner's own windows (saap eval ppl --dump-windows), when given, are what is scored; each
    # row says whether HF's tokenizer cut the same ids.
    ours_ids = {}
    if args.ppl_saap_windows:
        with open(args.ppl_saap_windows, encoding="utf-8") as f:
            for line in f:
                j = json.loads(line)
                if "window" in j:
                    ours_ids[j["window"]] = j["tokens"]
        if any(len(ids) != W for ids in ours_ids.values()):
            sys.exit(f"niah_transformers: {args.ppl_saap_windows} holds windows of other than {W} tokens")
    rows, skipped = [], []
    for w in range(windows):
        if timed_out(args):
            skipped.append(w)
            continue
        if ours_ids and w not in ours_ids:
            continue
        t = time.time()
        ids = ours_ids.get(w, cut[w])
        nll = window_nll(model, ids, args.device, args.ppl_chunk)
        row = {"window": w, "tokens": W, "hf_mean_nll": nll, "hf_ppl": math.exp(nll), "seconds": round(time.time() - t, 3),
               "ids": "saap" if w in ours_ids else "hf_tokenizer"}
        if w in ours_ids:
            row["hf_tokenizer_same_ids"] = ours_ids[w] == cut[w]
        rows.append(row)
        progress(args, dict(row, file="ppl"))
        print(f"  ppl window {w} ({W} tokens): HF NLL {nll:.5f} (ppl {math.exp(nll):.4f})"
              + (f", saap {row['saap_mean_nll']:.5f}" if "saap_mean_nll" in row else "") + f", {row['seconds']:.1f} s",
              flush=True)
    # Our runner's window NLLs, read now: a script may run `saap eval ppl` beside this one.
    ours = None
    if args.ppl_saap_result and os.path.exists(args.ppl_saap_result):
        with open(args.ppl_saap_result, encoding="utf-8") as f:
            ours = json.load(f)
        if ours.get("window_len") != W or ours.get("first_window", 0) != 0:
            sys.exit(f"niah_transformers: {args.ppl_saap_result} has window_len {ours.get('window_len')}, first_window "
                     f"{ours.get('first_window')}; this run has {W}, 0")
        for row in rows:
            if row["window"] < len(ours.get("window_nll", [])):
                row["saap_mean_nll"] = ours["window_nll"][row["window"]]
                row["nll_difference"] = row["saap_mean_nll"] - row["hf_mean_nll"]
    elif args.ppl_saap_result:
        print(f"niah_transformers: {args.ppl_saap_result} is not there (yet): HF's windows alone", flush=True)
    mean = sum(r["hf_mean_nll"] for r in rows) / max(1, len(rows))
    doc = {"engine": "transformers", "transformers": __import__("transformers").__version__, "torch": torch.__version__,
           "dtype": args.dtype, "attn_implementation": args.attn, "device": args.device, "text": args.ppl_text,
           "text_tokens": len(tokens), "window_len": W, "windows": len(rows), "skipped_windows": skipped,
           "hf_mean_nll": mean, "hf_perplexity": math.exp(mean), "rows": rows,
           "saap_result": args.ppl_saap_result if ours else None}
    if ours and rows and all("saap_mean_nll" in r for r in rows):
        doc["saap_mean_nll_same_windows"] = sum(r["saap_mean_nll"] for r in rows) / len(rows)
        doc["saap_perplexity_same_windows"] = math.exp(doc["saap_mean_nll_same_windows"])
    extra = [provenance.input_file("text", args.ppl_text)]
    if args.ppl_saap_windows:
        extra.append(provenance.input_file("saap_windows", args.ppl_saap_windows))
    if ours:
        extra.append(provenance.input_file("saap_result", args.ppl_saap_result))
    write_result(args, f"ppl_hf_w{W}" + ("" if args.dtype == "float32" else "_bf16"), doc, rows,
                 ["window", "tokens", "ids", "hf_tokenizer_same_ids", "hf_mean_nll", "hf_ppl", "saap_mean_nll",
                  "nll_difference", "seconds"],
                 inputs + extra)
    print(f"ppl HF over {len(rows)} windows of {W}: {math.exp(mean):.4f}"
          + (f" (saap, same windows: {doc['saap_perplexity_same_windows']:.4f})" if "saap_perplexity_same_windows" in doc
             else ""), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the GGUF (transformers dequantizes it; needs the gguf package)")
    ap.add_argument("--prompts", nargs="*", default=[], help="saap eval niah --dump-prompts files")
    ap.add_argument("--modes", nargs="+", default=["plain"], choices=["plain", "classic"])
    ap.add_argument("--ppl-text", help="text for the perplexity windows (eval.txt)")
    ap.add_argument("--ppl-window", type=int, default=32768)
    ap.add_argument("--ppl-windows", type=int, default=2)
    ap.add_argument("--ppl-chunk", type=int, default=2048, help="positions per lm_head call")
    ap.add_argument("--ppl-saap-windows", help="saap eval ppl --dump-windows file: score these ids (else HF's own cut)")
    ap.add_argument("--ppl-saap-result", help="saap eval ppl JSON of the same windows (its window_nll)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default=os.environ.get("DEVICE", "cuda"))
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, eager)")
    ap.add_argument("--tokenizer-cache", help="folder for the HF tokenizer converted from the GGUF (reused when there)")
    ap.add_argument("--ppl-first", action="store_true", help="run the perplexity windows before the prompts")
    ap.add_argument("--time-limit", type=float, default=0, help="start nothing after this many seconds (0: no limit)")
    args = ap.parse_args()
    if not args.prompts and not args.ppl_text:
        ap.error("nothing to run: give --prompts and/or --ppl-text")
    os.makedirs(args.out, exist_ok=True)
    tok, model = load(args)
    inputs = [provenance.input_file("model", args.model)]
    if args.ppl_text and args.ppl_first:
        run_ppl(args, tok, model, inputs)
    for path in args.prompts:  # a file in every mode before the next file: list the files most important first
        for mode in args.modes:
            run_niah(args, tok, model, path, mode, inputs)
    if args.ppl_text and not args.ppl_first:
        run_ppl(args, tok, model, inputs)
    print(f"niah_transformers: done in {time.time() - T0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
