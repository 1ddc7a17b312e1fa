#!/usr/bin/env python3
"""Reference Gemma-3 forward pass in NumPy float64, the independent check of saap's runner on
"gemma3" GGUFs.

Written from the published architecture (Gemma Team, "Gemma 3 Technical Report", 2025; Hugging
Face transformers' Gemma3ForCausalLM), not from saap's C++. Tensors are read and dequantized by
the `gguf` Python package. Per block:

    h = x + PostAttnNorm(Attn(InputNorm(x)))          Attn: QK-norm per head, then RoPE
    x = h + PostFFNNorm(W_down (gelu_tanh(W_gate g) * W_up g)),  g = PreFFNNorm(h)

with x0 = embedding * sqrt(n_embd), a final RMSNorm and the tied unembedding. RoPE is the
Hugging Face rotate_half form. Layer l is global when (l + 1) % 6 == 0 (RoPE base = the GGUF's
rope.freq_base); the others are local: RoPE base 10,000 and a causal sliding window of
`sliding_window` keys, the query's own included (transformers' sliding mask q - k < window).
Scores are scaled by query_pre_attn_scalar^-1/2 = 256^-1/2 (config.json of google/gemma-3-270m).

RMSNorm is x / sqrt(mean(x^2) + eps) * (offset + w). --norm-offset chooses how the stored
weights are read: 0 when the converter already stored 1 + w, 1 when it stored Gemma's raw w.
--score-text measures which is right (the wrong one cannot predict text).

Outputs, for the one --tokens sequence (from an empty cache):
  --out-top1 FILE     int64 argmax of the logits of every position
  --out-logits FILE   float64 logits [len(rows)][vocab] of the positions in --rows
usage: reference_gemma3.py --model M.gguf --tokens 2,818,... --rows 0,100,599
           --out-top1 top1.i64 --out-logits rows.f64 [--norm-offset 0]
       reference_gemma3.py --model M.gguf --tokens ... --score-text   (mean NLL at offsets 0 and 1)
"""
import argparse
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

SLIDING_WINDOW_PATTERN = 6      # Gemma3TextConfig: every 6th layer global
LOCAL_ROPE_BASE = 10000.0       # Gemma3TextConfig.rope_local_base_freq
QUERY_PRE_ATTN_SCALAR = 256.0   # google/gemma-3-270m config.json


def field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        sys.exit(f"reference_gemma3: metadata key {key} is missing")
    return f.contents()


def load_weights(reader):
    """Every tensor in NumPy (row-major, [out][in]) layout: float64, except the 262,144-row
    embedding, kept as the float32 `gguf` returns (exact: a Q8_0 value is an fp16 scale times an
    int8) and widened to float64 a block at a time where it is used."""
    weights = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type)
        if t.name != "token_embd.weight":
            w = w.astype(np.float64)
        weights[t.name] = w.reshape([int(d) for d in reversed(t.shape)])
    return weights


def rms_norm(x, w, eps, offset):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * (offset + w)


