#!/usr/bin/env python3
"""Why GPU Loki's perplexity differs from the CPU's on one short window (issue 11): a NumPy Llama
forward pass (SmolLM2, the model of scripts/bf16_emulation.py) whose attention is Loki's rule,
each query head's own top k = rules::loki_keys(k_f, n) of its low-rank scores q'[:r] . k'[:r]
(ties to the lower position), at every layer and every query position ("method-everywhere", as
`saap eval ppl --method loki` runs it), under the numerics of either device:

  cpu  - the fp32 CPU runner: fp32 activations, low-rank key coordinates kept in fp32
  gpu  - the bf16 CUDA runner: q/K/V and GEMM inputs rounded to bf16 (scripts/bf16_emulation.py's
         roundings), the rotated keys stored in bf16 (LokiIndex's k_low / k_rest), scores in fp32
  and the two mixes (cpu numerics + bf16 key coordinates; gpu numerics + fp32 coordinates), so
  that the part each rounding plays shows. Prints the perplexity of each, and for gpu vs cpu
  how many per-head selections differ at layer 0 (same inputs, so only the roundings differ).

    scripts/python.sh scripts/loki_bf16_emulation.py --artifact loki-pre.safetensors \
        [--k-f 0.125] [--d-f 0.25] [--window 256] [--text eval.txt]
The window is the first --window tokens of the text, as `saap eval ppl --max-windows 1` takes it
(SmolLM2 has no BOS).
"""
import argparse
import json
import math
import os
import struct
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from bf16_emulation import bf16, load_llama  # noqa: E402
from make_tokenizer_vectors import build, read_vocab  # noqa: E402


def tokens_for(model, text_path, n):
    """The first n tokens of the text (a prefix of the file is enough for the first window)."""
    tokens, types, merges = read_vocab(model)
    tok = build(tokens, types, merges, "smollm", False)
    text = open(text_path, encoding="utf-8", errors="surrogateescape").read(40 * n)
    ids = tok.encode(text).ids
    assert len(ids) > n + 8, "text too short"
    return np.array(ids[:n])


def read_components(path):
    """The artifact's 'components' [L][H][D][D] (row j = principal axis j) and its rope field."""
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        t = header["components"]
        f.seek(8 + size + t["data_offsets"][0])
        data = np.frombuffer(f.read(t["data_offsets"][1] - t["data_offsets"][0]), dtype=np.float32)
    return data.reshape(t["shape"]), header.get("__metadata__", {})


def tokens_for_fraction(f, n):  # rules::tokens_for_fraction
    want = math.ceil(f * n - 1e-9)
    return 0 if want <= 0 else min(n, want)


def loki_keys(k_f, n):  # rules::loki_keys
    k = tokens_for_fraction(k_f, n)
    return k if k >= 1 else min(n, 1)


