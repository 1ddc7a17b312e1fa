#include "saap/methods/h2o.h"

#include <algorithm>
#include <cmath>

#include "saap/core/error.h"
#include "saap/core/selection_rules.h"
#include "saap/kernels/cpu/attention.h"

namespace saap {

H2OAttention::H2OAttention(const LayerShape& shape, const rules::Budget& budget)
    : AttentionMethod(shape), budget_(budget) {
  check_fraction(budget.lookup, "lookup");
  SAAP_CHECK_FMT(budget.tokens >= 0, InvalidArgument, "budget_tokens = %lld must be >= 0 (0: use lookup)",
                 (long long)budget.tokens);
  acc_.resize(size_t(shape.n_q_heads));
  evicted_.resize(size_t(shape.n_q_heads));
}

void H2OAttention::reset() {
  last_pos_ = -1;
  for (auto& a : acc_) a.clear();
  for (auto& e : evicted_) e.clear();
}

float H2OAttention::accumulated(int head, int64_t pos) const {
  const auto& a = acc_.at(size_t(head));
  return pos < int64_t(a.size()) ? a[size_t(pos)] : 0.0f;
}

bool H2OAttention::evicted(int head, int64_t pos) const {
  const auto& e = evicted_.at(size_t(head));
  return pos < int64_t(e.size()) && e[size_t(pos)] != 0;
}

void H2OAttention::select(const LayerKV& kv, const QueryView& q, Selection& sel) {
  const int64_t n = q.n_ctx();
  check_attention_shape(kv, q.n_q_heads, n);
  SAAP_CHECK_FMT(q.n_q_heads == shape_.n_q_heads, InvalidArgument, "query has %d heads, layer %d expects %d",
                 q.n_q_heads, shape_.layer, shape_.n_q_heads);
  SAAP_CHECK_FMT(q.pos > last_pos_, InvalidArgument,
                 "layer %d: query at position %lld after position %lld; H2O's state is per sequence (call reset())",
                 shape_.layer, (long long)q.pos, (long long)last_pos_);
  last_pos_ = q.pos;
  const int64_t k = budget_.topk(n);
  const int64_t recent = rules::h2o_recent(k);
  const int64_t heavy = k - recent;
  sel.clear(q.n_q_heads);
  bool any_evicted = false;
  for (int h = 0; h < q.n_q_heads; ++h) {
    acc_[size_t(h)].resize(size_t(n), 0.0f);
    auto& ev = evicted_[size_t(h)];
    ev.resize(size_t(n), 0);
    // Heavy-hitter candidates: every surviving position older than the recent half.
    candidates_.clear();
    for (int64_t p = 0; p < n - recent; ++p)
      if (!ev[size_t(p)]) candidates_.push_back(int32_t(p));
    if (int64_t(candidates_.size()) > heavy) {
      const auto& acc = acc_[size_t(h)];
      // Lightest first (ties: the older goes), the first size - heavy are evicted for good.
      auto lighter = [&acc](int32_t a, int32_t b) { return acc[size_t(a)] < acc[size_t(b)] || (acc[size_t(a)] == acc[size_t(b)] && a < b); };
      const auto cut = candidates_.begin() + (int64_t(candidates_.size()) - heavy);
      std::nth_element(candidates_.begin(), cut, candidates_.end(), lighter);
      for (auto it = candidates_.begin(); it != cut; ++it) ev[size_t(*it)] = 1;
      candidates_.erase(candidates_.begin(), cut);
      std::sort(candidates_.begin(), candidates_.end());
    }
    any_evicted = any_evicted || std::find(ev.begin(), ev.end(), uint8_t(1)) != ev.end();
    auto& list = sel.positions[size_t(h)];
    list = candidates_;
    for (int64_t p = std::max<int64_t>(n - recent, 0); p < n; ++p) list.push_back(int32_t(p));
  }
  if (!any_evicted && k >= n) {
    sel.clear(q.n_q_heads);
    sel.all = true;
  }
}

void H2OAttention::attend(const LayerKV& kv, const QueryView& q, const Selection& sel, float* out,
                          LookupStats& stats) {
  AttentionMethod::attend(kv, q, sel, out, stats);
  // This step's exact softmax weights over what was read, added to each position's score.
  const int64_t n = q.n_ctx();
  const int d = kv.head_dim;
  const int group = q.n_q_heads / kv.n_kv_heads;
  const float sc = scale();
  for (int h = 0; h < q.n_q_heads; ++h) {
    auto& acc = acc_[size_t(h)];
    if (int64_t(acc.size()) < n) acc.resize(size_t(n), 0.0f);
    candidates_.clear();
    if (sel.all) {
      for (int64_t p = 0; p < n; ++p) candidates_.push_back(int32_t(p));
    } else {
      candidates_ = sel.positions[size_t(h)];
    }
    weights_.resize(candidates_.size());
    const float* qh = q.q + int64_t(h) * d;
    dispatch_dtype(kv.dtype, [&](auto tag) {
      using T = decltype(tag);
      for (size_t i = 0; i < candidates_.size(); ++i) {
        const T* key = kv.key<T>(h / group, candidates_[i]);
        float s = 0.0f;
        for (int t = 0; t < d; ++t) s += qh[t] * to_float(key[t]);
        weights_[i] = s * sc;
      }
    });
    if (weights_.empty()) continue;
    const float m = *std::max_element(weights_.begin(), weights_.end());
    double sum = 0.0;
    for (float& w : weights_) sum += (w = std::exp(w - m));
    for (size_t i = 0; i < candidates_.size(); ++i) acc[size_t(candidates_[i])] += float(weights_[i] / sum);
  }
}

MethodFactory h2o_factory(const MethodSpec& spec, const ArtifactIdentity&) {
  const rules::Budget budget{spec.lookup, spec.budget_tokens};
  check_fraction(budget.lookup, "lookup");
  return [budget](const LayerShape& shape) { return std::make_unique<H2OAttention>(shape, budget); };
}

}  // namespace saap
