// Exact CPU attention: the reference every method and GPU kernel is checked against.
// fp32 accumulation, online softmax (running max and sum), GQA (query head h reads KV head
// h / (n_q_heads / n_kv_heads)), OpenMP over heads and key blocks.
#pragma once
#include <cstdint>

#include "saap/core/kv_cache.h"

namespace saap {

// Checks the shapes of a call and throws InvalidArgument naming the field that disagrees.
void check_attention_shape(const LayerKV& kv, int n_q_heads, int64_t n_ctx);
// Throws NonFinite naming the first NaN/Inf in q (n_rows x n_q_heads x head_dim).
void check_finite_queries(const float* q, int64_t n_rows, int n_q_heads, int head_dim);

// One query position: q [n_q_heads][head_dim] attends to positions [0, n_ctx) of kv.
// out [n_q_heads][head_dim]. n_ctx must be in [1, kv.length].
void attention_decode(const LayerKV& kv, const float* q, int n_q_heads, int64_t n_ctx, float scale, float* out);

// Causal prefill: q [n_q][n_q_heads][head_dim] are the queries of positions pos0 .. pos0+n_q-1;
// row i attends to positions [0, pos0 + i]. out has q's shape. Requires pos0 + n_q <= kv.length.
void attention_prefill(const LayerKV& kv, const float* q, int n_q_heads, int64_t n_q, int64_t pos0, float scale,
                       float* out);

// One query head over an explicit list of positions of one KV head: the building block of every
// sparse method. positions need not be sorted but must be < kv.length; n may be 0 (out = 0).
void attention_over_positions(const LayerKV& kv, int kv_head, const float* q, const int32_t* positions, int64_t n,
                              float scale, float* out);

}  // namespace saap
