// Causal attention of a prefill chunk against the bf16 KV cache, flash-attention style (online
// softmax over key tiles, nothing of size n² in memory). Query t of sequence b sits at position
// p = pos0 + t and attends to cache rows [0, p], or with a sliding window W to [max(0, p - W + 1), p]
// (Gemma-3's local layers); the chunk's own keys must already be in the cache (rope_split_qkv
// writes them), so a long prompt runs as chunks with growing pos0.
//
//   q    bf16 [batch][n][n_q_heads][head_dim]   (after RoPE)
//   k, v bf16 [batch][n_kv_heads][max_len][head_dim]; rows [0, pos0 + n) are read
//   out  bf16 [batch][n][n_q_heads][head_dim]   (the input of the output projection)
// Query head hq reads KV head hq / (n_q_heads / n_kv_heads).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

namespace saap::cuda {

struct PrefillShape {
  int batch = 1;
  int n_q_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int64_t n = 0;        // query tokens per sequence in this chunk
  int64_t pos0 = 0;     // cached tokens before the chunk
  int64_t max_len = 0;  // the cache's row stride; pos0 + n <= max_len
  int64_t window = 0;   // > 0: each query sees its last `window` positions (its own included); 0: all
  // Throws InvalidArgument / Unsupported naming the field (head_dim 64 or 256).
  void check() const;
};

// tc and tc128 run head_dim 64 and 256 with or without a window; tcw32 and simple run head_dim 64
// without a window (anything else is refused by name).
enum class PrefillKernel {
  Auto,           // the kernel measured fastest for the shape (resolve_prefill_kernel)
  TensorCore,     // mma.sync bf16 tiles (64 queries x 64 keys per step; 32 keys at head_dim 256), fp32 softmax and accumulators
  TensorCore128,  // the same with 128 queries (8 warps) per block: half the key/value tile loads
  TensorCoreWarp32,  // 128 queries (4 warps x 32 rows) per block: each K/V fragment feeds two mma
  TensorCoreWarp16,  // the same code with 16 rows per warp (64 queries per block, 3 blocks per SM)
  Simple,      // CUDA-core fp32 reference kernel: correct, several times slower; for tests and fallback
};

// "auto", "tc", "tc128", "tcw32", "tcw16", "simple" (command-line names); InvalidArgument naming the
// value otherwise.
PrefillKernel prefill_kernel_from_name(const std::string& name);
const char* prefill_kernel_name(PrefillKernel kernel);
// Auto becomes the kernel measured fastest on the H200 for the shape (e2e_bench compares them at
// SmolLM2's shapes): at head_dim 64 without a window kAutoHeadDim64, otherwise tc. Any other
// kernel is returned as it is.
PrefillKernel resolve_prefill_kernel(const PrefillShape& s, PrefillKernel kernel);

void prefill_attention(const PrefillShape& s, const __nv_bfloat16* q, const __nv_bfloat16* k,
                       const __nv_bfloat16* v, float scale, __nv_bfloat16* out, cudaStream_t stream = 0,
                       PrefillKernel kernel = PrefillKernel::Auto);

}  // namespace saap::cuda
