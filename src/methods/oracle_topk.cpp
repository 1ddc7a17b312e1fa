#include "saap/methods/oracle_topk.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "saap/core/error.h"
#include "saap/core/selection_rules.h"
#include "saap/kernels/cpu/attention.h"

namespace saap {

void top_k_positions(const float* scores, int64_t n, int64_t k, std::vector<int32_t>& out,
                     std::vector<int32_t>& order) {
  SAAP_CHECK_FMT(k >= 0 && k <= n, InvalidArgument, "k = %lld outside [0, n = %lld]", (long long)k, (long long)n);
  order.resize(size_t(n));
  std::iota(order.begin(), order.end(), 0);
  // The ranking order of selection_rules.h, a strict total order (score, then position): the
  // selection does not depend on the nth_element implementation when scores tie.
  auto better = [scores](int32_t a, int32_t b) { return rules::ranks_before(scores[a], a, scores[b], b); };
  if (k < n) std::nth_element(order.begin(), order.begin() + k, order.end(), better);
  out.assign(order.begin(), order.begin() + k);
  std::sort(out.begin(), out.end());
}

OracleTopK::OracleTopK(const LayerShape& shape, const rules::Budget& budget) : AttentionMethod(shape), budget_(budget) {
  check_fraction(budget.lookup, "lookup");
  SAAP_CHECK_FMT(budget.tokens >= 0, InvalidArgument, "budget_tokens = %lld must be >= 0 (0: use lookup)",
                 (long long)budget.tokens);
}

void OracleTopK::select(const LayerKV& kv, const QueryView& q, Selection& sel) {
  const int64_t n = q.n_ctx();
  check_attention_shape(kv, q.n_q_heads, n);
  const int64_t k = budget_.topk(n);
  sel.clear(q.n_q_heads);
  if (k >= n) {
    sel.all = true;
    return;
  }
  check_finite_queries(q.q, 1, q.n_q_heads, kv.head_dim);
  const int group = q.n_q_heads / kv.n_kv_heads;
  const int d = kv.head_dim;
  scores_.resize(size_t(n));
  for (int h = 0; h < q.n_q_heads; ++h) {
    const float* qh = q.q + int64_t(h) * d;
    dispatch_dtype(kv.dtype, [&](auto tag) {
      using T = decltype(tag);
      for (int64_t p = 0; p < n; ++p) {
        const T* key = kv.key<T>(h / group, p);
        float s = 0.0f;
        for (int i = 0; i < d; ++i) s += qh[i] * to_float(key[i]);
        scores_[size_t(p)] = s;
      }
    });
    top_k_positions(scores_.data(), n, k, sel.positions[size_t(h)], order_);
  }
  sel.index_bytes = n * kv.n_kv_heads * int64_t(d) * int64_t(dtype_size(kv.dtype));
}

MethodFactory oracle_factory(const MethodSpec& spec, const ArtifactIdentity&) {
  const rules::Budget budget{spec.lookup, spec.budget_tokens};
  check_fraction(budget.lookup, "lookup");
  SAAP_CHECK_FMT(budget.tokens >= 0, InvalidArgument, "budget_tokens = %lld must be >= 0 (0: use lookup)",
                 (long long)budget.tokens);
  return [budget](const LayerShape& shape) { return std::make_unique<OracleTopK>(shape, budget); };
}

}  // namespace saap
