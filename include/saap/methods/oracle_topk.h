// Oracle top-k: exact scores of every prefix key, then exact attention over the k best per query
// head. It reads all of K to decide, so it is NOT a speed-up: it is the quality upper bound of any
// method that selects k tokens per head (what Loki, H2O and Saap approximate without reading K).
#pragma once
#include <cstdint>
#include <vector>

#include "saap/core/selection_rules.h"
#include "saap/methods/method.h"
#include "saap/methods/registry.h"

namespace saap {

// The k positions with the largest scores (ties to the lower position), ascending. Requires
// 0 <= k <= n; `order` is scratch.
void top_k_positions(const float* scores, int64_t n, int64_t k, std::vector<int32_t>& out,
                     std::vector<int32_t>& order);

class OracleTopK : public AttentionMethod {
 public:
  // lookup: the fraction of the prefix attended, in (0, 1]; k = rules::topk_keys(lookup, n_ctx).
  OracleTopK(const LayerShape& shape, double lookup) : OracleTopK(shape, rules::Budget{lookup, 0}) {}
  // Either form of budget: with budget.tokens > 0, k = min(tokens, n_ctx) (rules::Budget::topk).
  OracleTopK(const LayerShape& shape, const rules::Budget& budget);
  std::string name() const override { return "oracle"; }
  // Selects everything when the budget covers the prefix; index_bytes = all prefix K bytes.
  void select(const LayerKV& kv, const QueryView& q, Selection& sel) override;

 private:
  rules::Budget budget_;
  std::vector<float> scores_;
  std::vector<int32_t> order_;
};

MethodFactory oracle_factory(const MethodSpec& spec, const ArtifactIdentity& expected);

}  // namespace saap
