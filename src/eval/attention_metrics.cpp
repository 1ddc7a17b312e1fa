#include "saap/eval/attention_metrics.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "saap/core/error.h"

namespace saap {

AttentionMetrics& AttentionMetrics::operator+=(const AttentionMetrics& o) {
  samples += o.samples;
  recall += o.recall;
  jaccard += o.jaccard;
  mass += o.mass;
  rel_error += o.rel_error;
  selected += o.selected;
  return *this;
}

nlohmann::json AttentionMetrics::to_json() const {
  return {{"samples", samples},         {"recall", mean_recall()},       {"jaccard", mean_jaccard()},
          {"mass", mean_mass()},        {"rel_error", mean_rel_error()}, {"selected", mean_selected()}};
}

void measure_query(const LayerKV& kv, const QueryView& q, const Selection& sel, const float* out, int top_k,
                   std::vector<AttentionMetrics>& per_head) {
  SAAP_CHECK_FMT(kv.dtype == DType::F32, Unsupported, "attention metrics need an F32 cache, got %s",
                 dtype_name(kv.dtype));
  SAAP_CHECK_FMT(int(per_head.size()) == q.n_q_heads, InvalidArgument, "per_head holds %zu entries for %d heads",
                 per_head.size(), q.n_q_heads);
  SAAP_CHECK_FMT(top_k > 0, InvalidArgument, "top_k = %d must be positive", top_k);
  SAAP_CHECK_FMT(q.n_ctx() <= kv.length, InvalidArgument, "query position %lld beyond the %lld cached positions",
                 (long long)q.pos, (long long)kv.length);
  check_selection(q, sel);
  const int64_t n = q.n_ctx();
  const int D = kv.head_dim, group = q.n_q_heads / kv.n_kv_heads;
  const double scale = 1.0 / std::sqrt(double(D));
  std::vector<double> p(static_cast<size_t>(n));
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::vector<char> in_sel(static_cast<size_t>(n));
  for (int h = 0; h < q.n_q_heads; ++h) {
    const int kvh = h / group;
    const float* qh = q.q + int64_t(h) * D;
    double mx = -INFINITY;
    for (int64_t t = 0; t < n; ++t) {
      const float* k = kv.key<float>(kvh, t);
      double dot = 0;
      for (int i = 0; i < D; ++i) dot += double(qh[i]) * double(k[i]);
      p[size_t(t)] = dot * scale;
      mx = std::max(mx, p[size_t(t)]);
    }
    double sum = 0;
    for (auto& x : p) sum += (x = std::exp(x - mx));
    for (auto& x : p) x /= sum;

    std::fill(in_sel.begin(), in_sel.end(), char(sel.all));
    if (!sel.all)
      for (int32_t t : sel.positions[size_t(h)]) in_sel[size_t(t)] = 1;
    const int64_t n_sel = std::count(in_sel.begin(), in_sel.end(), char(1));

    // Ties broken by position, so the true top-k set is well defined.
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[size_t(a)] > p[size_t(b)] || (p[size_t(a)] == p[size_t(b)] && a < b); });
    const int64_t k = std::min<int64_t>(top_k, n);
    int64_t hits_k = 0, hits_sel = 0;
    for (int64_t i = 0; i < k; ++i) hits_k += in_sel[size_t(order[size_t(i)])];
    for (int64_t i = 0; i < n_sel; ++i) hits_sel += in_sel[size_t(order[size_t(i)])];

    double mass = 0;
    std::vector<double> dense(size_t(D), 0.0);
    for (int64_t t = 0; t < n; ++t) {
      if (in_sel[size_t(t)]) mass += p[size_t(t)];
      const float* v = kv.value<float>(kvh, t);
      for (int i = 0; i < D; ++i) dense[size_t(i)] += p[size_t(t)] * double(v[i]);
    }
    double err = 0, norm = 0;
    for (int i = 0; i < D; ++i) {
      const double d = double(out[int64_t(h) * D + i]) - dense[size_t(i)];
      err += d * d;
      norm += dense[size_t(i)] * dense[size_t(i)];
    }
    AttentionMetrics& m = per_head[size_t(h)];
    m.samples += 1;
    m.recall += double(hits_k) / double(k);
    // |S| = |T| = n_sel, so |S ∪ T| = 2 n_sel - |S ∩ T|; an empty selection agrees with nothing.
    m.jaccard += n_sel ? double(hits_sel) / double(2 * n_sel - hits_sel) : 0.0;
    m.mass += mass;
    m.rel_error += norm > 0 ? std::sqrt(err / norm) : std::sqrt(err);
    m.selected += double(n_sel) / double(n);
  }
}

}  // namespace saap
