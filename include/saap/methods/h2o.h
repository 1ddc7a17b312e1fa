// H2O, heavy-hitter oracle (Zhang et al., NeurIPS 2023, arXiv 2306.14048), as the Loki paper
// compares it: per query head a budget of k = rules::Budget::topk(n_ctx) tokens (a lookup fraction of the
// prefix, or a fixed count of tokens as the fixed-budget comparisons use), split equally between
// the most recent tokens and the "heavy hitters", the older tokens with the largest attention
// weight accumulated over all previous decode steps. When the heavy hitters overflow their half,
// the lightest are evicted for good: an evicted position never comes back, even as the budget
// grows with the context. spec.sinks and spec.window are not used (H2O has neither).
// The state is per sequence: queries must come in increasing position order; reset() starts anew.
#pragma once
#include <cstdint>
#include <vector>

#include "saap/core/selection_rules.h"
#include "saap/methods/method.h"
#include "saap/methods/registry.h"

namespace saap {

class H2OAttention : public AttentionMethod {
 public:
  // budget: a lookup in (0, 1], or tokens > 0; at least 1 token (the query's own position, always
  // recent).
  H2OAttention(const LayerShape& shape, const rules::Budget& budget);
  H2OAttention(const LayerShape& shape, double lookup) : H2OAttention(shape, rules::Budget{lookup, 0}) {}
  std::string name() const override { return "h2o"; }
  void reset() override;
  bool needs_every_query() const override { return true; }  // its heavy hitters accumulate over queries
  // Evicts the lightest heavy-hitter candidates down to their half of the budget and selects the
  // rest plus the recent half. No index is read (the scores are a by-product of attention).
  void select(const LayerKV& kv, const QueryView& q, Selection& sel) override;
  // Exact attention (the base class), then adds this step's exact softmax weights over the
  // selection to each selected position's accumulated score.
  void attend(const LayerKV& kv, const QueryView& q, const Selection& sel, float* out, LookupStats& stats) override;

  // Accumulated attention weight of `pos` for query head h, and whether it was evicted.
  float accumulated(int head, int64_t pos) const;
  bool evicted(int head, int64_t pos) const;

 private:
  rules::Budget budget_;
  int64_t last_pos_ = -1;
  std::vector<std::vector<float>> acc_;        // [n_q_heads][positions]
  std::vector<std::vector<uint8_t>> evicted_;  // [n_q_heads][positions]
  std::vector<int32_t> candidates_;
  std::vector<float> weights_;
};

MethodFactory h2o_factory(const MethodSpec& spec, const ArtifactIdentity& expected);

}  // namespace saap
