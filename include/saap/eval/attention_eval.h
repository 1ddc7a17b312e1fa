// Attention metrics of a method on the real model. The model runs densely over windows of text;
// each layer's queries, keys and values (identical inputs for every method, so methods compare on
// the same footing) are replayed through the method as decoding would: position t is placed, then
// query t selects and attends over the prefix [0, t]. Every position runs through the method, so
// stateful methods (H2O) evolve as in decoding; metrics are taken at a seeded sample of positions.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "saap/eval/attention_metrics.h"
#include "saap/eval/decode_replay.h"
#include "saap/model/llama.h"

namespace saap {

struct AttentionEvalOptions {
  int queries_per_window = 64;  // sampled positions, density proportional to position - first_query
  int top_k = 32;               // k of recall@k
  uint64_t seed = 1;
  // Queries are sampled at positions >= first_query, e.g. the last part of a long window, so that
  // every measured prefix is long. 0: from the start (position 1).
  int64_t first_query = 0;
  // every_position: stateful or not, every method selects at every position (and the lookup counts
  // them all); sampled_positions: only where a metric is taken (decode_replay.h), what makes
  // token-level rankings (oracle, partition oracle, Loki) affordable at 32k tokens.
  ReplayQueries replay = ReplayQueries::every_position;
  bool progress = true;
};

// The sampled query positions of window `window` of n tokens (increasing, in [max(1, first_query),
// n)): queries_per_window of them (fewer when the range is shorter), seeded by options.seed and
// the window. InvalidArgument unless 0 <= first_query < n.
std::vector<int32_t> attention_query_sample(int64_t n, const AttentionEvalOptions& options, size_t window);

struct AttentionEvalResult {
  std::vector<std::vector<AttentionMetrics>> heads;  // [layer][query head]
  std::vector<LookupStats> lookup;                   // [layer], over the queries options.replay counts
  AttentionMetrics layer(int l) const;
  AttentionMetrics overall() const;
  LookupStats overall_lookup() const;
  nlohmann::json to_json() const;  // overall, per layer, and per layer/head
};

AttentionEvalResult evaluate_attention(std::shared_ptr<const LlamaModel> model, const MethodFactory& factory,
                                       const std::vector<std::vector<int32_t>>& windows,
                                       const AttentionEvalOptions& options);
// Several methods on one dense pass (the model runs once per window; each layer's activations are
// replayed through every method), one result per factory.
std::vector<AttentionEvalResult> evaluate_attention(std::shared_ptr<const LlamaModel> model,
                                                    const std::vector<MethodFactory>& factories,
                                                    const std::vector<std::vector<int32_t>>& windows,
                                                    const AttentionEvalOptions& options);

}  // namespace saap
