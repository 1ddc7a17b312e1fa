// Exact attention over a sliding window of the last W positions (the query's own included):
// Gemma-3's local layers. Internal to src/model: the runner builds it for every local layer, so
// the methods of the method interface only ever serve global layers.
#pragma once
#include <cstdint>

#include "saap/methods/method.h"

namespace saap {

// kv restricted to positions [first, kv.length), renumbered from 0. The cache keeps one head's
// positions contiguous with a stride of capacity, so this is a pointer offset.
LayerKV window_view(const LayerKV& kv, int64_t first);

// The first position a query at `pos` reads in a window of `window` positions.
inline int64_t window_start(int64_t pos, int64_t window) { return pos + 1 > window ? pos + 1 - window : 0; }

// Causal prefill within a window: q [n_q][n_q_heads][head_dim] are the queries of positions
// pos0 .. pos0+n_q-1; row i attends to [window_start(pos0 + i), pos0 + i]. out has q's shape.
void attention_prefill_window(const LayerKV& kv, const float* q, int n_q_heads, int64_t n_q, int64_t pos0,
                              int64_t window, float scale, float* out);

// The decode-time form, as an AttentionMethod. A local layer's dense reference is its window, so
// it counts the window both as read and as the dense read (lookup fraction 1).
class SlidingWindowAttention : public AttentionMethod {
 public:
  SlidingWindowAttention(const LayerShape& shape, int64_t window);
  std::string name() const override { return "sliding-window"; }
  void select(const LayerKV& kv, const QueryView& q, Selection& sel) override;
  void attend(const LayerKV& kv, const QueryView& q, const Selection& sel, float* out, LookupStats& stats) override;
  int64_t window() const { return window_; }

 private:
  int64_t window_;
};

}  // namespace saap
