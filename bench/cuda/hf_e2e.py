#!/usr/bin/env python3
"""Hugging Face transformers on the same GPU, model and prompts as bench/cuda/e2e_bench: prefill time
and greedy decode tokens/s for prompts of P tokens at batch B (bf16, SDPA attention, the GGUF loaded
by transformers' own GGUF reader, which needs the `gguf` package).

The prompts are e2e_bench's pseudo-random token ids: x = x * 1664525 + 1013904223 (mod 2^32) from
x = 12345, id = (x >> 8) mod vocab, filling [batch][prompt] in order.
Prefill: model(ids, use_cache=True) with the last position's logits only (logits_to_keep = 1, as
generate does), synchronised, median of --reps after a warm-up. Decode: generate(max_new_tokens = N,
min_new_tokens = N, greedy) timed whole, minus the prefill median; tokens/s = B * N / that time.
Prints a table; --out FILE writes the CSV rows engine,method,batch,prompt_tokens,prefill_ms,
decode_tok_s (engine hf-transformers) after the run's provenance lines (scripts/provenance.py).

    python3 bench/cuda/hf_e2e.py --model /tmp/pieces/model.gguf [--prompts 2048,8000] [--batches 1,16]
                                 [--decode 128] [--reps 3] [--out results/gpu_e2e_hf.csv]
"""
import argparse
import inspect
import os
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import provenance  # noqa: E402


def prompt_ids(batch, n, vocab):
    x, ids = 12345, []
    for _ in range(batch * n):
        x = (x * 1664525 + 1013904223) & 0xFFFFFFFF
        ids.append((x >> 8) % vocab)
    return torch.tensor(ids, dtype=torch.long).view(batch, n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.environ.get("SAAP_MODEL_PATH", ""))
    ap.add_argument("--prompts", default="2048,8000")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    if not a.model:
        sys.exit("hf_e2e: pass --model or set SAAP_MODEL_PATH")
    dev = torch.device("cuda")
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(a.model)),
                                                 gguf_file=os.path.basename(a.model), torch_dtype=torch.bfloat16,
                                                 attn_implementation="sdpa").to(dev).eval()
    vocab = model.config.vocab_size
    params = inspect.signature(model.forward).parameters
    keep = {"logits_to_keep": 1} if "logits_to_keep" in params else (
        {"num_logits_to_keep": 1} if "num_logits_to_keep" in params else {})
    gc = model.generation_config
    pad = gc.pad_token_id if gc.pad_token_id is not None else gc.eos_token_id
    if isinstance(pad, (list, tuple)):
        pad = pad[0]
    print(f"hf-transformers: {torch.cuda.get_device_name(0)}, vocab {vocab}, last-logits option {keep or 'none'}")
    print(f"{'batch':>6} {'prompt':>8} {'prefill_ms':>12} {'decode_tok_s':>14}")
    rows = []
    with torch.inference_mode():
        for p in map(int, a.prompts.split(",")):
            for b in map(int, a.batches.split(",")):
                ids = prompt_ids(b, p, vocab).to(dev)
                mask = torch.ones_like(ids)
                times = []
                for r in range(a.reps + 1):  # r = 0 is the warm-up
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    out = model(ids, use_cache=True, **keep)  # no mask: SDPA's causal path, as in generate
                    torch.cuda.synchronize()
                    if r:
                        times.append((time.perf_counter() - t0) * 1e3)
                    del out
                prefill_ms = statistics.median(times)
                gen = dict(attention_mask=mask, do_sample=False, pad_token_id=pad, use_cache=True)
                model.generate(ids, max_new_tokens=2, min_new_tokens=2, **gen)  # warm-up
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                model.generate(ids, max_new_tokens=a.decode, min_new_tokens=a.decode, **gen)
                torch.cuda.synchronize()
                total_s = time.perf_counter() - t0
                tok_s = b * a.decode / max(total_s - prefill_ms / 1e3, 1e-9)
                print(f"{b:6d} {p:8d} {prefill_ms:12.2f} {tok_s:14.1f}", flush=True)
                rows.append(f"hf-transformers,dense,{b},{p},{prefill_ms:.3f},{tok_s:.1f}")
                torch.cuda.empty_cache()
    print("\nengine,method,batch,prompt_tokens,prefill_ms,decode_tok_s")
    print("\n".join(rows))
    if a.out:
        prov = provenance.collect(inputs=[provenance.input_file("model", a.model)])
        with open(a.out, "w") as f:
            f.write(provenance.csv_lines(prov))
            f.write("engine,method,batch,prompt_tokens,prefill_ms,decode_tok_s\n")
            f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
