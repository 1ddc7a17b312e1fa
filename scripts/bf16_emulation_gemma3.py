#!/usr/bin/env python3
"""How far the CUDA runner's bf16 numerics may drift from the fp32 CPU runner on Gemma-3-270M,
estimated on the CPU (the Gemma counterpart of scripts/bf16_emulation.py): a NumPy float32 Gemma-3
forward pass (the architecture of scripts/reference_gemma3.py) over the prompt of
tests/model/data/cuda_reference_gemma3.txt, with the roundings of src/model_cuda/cuda_gemma3.cu
applied (--numerics bf16) or not (fp32, which must agree with the file to ~1e-3: the check that
this pass is the same model). Roundings to bf16: every GEMM weight and the embedding, the inputs of
every GEMM (normalised rows, the attention output, the GeGLU output), the fused Q/K/V and gate/up
projection outputs, q, K and V after QK-norm and RoPE, and the unnormalised probabilities before
P·V. Norm weights, the residual stream, the Wo and W_down outputs (before their post-norms) and
the logits stay fp32. Prints what tests/kernels/cuda/test_cuda_gemma3.cu limits: max and RMS
|Δlogit| over the CPU's top-k ids, max |Δ log-sum-exp|, mean |Δ NLL of the next token|, and the
top-1 flips with the CPU's margin.

    scripts/python.sh scripts/bf16_emulation_gemma3.py [--numerics bf16|fp32] [--model M.gguf]
"""
import argparse
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from bf16_emulation import bf16, read_reference  # noqa: E402
from reference_gemma3 import LOCAL_ROPE_BASE, QUERY_PRE_ATTN_SCALAR, SLIDING_WINDOW_PATTERN, field  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--numerics", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--model", default=open(os.path.expanduser("~/.cache/saap/gemma3_model_path")).read().strip())
    ap.add_argument("--reference", default=os.path.join(ROOT, "tests/model/data/cuda_reference_gemma3.txt"))
    a = ap.parse_args()
    R = bf16 if a.numerics == "bf16" else (lambda x: np.asarray(x, dtype=np.float32))
    reader = GGUFReader(a.model)
    W = {t.name: dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(d) for d in reversed(t.shape)])
         for t in reader.tensors}
    L = int(field(reader, "gemma3.block_count"))
    E = int(field(reader, "gemma3.embedding_length"))
    H, Hkv = int(field(reader, "gemma3.attention.head_count")), int(field(reader, "gemma3.attention.head_count_kv"))
    D = int(field(reader, "gemma3.attention.key_length"))
    eps = float(field(reader, "gemma3.attention.layer_norm_rms_epsilon"))
    global_base = float(field(reader, "gemma3.rope.freq_base"))
    window = int(field(reader, "gemma3.attention.sliding_window"))
    G = H // Hkv
    emb = R(W["token_embd.weight"])

    def rms(x, w):
        return (x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps)).astype(np.float32) * w

    def rope(x, base):  # [n][heads][D], rotate_half pairs (i, i + D/2), as the runner (NeoX)
        inv_freq = base ** (-np.arange(0, D, 2, dtype=np.float64) / D)
        ang = np.arange(x.shape[0])[:, None] * inv_freq[None, :]
        c, s = np.cos(ang).astype(np.float32)[:, None, :], np.sin(ang).astype(np.float32)[:, None, :]
        h = D // 2
        y = np.empty_like(x)
        y[..., :h] = x[..., :h] * c - x[..., h:] * s
        y[..., h:] = x[..., :h] * s + x[..., h:] * c
        return y

    def gelu_tanh(x):
        return 0.5 * x * (1.0 + np.tanh(np.float32(np.sqrt(2.0 / np.pi)) * (x + np.float32(0.044715) * x ** 3)))

    def forward(tokens):
        n = len(tokens)
        x = emb[tokens] * np.float32(np.sqrt(E))
        dist = np.arange(n)[:, None] - np.arange(n)[None, :]
        for l in range(L):
            w = lambda name: R(W[f"blk.{l}.{name}.weight"])  # noqa: E731
            g = lambda name: W[f"blk.{l}.{name}.weight"]  # noqa: E731  (norm weights: fp32)
            is_global = (l + 1) % SLIDING_WINDOW_PATTERN == 0
            xn = R(rms(x, g("attn_norm")))
            q = R(xn @ w("attn_q").T).reshape(n, H, D)
            k = R(xn @ w("attn_k").T).reshape(n, Hkv, D)
            v = R(R(xn @ w("attn_v").T).reshape(n, Hkv, D))
            base = global_base if is_global else LOCAL_ROPE_BASE
            q = R(rope(rms(q, g("attn_q_norm")), base))
            k = R(rope(rms(k, g("attn_k_norm")), base))
            masked = (dist < 0) if is_global else ((dist < 0) | (dist >= window))
            o = np.zeros((n, H, D), np.float32)
            for h in range(H):
                s = q[:, h] @ k[:, h // G].T * np.float32(QUERY_PRE_ATTN_SCALAR ** -0.5)
                s[masked] = -np.inf
                p = np.exp(s - s.max(-1, keepdims=True))
                o[:, h] = (R(p) @ v[:, h // G]) / p.sum(-1, keepdims=True)
            y = R(o.reshape(n, H * D)) @ w("attn_output").T
            x = x + rms(y, g("post_attention_norm"))
            xn = R(rms(x, g("ffn_norm")))
            gate, up = R(xn @ w("ffn_gate").T), R(xn @ w("ffn_up").T)
            y = R(gelu_tanh(gate) * up) @ w("ffn_down").T
            x = x + rms(y, g("post_ffw_norm"))
        h = R(rms(x, W["output_norm.weight"]))
        return np.concatenate([(h @ emb[v:v + 16384].T).astype(np.float64) for v in range(0, emb.shape[0], 16384)],
                              axis=-1)

    worst, sq, count, lse_worst, nll, flips = 0.0, 0.0, 0, 0.0, [], []
    decisive = decisive_same = 0
    for tokens, positions in read_reference(a.reference):
        logits = forward(np.array(tokens))
        for i, pos in enumerate(positions):
            d = logits[i, pos["ids"]] - np.array(pos["logits"])
            worst, sq, count = max(worst, np.abs(d).max()), sq + (d ** 2).sum(), count + d.size
            m = logits[i].max()
            lse = m + np.log(np.exp(logits[i] - m).sum())
            lse_worst = max(lse_worst, abs(lse - pos["lse"]))
            if i + 1 < len(tokens):
                nll.append(abs((lse - logits[i, tokens[i + 1]]) - (pos["lse"] - pos["next"])))
            margin = pos["logits"][0] - pos["logits"][1]
            same = logits[i].argmax() == pos["ids"][0]
            if margin > 0.2:
                decisive += 1
                decisive_same += same
            if not same:
                flips.append(round(margin, 4))
    print(f"{a.numerics}: max |dlogit| {worst:.4g}, RMS {np.sqrt(sq / count):.4g}, max |d lse| {lse_worst:.4g}, "
          f"mean |d NLL| {np.mean(nll):.4g}, top-1 agreement with CPU margin > 0.2 {decisive_same}/{decisive}, "
          f"top-1 flips (CPU margin) {flips}")


if __name__ == "__main__":
    main()
