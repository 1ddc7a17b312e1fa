// One layer's recorded activations replayed through an attention method as decoding would run
// them: position t is cached and placed, then query t selects and attends over [0, t]. This is
// how the harness feeds every method identical inputs (the dense model's activations).
#pragma once
#include <cstdint>
#include <vector>

#include "saap/eval/attention_metrics.h"
#include "saap/methods/method.h"

namespace saap {

// Which positions run their query through the method.
enum class ReplayQueries {
  // Every position selects and attends, in order; the lookup counts every query.
  every_position,
  // Only the sampled positions do, each after its prefix is placed (as a chunked prefill would
  // place it), unless the method needs every query (AttentionMethod::needs_every_query: H2O),
  // which still runs them all. The lookup counts the sampled queries only, for every method, so
  // fractions compare on the same queries. At a long context this skips the O(n^2) selections of
  // the unsampled positions; a stateless method's sampled selections are the same either way.
  sampled_positions,
};

// Replays one layer's activations of one window (q, q_pre [n][n_heads][head_dim]; k, k_pre, v
// [n][n_kv_heads][head_dim]) through a fresh method; adds the metrics at `sample` positions
// (increasing).
void replay_layer(const MethodFactory& factory, const LayerShape& shape, int64_t n, const float* q,
                  const float* q_pre, const float* k, const float* k_pre, const float* v,
                  const std::vector<int32_t>& sample, int top_k, std::vector<AttentionMetrics>& per_head,
                  LookupStats& lookup, ReplayQueries queries = ReplayQueries::every_position);

}  // namespace saap
