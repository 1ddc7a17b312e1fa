// One layer's recorded activations replayed through an attention method as decoding would run
// them: position t is cached and placed, then query t selects and attends over [0, t]. This is
// how the harness feeds every method identical inputs (the dense model's activations).
#pragma once
#include <cstdint>
#include <vector>

#include "saap/eval/attention_metrics.h"
#include "saap/methods/method.h"

namespace saap {

// Replays one layer's activations of one window (q, q_pre [n][n_heads][head_dim]; k, k_pre, v
// [n][n_kv_heads][head_dim]) through a fresh method; adds the metrics at `sample` positions.
void replay_layer(const MethodFactory& factory, const LayerShape& shape, int64_t n, const float* q,
                  const float* q_pre, const float* k, const float* k_pre, const float* v,
                  const std::vector<int32_t>& sample, int top_k, std::vector<AttentionMetrics>& per_head,
                  LookupStats& lookup);

}  // namespace saap