def loki_masks(q, k, axes, k_f, store):
    """Per query head h and query position i, the positions Loki keeps: [H][n][n] bool.
    q [n][H][D], k [n][Hkv][D] (post-RoPE); axes [Hkv][r][D] (rows = principal axes)."""
    n, H, D = q.shape
    Hkv, G = k.shape[1], H // k.shape[1]
    keep = np.zeros((H, n, n), bool)
    for h in range(H):
        a = axes[h // G]
        kc = store((k[:, h // G] @ a.T).astype(np.float32))  # [n][r] key coordinates as stored
        qc = (q[:, h] @ a.T).astype(np.float32)               # [n][r] the rotated query, fp32
        s = (qc @ kc.T).astype(np.float32)                   # [n][n] low-rank scores
        for i in range(n):
            m = i + 1
            kk = loki_keys(k_f, m)
            if kk >= m:
                keep[h, i, :m] = True
                continue
            # higher score first, ties to the lower position (a stable sort of -score)
            order = np.argsort(-s[i, :m], kind="stable")
            keep[h, i, order[:kk]] = True
    return keep


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--model", default=open(os.path.expanduser("~/.cache/saap/default_model_path")).read().strip())
    ap.add_argument("--text", default=os.path.expanduser("~/.cache/saap/text/eval.txt"))
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--k-f", type=float, default=0.125)
    ap.add_argument("--d-f", type=float, default=0.25)
    ap.add_argument("--variants", default="cpu,gpu,cpu+bf16keys,gpu+fp32keys")
    a = ap.parse_args()
    W, L, E, H, Hkv, D, G, base, eps = load_llama(a.model)
    comps, _ = read_components(a.artifact)
    rank = max(1, tokens_for_fraction(a.d_f, D))
    tokens = tokens_for(a.model, a.text, a.window)
    inv_freq = base ** (-np.arange(0, D, 2) / D)

    def rms(x, w):
        return x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps).astype(np.float32) * w

    def rope(x):  # [n][heads][D], GGUF's interleaved pairs (2i, 2i+1), as the runners
        ang = np.arange(x.shape[0])[:, None] * inv_freq[None, :]
        c, s = np.cos(ang).astype(np.float32)[:, None, :], np.sin(ang).astype(np.float32)[:, None, :]
        y = np.empty_like(x)
        y[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
        y[..., 1::2] = x[..., 0::2] * s + x[..., 1::2] * c
        return y

    def forward(numerics, store, masks_out=None):
        R = bf16 if numerics == "bf16" else (lambda x: np.asarray(x, dtype=np.float32))
        emb = R(W["token_embd.weight"])
        unemb = R(W["output.weight"]) if "output.weight" in W else emb
        n = len(tokens)
        x = emb[tokens].astype(np.float32)
        for l in range(L):
            w = lambda name: R(W[f"blk.{l}.{name}.weight"])  # noqa: E731
            xn = R(rms(x, W[f"blk.{l}.attn_norm.weight"]))
            q = R(rope((xn @ w("attn_q").T).reshape(n, H, D)))
            k = R(rope((xn @ w("attn_k").T).reshape(n, Hkv, D)))
            v = R((xn @ w("attn_v").T).reshape(n, Hkv, D))
            keep = loki_masks(q, k, comps[l, :, :rank, :], a.k_f, store)
            if masks_out is not None:
                masks_out.append(keep)
            o = np.zeros((n, H, D), np.float32)
            for h in range(H):
                s = q[:, h] @ k[:, h // G].T / np.sqrt(D)
                s[~keep[h]] = -np.inf
                p = np.exp(s - s.max(-1, keepdims=True))
                o[:, h] = (R(p) @ v[:, h // G]) / p.sum(-1, keepdims=True)
            x = x + R(o.reshape(n, E)) @ w("attn_output").T
            xn = R(rms(x, W[f"blk.{l}.ffn_norm.weight"]))
            g, u = xn @ w("ffn_gate").T, xn @ w("ffn_up").T
            x = x + R(g / (1 + np.exp(-g)) * u) @ w("ffn_down").T
        logits = (R(rms(x, W["output_norm.weight"])) @ unemb.T).astype(np.float64)
        m = logits.max(-1, keepdims=True)
        lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
        nll = lse[:-1] - logits[np.arange(n - 1), tokens[1:]]
        return math.exp(nll.mean())

    fp32 = lambda c: c  # noqa: E731
    variants = {"cpu": ("fp32", fp32), "gpu": ("bf16", bf16), "cpu+bf16keys": ("fp32", bf16),
                "gpu+fp32keys": ("bf16", fp32)}
    masks = {}
    for name in a.variants.split(","):
        numerics, store = variants[name]
        masks[name] = []
        ppl = forward(numerics, store, masks[name])
        print(f"{name:14s} ({numerics} activations, {'bf16' if store is bf16 else 'fp32'} key coordinates): "
              f"perplexity {ppl:.4f}", flush=True)
    if "cpu" in masks and "cpu+bf16keys" in masks:
        # Layer 0 sees the same activations under both (fp32), so a difference there is the
        # bf16 storage of the key coordinates alone.
        a0, b0 = masks["cpu"][0], masks["cpu+bf16keys"][0]
        rows = a0.any(-1)
        diff = (a0 != b0).any(-1) & rows
        print(f"layer 0, cpu vs cpu+bf16keys: {int(diff.sum())} of {int(rows.sum())} (head, query) selections differ")
    print(f"model {os.path.basename(a.model)}, artifact {a.artifact}, rank {rank}, k_f {a.k_f}, window {a.window}, "
          f"first tokens {tokens[:8].tolist()}")


if __name__ == "__main__":
    main()
