// StreamingLLM on the GPU (the CPU method is methods/streaming.h): every query reads the first
// `sinks` positions and the `window` most recent ones of the dense cache, nothing else and no
// index. The positions are saap::rules::fixed_reads, the rule every sinks-and-window method pays
// first, so the CPU and the GPU read the same rows.
#pragma once
#include <cstdint>

#include "saap/kernels/cuda/decode.h"

namespace saap::cuda {

// Attention of q over [0, sink_end) and [window_begin, lengths[b]) of each sequence
// (rules::fixed_reads(lengths[b], sinks, window)) into out, split-KV like dense_decode.
// k, v: the dense cache [batch][n_kv_heads][max_len][head_dim]; q, out [batch][n_q_heads][head_dim].
// window >= 1 (the CPU method reads window 0 as 1: the query's own position), sinks >= 0.
// selected (nullable) [batch][n_kv_heads]: the K/V tokens each (b, h) read, for the byte counts.
void streaming_decode(const DecodeShape& s, const void* k, const void* v, int64_t max_len, const int32_t* lengths,
                      const float* q, float scale, int sinks, int window, float* out, SplitWorkspace& ws,
                      int32_t* selected, cudaStream_t stream = 0);

}  // namespace saap::cuda
