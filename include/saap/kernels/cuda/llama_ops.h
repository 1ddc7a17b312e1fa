// The element-wise and row-wise kernels of a Llama forward pass on the GPU (the GEMMs are
// cuBLAS's, the attention is prefill_attention.h / decode.h). Host launchers; every pointer is a
// device pointer, every launch is asynchronous on `stream` and checked.
//
// Row conventions: activations are row-major [rows][features]. The residual stream is fp32; the
// inputs of the GEMMs are bf16. "rows" of one forward call are [batch][tokens] (batch-major).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace saap::cuda {

// x[b][:] = float(embd[tokens[b]][:]) * scale for rows b < rows; embd [vocab][dim] bf16 (scale:
// Gemma's sqrt(n_embd), 1 for a Llama).
// When lengths is non-null, also advances lengths[b] += 1 for b < rows (a decode step's new
// token: the cache length the step's attention reads). Token ids outside [0, vocab) write NaN
// rows (the host checks ids before upload; the device cannot throw).
void embed_rows(const int32_t* tokens, const __nv_bfloat16* embd, int vocab, int dim, int64_t rows, float* x,
                int32_t* lengths, cudaStream_t stream, float scale = 1.f);

// x[r][:] += y[r][:] / sqrt(mean(y[r]²) + eps) * weight[:]; x, y [rows][dim] fp32: Gemma's
// post-attention / post-FFN norm of a sub-block's output, added to the residual stream.
void rms_norm_add_rows(const float* y, const float* weight, int64_t rows, int dim, float eps, float* x,
                       cudaStream_t stream);

// out[r][:] = bf16(x[r][:] / sqrt(mean(x[r]²) + eps) * weight[:]); x [rows][dim] fp32.
void rms_norm_rows(const float* x, const float* weight, int64_t rows, int dim, float eps, __nv_bfloat16* out,
                   cudaStream_t stream);

// The rotary table: cos_sin[pos][pair] = (cos θ, sin θ) for pos < max_pos, pair < n_rot/2.
// rot_a / rot_b give the two dimensions a pair rotates (interleaved: 2i, 2i+1; NeoX: i, i+n_rot/2).
struct RopeTable {
  const float2* cos_sin = nullptr;  // [max_pos][n_rot/2]
  int64_t max_pos = 0;
  int n_rot = 0;
  bool neox = false;
};

// Splits the fused projection output qkv [batch][n][Hq*D | Hkv*D | Hkv*D] (bf16, the GEMM's
// output) of tokens at positions pos(b, t) = base(b) + t, where base(b) = pos0 when lengths is
// null, else lengths[b] - n (decode: lengths already counts the new tokens). It
//   - rotates the query (in fp32) and writes q [batch][n][Hq][D] (fp32 or bf16, by the overload);
//   - rotates the key and writes it with the value into the cache k_cache/v_cache
//     [batch][Hkv][max_len][D] (bf16) at row pos(b, t).
// Positions at or beyond min(max_len, rope.max_pos) are not written (the host checks capacity).
struct QkvLayout {
  int batch = 1;
  int64_t n = 1;  // tokens per sequence in this call
  int n_q_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t max_len = 0;  // the cache's row stride per (sequence, kv head)
};
// With qk_norm (Gemma-3), every query and key head is first RMS-normalised over its D dims (fp32)
// and multiplied by q_weight / k_weight [D], as the CPU runner does before RoPE.
struct QkNorm {
  const float* q_weight = nullptr;  // [head_dim]
  const float* k_weight = nullptr;  // [head_dim]
  float eps = 1e-6f;
  // When set: the normalised q and k before RoPE (the CPU runner's q_pre / k_pre), bf16 in qkv's
  // layout [rows][Hq*D | Hkv*D | (V columns, not written)], for pre-RoPE routing.
  __nv_bfloat16* normed = nullptr;
};
void rope_split_qkv(const QkvLayout& s, const __nv_bfloat16* qkv, const RopeTable& rope, int64_t pos0,
                    const int32_t* lengths, float* q, __nv_bfloat16* k_cache, __nv_bfloat16* v_cache,
                    cudaStream_t stream, const QkNorm* qk_norm = nullptr);
void rope_split_qkv(const QkvLayout& s, const __nv_bfloat16* qkv, const RopeTable& rope, int64_t pos0,
                    const int32_t* lengths, __nv_bfloat16* q, __nv_bfloat16* k_cache, __nv_bfloat16* v_cache,
                    cudaStream_t stream, const QkNorm* qk_norm = nullptr);

// h[r][j] = bf16(silu(gate_up[r][j]) * gate_up[r][n_ff + j]) in fp32; gate_up [rows][2*n_ff] bf16
// (the GEMM's output).
void swiglu_rows(const __nv_bfloat16* gate_up, int64_t rows, int n_ff, __nv_bfloat16* h, cudaStream_t stream);

// h[r][j] = bf16(gelu_tanh(gate_up[r][j]) * gate_up[r][n_ff + j]) in fp32 (Gemma's GeGLU,
// gelu_tanh(g) = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g³)))); gate_up [rows][2*n_ff] bf16.
void geglu_rows(const __nv_bfloat16* gate_up, int64_t rows, int n_ff, __nv_bfloat16* h, cudaStream_t stream);

// out[i] = bf16(in[i]) for i < count.
void to_bf16(const float* in, int64_t count, __nv_bfloat16* out, cudaStream_t stream);

// tokens[r] = argmax_j logits[r][j] (the lower id on ties; NaN never wins); logits [rows][vocab].
void argmax_rows(const float* logits, int64_t rows, int vocab, int32_t* tokens, cudaStream_t stream);

// Negative log-likelihood of each prompt's next token, for perplexity. logits [rows][vocab] are
// the rows r0 .. r0 + rows - 1 of a prefill chunk laid out [batch][cn] (cn tokens per sequence,
// the chunk starting at token t0); prompt is [batch][n]. For chunk row (b, t), at prompt position
// p = t0 + t: nll[b][p] = log sum_j exp(logit_j) - logit[prompt[b][p + 1]] (fp32), or NaN at
// p = n - 1, which has no next token.
struct PromptRows {
  const int32_t* prompt = nullptr;  // [batch][n]
  int64_t n = 0, cn = 0, t0 = 0, r0 = 0;
};
void prompt_nll_rows(const float* logits, int64_t rows, int vocab, const PromptRows& p, float* nll,
                     cudaStream_t stream);

}  // namespace saap::cuda
