#include "saap/kernels/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "saap/core/error.h"

namespace saap {
namespace {

constexpr int64_t kBlock = 64;      // keys scored together before the softmax update
constexpr int64_t kSplit = 2048;    // keys per parallel work item in decode (split-K)
constexpr int kMaxGroup = 16;       // query heads sharing one KV head

// Running softmax state of `group` query heads: max m, denominator l, unnormalized output acc.
struct OnlineSoftmax {
  int group = 0, dim = 0;
  std::vector<float> m, l, acc;
  OnlineSoftmax(int g, int d) : group(g), dim(d), m(g, -std::numeric_limits<float>::infinity()), l(g, 0.f), acc(size_t(g) * d, 0.f) {}

  // Merges another partial state over a disjoint key set (flash-decoding's combine step).
  void merge(const OnlineSoftmax& o) {
    for (int g = 0; g < group; ++g) {
      if (o.l[g] == 0.f) continue;
      const float mx = std::max(m[g], o.m[g]);
      const float a = l[g] == 0.f ? 0.f : std::exp(m[g] - mx), b = std::exp(o.m[g] - mx);
      for (int i = 0; i < dim; ++i) acc[size_t(g) * dim + i] = acc[size_t(g) * dim + i] * a + o.acc[size_t(g) * dim + i] * b;
      l[g] = l[g] * a + o.l[g] * b;
      m[g] = mx;
    }
  }
  void write(float* out, int64_t out_stride) const {
    for (int g = 0; g < group; ++g) {
      const float inv = l[g] > 0.f ? 1.f / l[g] : 0.f;
      for (int i = 0; i < dim; ++i) out[g * out_stride + i] = acc[size_t(g) * dim + i] * inv;
    }
  }
};

// Folds n keys/values of KV head `head` into `state` for `group` query heads q (stride q_stride).
// position(j) gives the cache position of the j-th key.
template <class T, class PositionFn>
void accumulate(const LayerKV& kv, int head, const float* q, int64_t q_stride, float scale, int64_t n,
                PositionFn position, OnlineSoftmax& state) {
  const int D = kv.head_dim, G = state.group;
  float scores[kMaxGroup][kBlock];
  for (int64_t base = 0; base < n; base += kBlock) {
    const int64_t count = std::min(kBlock, n - base);
    for (int64_t j = 0; j < count; ++j) {
      const T* k = kv.key<T>(head, position(base + j));
      for (int g = 0; g < G; ++g) {
        const float* qg = q + g * q_stride;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int i = 0; i < D; ++i) dot += qg[i] * to_float(k[i]);
        scores[g][j] = dot * scale;
      }
    }
    for (int g = 0; g < G; ++g) {
      float block_max = scores[g][0];
      for (int64_t j = 1; j < count; ++j) block_max = std::max(block_max, scores[g][j]);
      const float new_max = std::max(state.m[g], block_max);
      const float rescale = std::exp(state.m[g] - new_max);  // exp(-inf) = 0 on the first block
      float* acc = state.acc.data() + size_t(g) * D;
      for (int i = 0; i < D; ++i) acc[i] *= rescale;
      float sum = 0.f;
      for (int64_t j = 0; j < count; ++j) {
        const float p = std::exp(scores[g][j] - new_max);
        sum += p;
        const T* v = kv.value<T>(head, position(base + j));
#pragma omp simd
        for (int i = 0; i < D; ++i) acc[i] += p * to_float(v[i]);
      }
      state.l[g] = state.l[g] * rescale + sum;
      state.m[g] = new_max;
    }
  }
}

template <class T>
void decode_impl(const LayerKV& kv, const float* q, int n_q_heads, int64_t n_ctx, float scale, float* out) {
  const int D = kv.head_dim, group = n_q_heads / kv.n_kv_heads;
  const int64_t n_splits = (n_ctx + kSplit - 1) / kSplit;
  const int64_t items = int64_t(kv.n_kv_heads) * n_splits;
  std::vector<OnlineSoftmax> partial(size_t(items), OnlineSoftmax(group, D));
#pragma omp parallel for schedule(dynamic) if (items > 1 && n_ctx * n_q_heads > 8192)
  for (int64_t item = 0; item < items; ++item) {
    const int head = int(item / n_splits);
    const int64_t begin = (item % n_splits) * kSplit, count = std::min(kSplit, n_ctx - begin);
    accumulate<T>(kv, head, q + int64_t(head) * group * D, D, scale, count,
                  [begin](int64_t j) { return begin + j; }, partial[size_t(item)]);
  }
  for (int head = 0; head < kv.n_kv_heads; ++head) {
    OnlineSoftmax& total = partial[size_t(head) * n_splits];
    for (int64_t s = 1; s < n_splits; ++s) total.merge(partial[size_t(head * n_splits + s)]);
    total.write(out + int64_t(head) * group * D, D);
  }
}

template <class T>
void prefill_impl(const LayerKV& kv, const float* q, int n_q_heads, int64_t n_q, int64_t pos0, float scale,
                  float* out) {
  const int D = kv.head_dim, group = n_q_heads / kv.n_kv_heads;
  const int64_t items = n_q * kv.n_kv_heads;
  // Later rows see more keys: dynamic scheduling balances the causal triangle.
#pragma omp parallel for schedule(dynamic, 4) if (items > 1)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t row = item / kv.n_kv_heads;
    const int head = int(item % kv.n_kv_heads);
    OnlineSoftmax state(group, D);
    const int64_t offset = (row * n_q_heads + int64_t(head) * group) * D;
    accumulate<T>(kv, head, q + offset, D, scale, pos0 + row + 1, [](int64_t j) { return j; }, state);
    state.write(out + offset, D);
  }
}

}  // namespace

