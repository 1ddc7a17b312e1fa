// How close one method's attention is to dense attention, for one query at a time, against a
// float64 recomputation of the dense softmax over the query's whole causal prefix:
//   recall@k  - fraction of the true top-k keys (by score) that the selection contains
//   jaccard   - |S ∩ T| / |S ∪ T| between the selection S and the true top-|S| set T (the agreement
//               with oracle top-k at the method's own budget)
//   mass      - dense softmax probability summed over the selection (1 = nothing lost)
//   rel_error - ||out_method - out_dense|| / ||out_dense|| of the attention output
// Metrics are per query head; sums are kept so that layers and runs aggregate by addition.
#pragma once
#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "saap/methods/method.h"

namespace saap {

struct AttentionMetrics {
  int64_t samples = 0;  // (query, head) pairs
  double recall = 0, jaccard = 0, mass = 0, rel_error = 0;
  double selected = 0;  // positions selected, over the prefix length (per head, before GQA union)

  double mean_recall() const { return samples ? recall / double(samples) : 0.0; }
  double mean_jaccard() const { return samples ? jaccard / double(samples) : 0.0; }
  double mean_mass() const { return samples ? mass / double(samples) : 0.0; }
  double mean_rel_error() const { return samples ? rel_error / double(samples) : 0.0; }
  double mean_selected() const { return samples ? selected / double(samples) : 0.0; }
  AttentionMetrics& operator+=(const AttentionMetrics& o);
  nlohmann::json to_json() const;
};

// Adds one query's metrics to per_head[h] for every query head h. kv must be F32 (the harness
// fills its own cache); out is the method's attention output [n_q_heads][head_dim] for `sel`.
// top_k is clamped to the prefix length.
void measure_query(const LayerKV& kv, const QueryView& q, const Selection& sel, const float* out, int top_k,
                   std::vector<AttentionMetrics>& per_head);

}  // namespace saap
