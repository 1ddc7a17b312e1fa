// Quest (Tang et al., ICML 2024, arXiv 2406.10774): query-aware page selection, training-free.
// The cache is cut into pages of P consecutive positions; per page and KV head the element-wise
// min and max of its (post-RoPE) keys are kept, updated as positions are appended. A query scores
// each page by an upper bound on q.k over the page's keys, sum_i max(q_i min_i, q_i max_i), and
// exact attention runs over the best pages that fit the budget, plus the sinks and the recent
// window (saap::rules: the budget, fixed reads, ranking order and fill rule are the shared ones).
//
// GQA. Quest's code serves MHA models and has no GQA rule. Here the heads of a KV group read one
// union (as every sparse method in this library) and a page's group key is the SUM of its heads'
// bounds: that is Quest's own bound for the group taken as one query (the G heads' queries stacked
// against the key repeated G times), an upper bound on the group's summed logit for every key of
// the page, just as Saap sums its heads' densities. A max would let one head with a large query
// norm decide the whole group's read.
//
// Accounting. index_bytes counts the metadata read to decide: 2 x head_dim values per scored page
// and KV head, in the cache dtype (min and max of cached values are cached values).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "saap/methods/method.h"
#include "saap/methods/quest_pages.h"
#include "saap/methods/registry.h"

namespace saap {

struct QuestParams {
  double lookup = 0.05;       // K/V tokens read (sinks + window + pages) <= ceil(lookup * n_ctx)
  int64_t budget_tokens = 0;  // > 0: a fixed budget of this many tokens instead of the fraction
  int sinks = 4;
  int window = 64;
  int page_size = 16;
};

class QuestAttention : public AttentionMethod {
 public:
  QuestAttention(const LayerShape& shape, const QuestParams& params);
  std::string name() const override { return "quest"; }

  void reset() override;
  // Folds the new post-RoPE keys (read from kv) into their pages' min and max; the last page may
  // be partial and grows on the next append. begin below what was placed (a truncated cache being
  // refilled) rebuilds from the page holding begin.
  void place(const LayerKV& kv, int64_t begin, int64_t end, const float* k_pre) override;
  // Everything when the budget covers the middle; else sinks, the best pages that fit, the window.
  void select(const LayerKV& kv, const QueryView& q, Selection& sel) override;

  int64_t pages() const;
  // Page c's element-wise min and max of KV head kv_head's keys, [head_dim] each.
  const float* page_min(int kv_head, int64_t c) const;
  const float* page_max(int kv_head, int64_t c) const;

 private:
  // The K/V tokens the index may choose at an n-token prefix (saap::rules).
  int64_t selectable(int64_t n) const;
  // Page c's bounds as a query at prefix n may see them: the stored ones, or, for a page holding
  // positions >= n (placed ahead of the query, as in a prefill), rebuilt from its keys below n.
  void causal_bounds(const LayerKV& kv, int kv_head, int64_t c, int64_t n, const float** lo, const float** hi);

  QuestParams params_;
  int64_t placed_ = 0;
  std::vector<std::vector<float>> min_, max_;  // [n_kv_heads][pages][head_dim]
  std::vector<float> key_, edge_min_, edge_max_;
  std::vector<float> keys_;       // [pages]: the group's bound of each candidate page
  std::vector<int32_t> order_;    // candidate pages, best first (ids relative to the range's first)
  std::vector<uint8_t> taken_;
};

// Checks spec (lookup in (0, 1], budget_tokens >= 0, sinks and window >= 0, page_size in
// [1, kMaxQuestPageSize]); needs no artifact.
QuestParams quest_params(const MethodSpec& spec);
// Index bytes a query with an n_ctx-token prefix reads to decide: 0 when the budget covers the
// middle (everything read) or buys nothing; else min and max (head_dim values each, in the cache
// dtype) of every page of the middle, per KV head. QuestAttention::select and the GPU runner
// (saap::cuda, bf16 metadata) both charge this.
int64_t quest_index_bytes(const QuestParams& params, const LayerShape& shape, int64_t n_ctx, DType cache_dtype);
inline constexpr int kMaxQuestPageSize = 1024;
MethodFactory quest_factory(const MethodSpec& spec, const ArtifactIdentity& expected);

}  // namespace saap