void check_attention_shape(const LayerKV& kv, int n_q_heads, int64_t n_ctx) {
  SAAP_CHECK_FMT(kv.n_kv_heads > 0 && kv.head_dim > 0, InvalidArgument, "cache has n_kv_heads = %d, head_dim = %d",
                 kv.n_kv_heads, kv.head_dim);
  SAAP_CHECK_FMT(n_q_heads > 0 && n_q_heads % kv.n_kv_heads == 0, InvalidArgument,
                 "n_q_heads = %d is not a positive multiple of the cache's n_kv_heads = %d", n_q_heads, kv.n_kv_heads);
  SAAP_CHECK_FMT(n_q_heads / kv.n_kv_heads <= kMaxGroup, Unsupported, "GQA group of %d query heads exceeds %d",
                 n_q_heads / kv.n_kv_heads, kMaxGroup);
  SAAP_CHECK_FMT(kv.length > 0, InvalidArgument, "%s", "the KV cache is empty: nothing to attend to");
  SAAP_CHECK_FMT(n_ctx >= 1 && n_ctx <= kv.length, InvalidArgument,
                 "context of %lld positions, but the cache holds %lld", (long long)n_ctx, (long long)kv.length);
}

void check_finite_queries(const float* q, int64_t n_rows, int n_q_heads, int head_dim) {
  const int64_t per_row = int64_t(n_q_heads) * head_dim;
  for (int64_t i = 0; i < n_rows * per_row; ++i)
    if (!std::isfinite(q[i]))
      SAAP_THROW_FMT(NonFinite, "non-finite query at row %lld, head %lld, dim %lld", (long long)(i / per_row),
                     (long long)(i % per_row / head_dim), (long long)(i % head_dim));
}

void attention_decode(const LayerKV& kv, const float* q, int n_q_heads, int64_t n_ctx, float scale, float* out) {
  check_attention_shape(kv, n_q_heads, n_ctx);
  check_finite_queries(q, 1, n_q_heads, kv.head_dim);
  dispatch_dtype(kv.dtype, [&](auto t) { decode_impl<decltype(t)>(kv, q, n_q_heads, n_ctx, scale, out); });
}

void attention_prefill(const LayerKV& kv, const float* q, int n_q_heads, int64_t n_q, int64_t pos0, float scale,
                       float* out) {
  SAAP_CHECK_FMT(n_q >= 1 && pos0 >= 0, InvalidArgument, "prefill of %lld queries from position %lld", (long long)n_q,
                 (long long)pos0);
  check_attention_shape(kv, n_q_heads, pos0 + n_q);
  check_finite_queries(q, n_q, n_q_heads, kv.head_dim);
  dispatch_dtype(kv.dtype, [&](auto t) { prefill_impl<decltype(t)>(kv, q, n_q_heads, n_q, pos0, scale, out); });
}

void attention_over_positions(const LayerKV& kv, int kv_head, const float* q, const int32_t* positions, int64_t n,
                              float scale, float* out) {
  SAAP_CHECK_FMT(kv_head >= 0 && kv_head < kv.n_kv_heads, InvalidArgument, "kv_head %d of %d", kv_head, kv.n_kv_heads);
  for (int64_t j = 0; j < n; ++j)
    SAAP_CHECK_FMT(positions[j] >= 0 && positions[j] < kv.length, InvalidArgument,
                   "selected position %d is outside the %lld cached positions", positions[j], (long long)kv.length);
  OnlineSoftmax state(1, kv.head_dim);
  dispatch_dtype(kv.dtype, [&](auto t) {
    accumulate<decltype(t)>(kv, kv_head, q, kv.head_dim, scale, n, [positions](int64_t j) { return positions[j]; },
                            state);
  });
  state.write(out, kv.head_dim);
}

}  // namespace saap
