#!/usr/bin/env python3
"""How far the CUDA runner's bf16 numerics may drift from the fp32 CPU runner, estimated on the CPU:
a NumPy float32 Llama forward pass over the prompts of tests/model/data/cuda_reference_logits.txt,
with the roundings of src/model_cuda (weights, the inputs of every GEMM, q/K/V, the unnormalised
probabilities before P·V, the attention output) applied (--numerics bf16) or not (fp32, which must
agree with the file to ~1e-4: the check that this pass is the same model). Prints the statistics
tests/kernels/cuda/test_cuda_llama.cu limits: max and RMS |Δlogit| over the CPU's top-k ids, max
|Δ log-sum-exp|, mean |Δ NLL of the next token| and the top-1 flips (with the CPU's margin).

    scripts/python.sh scripts/bf16_emulation.py [--numerics bf16|fp32] [--model M.gguf]
    scripts/python.sh scripts/bf16_emulation.py --long 2048   (the first 2048 tokens of the long
        eval.txt window, tests/model/data/cuda_reference_long.txt: top-1 agreement and perplexity)
"""
import argparse
import os

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bf16(x):
    """Round to the nearest bf16 (ties to even), kept in float32."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return u.view(np.float32)


def load_llama(path):
    """A Llama GGUF's dequantized float32 tensors by name and its shape: (W, L, E, H, Hkv, D, G, rope base, eps)."""
    r = GGUFReader(path)
    W = {t.name: dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(d) for d in reversed(t.shape)])
         for t in r.tensors}

    def meta(key, default=None):
        f = r.fields.get(key)
        return f.contents() if f is not None else default

    L, E = int(meta("llama.block_count")), int(meta("llama.embedding_length"))
    H, Hkv = int(meta("llama.attention.head_count")), int(meta("llama.attention.head_count_kv"))
    base, eps = float(meta("llama.rope.freq_base", 10000.0)), float(meta("llama.attention.layer_norm_rms_epsilon", 1e-5))
    return W, L, E, H, Hkv, E // H, H // Hkv, base, eps


