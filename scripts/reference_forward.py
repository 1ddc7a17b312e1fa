#!/usr/bin/env python3
"""Reference Llama forward pass in NumPy float64, the independent check of saap's model runner.

Written from the published architecture (Touvron et al. 2023; Hugging Face LlamaForCausalLM),
not from saap's C++: tensors are read and dequantized by the `gguf` Python package, the Q/K
weights are un-permuted back to the Hugging Face layout (llama.cpp's convert script permutes them
for GGML's interleaved RoPE) and RoPE is applied in the Hugging Face "rotate_half" convention.
Agreement with the C++ runner therefore also checks the permutation/RoPE-style equivalence.

Each --tokens sequence starts from an empty cache (causal attention over that sequence only).
The logits of every position of every sequence are written to --out as raw little-endian
float64, [positions][vocab], sequences one after the other.

usage: reference_forward.py --model M.gguf --tokens 1,2,3 [--tokens 4,5] --out logits.f64
"""
import argparse
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            sys.exit(f"reference_forward: metadata key {key} is missing")
        return default
    return f.contents()


def load_weights(reader):
    """Every tensor as a float64 array in NumPy (row-major, [out][in]) layout."""
    weights = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float64)
        weights[t.name] = w.reshape([int(d) for d in reversed(t.shape)])
    return weights


def unpermute(w, n_head):
    """Inverse of llama.cpp's convert-time permute: GGML interleaved rows -> HF half-split rows."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_neox(x, positions, base, freq_scale, freq_factors):
    """x [n][heads][dim]; rotate_half convention (pairs i, i + dim/2)."""
    dim = x.shape[-1]
    inv_freq = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors
    theta = (positions[:, None] * freq_scale) * inv_freq[None, :]  # [n][dim/2]
    cos = np.concatenate([np.cos(theta)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(theta)] * 2, axis=-1)[:, None, :]
    half = dim // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def forward(reader, w, tokens):
    arch = field(reader, "general.architecture")
    n_layers = int(field(reader, f"{arch}.block_count"))
    n_embd = int(field(reader, f"{arch}.embedding_length"))
    n_head = int(field(reader, f"{arch}.attention.head_count"))
    n_kv = int(field(reader, f"{arch}.attention.head_count_kv", n_head))
    eps = float(field(reader, f"{arch}.attention.layer_norm_rms_epsilon"))
    base = float(field(reader, f"{arch}.rope.freq_base", 10000.0))
    scaling = field(reader, f"{arch}.rope.scaling.type", "none")
    freq_scale = 1.0
    if scaling == "linear":
        freq_scale = 1.0 / float(field(reader, f"{arch}.rope.scaling.factor"))
    elif scaling != "none":
        sys.exit(f"reference_forward: rope scaling {scaling} is not implemented")
    freq_factors = w.get("rope_freqs.weight")
    head_dim = n_embd // n_head
    group = n_head // n_kv

    n = len(tokens)
    positions = np.arange(n, dtype=np.float64)
    x = w["token_embd.weight"][tokens]  # [n][n_embd]
    causal = np.triu(np.full((n, n), -np.inf), k=1)
    for l in range(n_layers):
        p = f"blk.{l}."
        h = rms_norm(x, w[p + "attn_norm.weight"], eps)
        q = h @ unpermute(w[p + "attn_q.weight"], n_head).T
        k = h @ unpermute(w[p + "attn_k.weight"], n_kv).T
        v = h @ w[p + "attn_v.weight"].T
        q = rope_neox(q.reshape(n, n_head, head_dim), positions, base, freq_scale, freq_factors)
        k = rope_neox(k.reshape(n, n_kv, head_dim), positions, base, freq_scale, freq_factors)
        v = v.reshape(n, n_kv, head_dim)
        out = np.empty((n, n_head, head_dim))
        for hq in range(n_head):
            kv = hq // group
            scores = q[:, hq, :] @ k[:, kv, :].T / np.sqrt(head_dim) + causal
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            out[:, hq, :] = (scores / scores.sum(axis=-1, keepdims=True)) @ v[:, kv, :]
        x = x + out.reshape(n, n_embd) @ w[p + "attn_output.weight"].T
        h = rms_norm(x, w[p + "ffn_norm.weight"], eps)
        gate = h @ w[p + "ffn_gate.weight"].T
        up = h @ w[p + "ffn_up.weight"].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
    x = rms_norm(x, w["output_norm.weight"], eps)
    out_w = w.get("output.weight", w["token_embd.weight"])  # tied embeddings when absent
    return x @ out_w.T


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", action="append", required=True, help="comma-separated token ids (one sequence)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    reader = GGUFReader(args.model)
    w = load_weights(reader)
    vocab = w["token_embd.weight"].shape[0]
    logits = []
    for seq in args.tokens:
        tokens = np.array([int(t) for t in seq.split(",")], dtype=np.int64)
        if tokens.size == 0 or tokens.min() < 0 or tokens.max() >= vocab:
            sys.exit(f"reference_forward: token ids must be in [0, {vocab})")
        logits.append(forward(reader, w, tokens))
    np.concatenate(logits).astype("<f8").tofile(args.out)


if __name__ == "__main__":
    main()