def rope(x, positions, base):
    """x [n][heads][dim], Hugging Face rotate_half: pairs (i, i + dim/2)."""
    dim = x.shape[-1]
    inv_freq = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    theta = positions[:, None] * inv_freq[None, :]
    cos = np.concatenate([np.cos(theta)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(theta)] * 2, axis=-1)[:, None, :]
    half = dim // 2
    return x * cos + np.concatenate([-x[..., half:], x[..., :half]], axis=-1) * sin


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def hidden_states(reader, w, tokens, norm_offset):
    """The final normalized hidden states [n][n_embd]."""
    if field(reader, "general.architecture") != "gemma3":
        sys.exit("reference_gemma3: not a gemma3 GGUF")
    n_layers = int(field(reader, "gemma3.block_count"))
    n_embd = int(field(reader, "gemma3.embedding_length"))
    n_head = int(field(reader, "gemma3.attention.head_count"))
    n_kv = int(field(reader, "gemma3.attention.head_count_kv"))
    head_dim = int(field(reader, "gemma3.attention.key_length"))
    eps = float(field(reader, "gemma3.attention.layer_norm_rms_epsilon"))
    global_base = float(field(reader, "gemma3.rope.freq_base"))
    window = int(field(reader, "gemma3.attention.sliding_window"))
    group = n_head // n_kv

    n = len(tokens)
    pos = np.arange(n, dtype=np.float64)
    distance = pos[:, None] - pos[None, :]  # query - key
    causal = np.where(distance >= 0, 0.0, -np.inf)
    sliding = np.where((distance >= 0) & (distance < window), 0.0, -np.inf)
    x = w["token_embd.weight"][tokens].astype(np.float64) * np.sqrt(n_embd)
    for l in range(n_layers):
        p = f"blk.{l}."
        is_global = (l + 1) % SLIDING_WINDOW_PATTERN == 0
        h = rms_norm(x, w[p + "attn_norm.weight"], eps, norm_offset)
        q = (h @ w[p + "attn_q.weight"].T).reshape(n, n_head, head_dim)
        k = (h @ w[p + "attn_k.weight"].T).reshape(n, n_kv, head_dim)
        v = (h @ w[p + "attn_v.weight"].T).reshape(n, n_kv, head_dim)
        q = rms_norm(q, w[p + "attn_q_norm.weight"], eps, norm_offset)
        k = rms_norm(k, w[p + "attn_k_norm.weight"], eps, norm_offset)
        base = global_base if is_global else LOCAL_ROPE_BASE
        q, k = rope(q, pos, base), rope(k, pos, base)
        mask = causal if is_global else sliding
        att = np.empty((n, n_head, head_dim))
        for hq in range(n_head):
            kv = hq // group
            scores = q[:, hq, :] @ k[:, kv, :].T * QUERY_PRE_ATTN_SCALAR ** -0.5 + mask
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            att[:, hq, :] = (scores / scores.sum(axis=-1, keepdims=True)) @ v[:, kv, :]
        o = att.reshape(n, n_head * head_dim) @ w[p + "attn_output.weight"].T
        x = x + rms_norm(o, w[p + "post_attention_norm.weight"], eps, norm_offset)
        g = rms_norm(x, w[p + "ffn_norm.weight"], eps, norm_offset)
        f = (gelu_tanh(g @ w[p + "ffn_gate.weight"].T) * (g @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        x = x + rms_norm(f, w[p + "post_ffw_norm.weight"], eps, norm_offset)
    return rms_norm(x, w["output_norm.weight"], eps, norm_offset)


def logits_of(h, w):
    """Tied unembedding (Gemma-3 has no final softcap), in float64 blocks of the vocabulary."""
    embd = w["token_embd.weight"]
    block = 16384
    return np.concatenate([h @ embd[v:v + block].astype(np.float64).T for v in range(0, embd.shape[0], block)],
                          axis=-1)


def mean_nll(reader, w, tokens, norm_offset):
    z = logits_of(hidden_states(reader, w, tokens, norm_offset)[:-1], w)
    z = z - z.max(axis=-1, keepdims=True)
    nll = np.log(np.exp(z).sum(axis=-1)) - z[np.arange(len(tokens) - 1), tokens[1:]]
    return nll.mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--rows", default="", help="comma-separated positions whose full logits go to --out-logits")
    ap.add_argument("--out-top1")
    ap.add_argument("--out-logits")
    ap.add_argument("--norm-offset", type=float, default=0.0)
    ap.add_argument("--score-text", action="store_true", help="print the mean NLL with norm offsets 0 and 1")
    args = ap.parse_args()
    reader = GGUFReader(args.model)
    w = load_weights(reader)
    vocab = w["token_embd.weight"].shape[0]
    tokens = np.array([int(t) for t in args.tokens.split(",")], dtype=np.int64)
    if tokens.size == 0 or tokens.min() < 0 or tokens.max() >= vocab:
        sys.exit(f"reference_gemma3: token ids must be in [0, {vocab})")
    if args.score_text:
        for offset in (0.0, 1.0):
            nll = mean_nll(reader, w, tokens, offset)
            print(f"norm offset {offset:g}: mean NLL {nll:.4f} nats/token, perplexity {np.exp(nll):.4g}")
        return
    h = hidden_states(reader, w, tokens, args.norm_offset)
    if args.out_top1:
        top1 = np.empty(len(tokens), dtype="<i8")
        for start in range(0, len(tokens), 256):  # 256 rows at a time keeps the [rows][vocab] block small
            top1[start:start + 256] = np.argmax(logits_of(h[start:start + 256], w), axis=-1)
        top1.tofile(args.out_top1)
    if args.out_logits:
        rows = [int(r) for r in args.rows.split(",") if r]
        if any(r < 0 or r >= len(tokens) for r in rows):
            sys.exit(f"reference_gemma3: --rows must be in [0, {len(tokens)})")
        logits_of(h[rows], w).astype("<f8").tofile(args.out_logits)


if __name__ == "__main__":
    main()
