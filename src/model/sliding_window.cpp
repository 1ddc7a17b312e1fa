#include "sliding_window.h"

#include <algorithm>

#include "saap/core/dtype.h"
#include "saap/core/error.h"
#include "saap/kernels/cpu/attention.h"

namespace saap {

LayerKV window_view(const LayerKV& kv, int64_t first) {
  SAAP_CHECK_FMT(first >= 0 && first < kv.length, InvalidArgument, "window from position %lld of %lld cached",
                 (long long)first, (long long)kv.length);
  LayerKV view = kv;
  const int64_t offset = first * kv.head_dim * int64_t(dtype_size(kv.dtype));
  view.keys = static_cast<const uint8_t*>(kv.keys) + offset;
  view.values = static_cast<const uint8_t*>(kv.values) + offset;
  view.length = kv.length - first;
  return view;
}

void attention_prefill_window(const LayerKV& kv, const float* q, int n_q_heads, int64_t n_q, int64_t pos0,
                              int64_t window, float scale, float* out) {
  SAAP_CHECK_FMT(window >= 1, InvalidArgument, "sliding window of %lld positions", (long long)window);
  if (pos0 + n_q <= window) return attention_prefill(kv, q, n_q_heads, n_q, pos0, scale, out);
  const int64_t row = int64_t(n_q_heads) * kv.head_dim;
  // One decode per query (its inner split loop runs serially inside this parallel loop).
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t i = 0; i < n_q; ++i) {
    const int64_t pos = pos0 + i, first = window_start(pos, window);
    attention_decode(window_view(kv, first), q + i * row, n_q_heads, pos + 1 - first, scale, out + i * row);
  }
}

SlidingWindowAttention::SlidingWindowAttention(const LayerShape& shape, int64_t window)
    : AttentionMethod(shape), window_(window) {
  SAAP_CHECK_FMT(window >= 1, InvalidArgument, "layer %d: sliding window of %lld positions", shape.layer,
                 (long long)window);
}

void SlidingWindowAttention::select(const LayerKV&, const QueryView& q, Selection& sel) {
  sel.clear(q.n_q_heads);
  const int64_t first = window_start(q.pos, window_);
  for (auto& list : sel.positions)
    for (int64_t p = first; p <= q.pos; ++p) list.push_back(int32_t(p));
}

void SlidingWindowAttention::attend(const LayerKV& kv, const QueryView& q, const Selection&, float* out,
                                    LookupStats& stats) {
  check_attention_shape(kv, q.n_q_heads, q.n_ctx());
  const int64_t first = window_start(q.pos, window_);
  attention_decode(window_view(kv, first), q.q, q.n_q_heads, q.n_ctx() - first, scale(), out);
  const int64_t read = dense_bytes(kv, q.n_ctx() - first);
  stats.queries += 1;
  stats.kv_bytes += read;
  stats.dense_bytes += read;
}

}  // namespace saap
