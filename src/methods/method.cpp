#include "saap/methods/method.h"

#include <algorithm>
#include <cmath>

#include "saap/core/error.h"
#include "saap/kernels/cpu/attention.h"

namespace saap {

AttentionMethod::AttentionMethod(const LayerShape& shape) : shape_(shape) {
  SAAP_CHECK_FMT(shape.n_q_heads > 0 && shape.n_kv_heads > 0 && shape.n_q_heads % shape.n_kv_heads == 0,
                 InvalidArgument, "layer %d: n_q_heads = %d must be a positive multiple of n_kv_heads = %d",
                 shape.layer, shape.n_q_heads, shape.n_kv_heads);
  SAAP_CHECK_FMT(shape.head_dim > 0, InvalidArgument, "layer %d: head_dim = %d", shape.layer, shape.head_dim);
}

float AttentionMethod::scale() const { return 1.0f / std::sqrt(float(shape_.head_dim)); }

void AttentionMethod::check_place(const LayerKV& kv, int64_t begin, int64_t end, int64_t placed) const {
  SAAP_CHECK_FMT(kv.n_kv_heads == shape_.n_kv_heads && kv.head_dim == shape_.head_dim, InvalidArgument,
                 "layer %d: cache has n_kv_heads = %d, head_dim = %d; expected %d, %d", shape_.layer, kv.n_kv_heads,
                 kv.head_dim, shape_.n_kv_heads, shape_.head_dim);
  SAAP_CHECK_FMT(begin >= 0 && begin <= end && end <= kv.length, InvalidArgument,
                 "layer %d: placed range [%lld, %lld) outside the cache length %lld", shape_.layer, (long long)begin,
                 (long long)end, (long long)kv.length);
  SAAP_CHECK_FMT(begin <= placed, InvalidArgument,
                 "layer %d: placing from position %lld leaves a gap after the %lld positions placed", shape_.layer,
                 (long long)begin, (long long)placed);
}

void AttentionMethod::place(const LayerKV&, int64_t, int64_t, const float*) {}

void check_selection(const QueryView& q, const Selection& sel) {
  if (sel.all) return;
  SAAP_CHECK_FMT(int(sel.positions.size()) == q.n_q_heads, InvalidArgument,
                 "selection has %zu head lists for %d query heads", sel.positions.size(), q.n_q_heads);
  for (int h = 0; h < q.n_q_heads; ++h)
    for (int32_t p : sel.positions[h])
      SAAP_CHECK_FMT(p >= 0 && p <= q.pos, InvalidArgument,
                     "head %d selected position %d outside the causal prefix [0, %lld]", h, p, (long long)q.pos);
}

int64_t dense_bytes(const LayerKV& kv, int64_t n_ctx) { return n_ctx * kv.n_kv_heads * kv.token_bytes(); }

int64_t selection_kv_bytes(const LayerKV& kv, const QueryView& q, const Selection& sel) {
  if (sel.all) return dense_bytes(kv, q.n_ctx());
  const int group = q.n_q_heads / kv.n_kv_heads;
  int64_t positions = 0;
  std::vector<int32_t> merged;
  for (int kvh = 0; kvh < kv.n_kv_heads; ++kvh) {
    merged.clear();
    for (int g = 0; g < group; ++g) {
      const auto& list = sel.positions[size_t(kvh * group + g)];
      merged.insert(merged.end(), list.begin(), list.end());
    }
    std::sort(merged.begin(), merged.end());
    positions += std::unique(merged.begin(), merged.end()) - merged.begin();
  }
  return positions * kv.token_bytes();
}

void AttentionMethod::attend(const LayerKV& kv, const QueryView& q, const Selection& sel, float* out,
                             LookupStats& stats) {
  check_attention_shape(kv, q.n_q_heads, q.n_ctx());
  check_selection(q, sel);
  if (sel.all) {
    attention_decode(kv, q.q, q.n_q_heads, q.n_ctx(), scale(), out);
  } else {
    check_finite_queries(q.q, 1, q.n_q_heads, kv.head_dim);
    const int group = q.n_q_heads / kv.n_kv_heads;
    for (int h = 0; h < q.n_q_heads; ++h) {
      const auto& list = sel.positions[size_t(h)];
      attention_over_positions(kv, h / group, q.q + int64_t(h) * kv.head_dim, list.data(), int64_t(list.size()),
                               scale(), out + int64_t(h) * kv.head_dim);
    }
  }
  stats.queries += 1;
  stats.kv_bytes += selection_kv_bytes(kv, q, sel);
  stats.index_bytes += sel.index_bytes;
  stats.dense_bytes += dense_bytes(kv, q.n_ctx());
}

void AttentionMethod::forward(const LayerKV& kv, const QueryView& q, float* out, LookupStats& stats) {
  SAAP_CHECK_FMT(q.n_q_heads == shape_.n_q_heads, InvalidArgument, "query has %d heads, layer %d expects %d",
                 q.n_q_heads, shape_.layer, shape_.n_q_heads);
  scratch_.clear(q.n_q_heads);
  select(kv, q, scratch_);
  attend(kv, q, scratch_, out, stats);
}

}  // namespace saap