def read_reference(path):
    lines = [l for l in open(path) if not l.startswith("#")]
    n_prompts, prompts, i = int(lines[1].split()[1]), [], 2
    for _ in range(n_prompts):
        t = lines[i].split()
        n = int(t[1])
        tokens, positions = [int(x) for x in t[2:2 + n]], []
        i += 1
        for _ in range(n):
            t = lines[i].split()
            i += 1
            positions.append({"lse": float(t[0]), "next": float(t[1]),
                              "ids": [int(x.split(":")[0]) for x in t[2:]],
                              "logits": [float(x.split(":")[1]) for x in t[2:]]})
        prompts.append((tokens, positions))
    return prompts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--numerics", choices=["bf16", "bf16-proj", "fp32"], default="bf16",
                    help="bf16-proj also rounds the Q/K/V and gate/up projection outputs (bf16 GEMM outputs)")
    ap.add_argument("--model", default=open(os.path.expanduser("~/.cache/saap/default_model_path")).read().strip())
    ap.add_argument("--reference", default=os.path.join(ROOT, "tests/model/data/cuda_reference_logits.txt"))
    ap.add_argument("--long", type=int, default=0, help="tokens of the long-window reference to run instead")
    a = ap.parse_args()
    W, L, E, H, Hkv, D, G, base, eps = load_llama(a.model)
    R = bf16 if a.numerics != "fp32" else (lambda x: np.asarray(x, dtype=np.float32))
    P = bf16 if a.numerics == "bf16-proj" else (lambda x: x)  # a projection's output before RoPE / SwiGLU
    emb = R(W["token_embd.weight"])
    unemb = R(W["output.weight"]) if "output.weight" in W else emb
    inv_freq = base ** (-np.arange(0, D, 2) / D)

    def rms(x, w):
        return x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps).astype(np.float32) * w

    def rope(x):  # [n][heads][D], GGUF's interleaved pairs (2i, 2i+1), as the runner
        ang = np.arange(x.shape[0])[:, None] * inv_freq[None, :]
        c, s = np.cos(ang).astype(np.float32)[:, None, :], np.sin(ang).astype(np.float32)[:, None, :]
        y = np.empty_like(x)
        y[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
        y[..., 1::2] = x[..., 0::2] * s + x[..., 1::2] * c
        return y

    def forward(tokens):
        n = len(tokens)
        x = emb[tokens].astype(np.float32)
        causal = np.triu(np.ones((n, n), bool), 1)
        for l in range(L):
            w = lambda name: R(W[f"blk.{l}.{name}.weight"])  # noqa: E731
            xn = R(rms(x, W[f"blk.{l}.attn_norm.weight"]))
            q = R(rope(P(xn @ w("attn_q").T).reshape(n, H, D)))
            k = R(rope(P(xn @ w("attn_k").T).reshape(n, Hkv, D)))
            v = R(P(xn @ w("attn_v").T).reshape(n, Hkv, D))
            o = np.zeros((n, H, D), np.float32)
            for h in range(H):
                s = q[:, h] @ k[:, h // G].T / np.sqrt(D)
                s[causal] = -np.inf
                p = np.exp(s - s.max(-1, keepdims=True))
                o[:, h] = (R(p) @ v[:, h // G]) / p.sum(-1, keepdims=True)
            x = x + R(o.reshape(n, E)) @ w("attn_output").T
            xn = R(rms(x, W[f"blk.{l}.ffn_norm.weight"]))
            g, u = P(xn @ w("ffn_gate").T), P(xn @ w("ffn_up").T)
            x = x + R(g / (1 + np.exp(-g)) * u) @ w("ffn_down").T
        return (R(rms(x, W["output_norm.weight"])) @ unemb.T).astype(np.float64)

    if a.long:
        lines = [l for l in open(os.path.join(ROOT, "tests/model/data/cuda_reference_long.txt")) if not l.startswith("#")]
        tokens = [int(x) for x in lines[1].split()[2:]][:a.long]
        rows = [l.split() for l in lines[2:2 + a.long]]
        logits = forward(np.array(tokens))
        same = decisive = decisive_same = 0
        emu_nll, cpu_nll = [], []
        for i, (top1, margin, nll_cpu) in enumerate(rows):
            ok = logits[i].argmax() == int(top1)
            same += ok
            if float(margin) > 0.2:
                decisive += 1
                decisive_same += ok
            if i + 1 < len(tokens):
                m = logits[i].max()
                emu_nll.append(m + np.log(np.exp(logits[i] - m).sum()) - logits[i, tokens[i + 1]])
                cpu_nll.append(float(nll_cpu))
        ppl_e, ppl_c = np.exp(np.mean(emu_nll)), np.exp(np.mean(cpu_nll))
        print(f"{a.numerics}, {a.long} tokens: top-1 same {same}/{len(rows)}, {decisive_same}/{decisive} with CPU margin "
              f"> 0.2; mean |d NLL| {np.mean(np.abs(np.array(emu_nll) - cpu_nll)):.4g}; perplexity {ppl_e:.4f} vs CPU "
              f"{ppl_c:.4f} (relative {abs(ppl_e / ppl_c - 1):.4g})")
        return
    worst, sq, count, lse_worst, nll, flips = 0.0, 0.0, 0, 0.0, [], []
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
            if logits[i].argmax() != pos["ids"][0]:
                flips.append(round(pos["logits"][0] - pos["logits"][1], 4))
    print(f"{a.numerics}: max |dlogit| {worst:.4g}, RMS {np.sqrt(sq / count):.4g}, max |d lse| {lse_worst:.4g}, "
          f"mean |d NLL| {np.mean(nll):.4g}, top-1 flips (CPU margin) {flips}")


if __name__ == "__main__":
    main()
