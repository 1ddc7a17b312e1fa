#!/usr/bin/env python3
"""Second reference for the Gemma-3 runner: Hugging Face transformers (>= 5, torch on the CPU, fp32)
loading the same GGUF, against scripts/reference_gemma3.py (NumPy float64) on BOS + the first
640 tokens of eval.txt. transformers dequantizes the GGUF itself and subtracts 1 from every norm
weight (its Gemma2TensorProcessor) before its (1 + w) RMSNorm, so agreement also confirms the
norm convention. Needs a venv with transformers, torch, accelerate and gguf (not saap's own):

    VENV/bin/python scripts/compare_gemma3_transformers.py GEMMA.gguf EVAL_TXT
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROWS = [0, 1, 2, 100, 400, 510, 511, 512, 513, 600, 639, 640]


def main():
    model_path, text_path = sys.argv[1], sys.argv[2]
    where, name = os.path.dirname(os.path.abspath(model_path)), os.path.basename(model_path)
    tok = AutoTokenizer.from_pretrained(where, gguf_file=name)
    with open(text_path, encoding="utf-8") as f:
        ids = tok(f.read(20000))["input_ids"][:641]  # BOS first
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    with torch.no_grad():
        hf = model(torch.tensor([ids])).logits[0].double().numpy()
    with tempfile.TemporaryDirectory() as tmp:
        here = os.path.dirname(os.path.abspath(__file__))
        subprocess.check_call([sys.executable, os.path.join(here, "reference_gemma3.py"), "--model", model_path,
                               "--tokens", ",".join(map(str, ids)), "--rows", ",".join(map(str, ROWS)),
                               "--out-top1", f"{tmp}/top1", "--out-logits", f"{tmp}/rows"])
        top1 = np.fromfile(f"{tmp}/top1", dtype="<i8")
        rows = np.fromfile(f"{tmp}/rows", dtype="<f8").reshape(len(ROWS), -1)
    rel = np.abs(hf[ROWS] - rows).max(axis=1) / np.abs(rows).max(axis=1)
    nll = -torch.log_softmax(torch.tensor(hf[:-1]), -1).numpy()[np.arange(len(ids) - 1), ids[1:]].mean()
    print(json.dumps({"positions": len(ids), "top1_agreement": float((hf.argmax(-1) == top1).mean()),
                      "max_rel_logit_error": float(rel.max()), "rows": ROWS,
                      "transformers_mean_nll": float(nll), "transformers_ppl": float(np.exp(nll))}))


if __name__ == "__main__":
    main()
