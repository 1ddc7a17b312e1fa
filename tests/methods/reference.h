// Shared by the method tests: random caches and long-double references that do not go through
// the code under test (no kernel, no method).
#pragma once
#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "saap/core/kv_cache.h"
#include "saap/methods/method.h"

namespace saap::testref {

// The budget, restated here so that a change of the library's rounding shows: the smallest whole
// number of tokens >= f * n (f * n within 1e-9 of a whole number counts as that number, since
// 0.1 * 30 lands above 3 in binary), clamped to [min_tokens, n].
inline int64_t ceil_tokens(double f, int64_t n, int64_t min_tokens = 1) {
  const long double exact = (long double)f * (long double)n;
  const long double whole = std::round(exact);
  int64_t k = std::fabs(exact - whole) <= 1e-9L ? int64_t(whole) : int64_t(std::floor(exact)) + 1;
  return std::min<int64_t>(n, std::max<int64_t>(min_tokens, k));
}

inline std::vector<float> normal_vector(size_t n, std::mt19937& rng, float sigma = 1.0f) {
  std::normal_distribution<float> nd(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// A one-layer cache of n positions filled with the given keys (or Gaussian ones) and Gaussian values.
inline KVCache random_cache(int n_kv, int d, int64_t n, DType dtype, std::mt19937& rng,
                            const std::vector<float>& keys = {}) {
  KVCache cache({1, n_kv, d, n, dtype});
  const std::vector<float> k = keys.empty() ? normal_vector(size_t(n * n_kv * d), rng) : keys;
  const std::vector<float> v = normal_vector(size_t(n * n_kv * d), rng);
  cache.append(0, k.data(), v.data(), n);
  return cache;
}

template <class T>
long double key_at(const LayerKV& kv, int h, int64_t p, int i) {
  return to_float(kv.key<T>(h, p)[i]);
}

// Exact dot products of query head h with every prefix key, in long double.
inline std::vector<long double> exact_scores(const LayerKV& kv, const float* qh, int kv_head, int64_t n) {
  std::vector<long double> s(size_t(n), 0.0L);
  dispatch_dtype(kv.dtype, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t p = 0; p < n; ++p)
      for (int i = 0; i < kv.head_dim; ++i) s[size_t(p)] += (long double)qh[i] * key_at<T>(kv, kv_head, p, i);
  });
  return s;
}

// softmax(q.k * scale) v over `positions` of one KV head, in long double; also the weights.
inline std::vector<double> attention(const LayerKV& kv, const float* qh, int kv_head,
                                     const std::vector<int32_t>& positions, std::vector<long double>* weights = nullptr) {
  const long double scale = 1.0L / std::sqrt((long double)kv.head_dim);
  std::vector<long double> s(positions.size());
  long double m = -INFINITY;
  dispatch_dtype(kv.dtype, [&](auto tag) {
    using T = decltype(tag);
    for (size_t j = 0; j < positions.size(); ++j) {
      long double dot = 0;
      for (int i = 0; i < kv.head_dim; ++i) dot += (long double)qh[i] * key_at<T>(kv, kv_head, positions[j], i);
      s[j] = dot * scale;
      m = std::max(m, s[j]);
    }
  });
  long double z = 0;
  for (auto& x : s) z += (x = std::exp(x - m));
  std::vector<long double> out(size_t(kv.head_dim), 0.0L);
  dispatch_dtype(kv.dtype, [&](auto tag) {
    using T = decltype(tag);
    for (size_t j = 0; j < positions.size(); ++j)
      for (int i = 0; i < kv.head_dim; ++i)
        out[size_t(i)] += s[j] / z * (long double)to_float(kv.value<T>(kv_head, positions[j])[i]);
  });
  if (weights) {
    weights->resize(s.size());
    for (size_t j = 0; j < s.size(); ++j) (*weights)[j] = s[j] / z;
  }
  return std::vector<double>(out.begin(), out.end());
}

inline std::vector<int32_t> all_positions(int64_t n) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[size_t(i)] = int32_t(i);
  return p;
}

inline double jaccard(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  std::set<int32_t> sa(a.begin(), a.end()), sb(b.begin(), b.end());
  size_t inter = 0;
  for (int32_t x : sa) inter += sb.count(x);
  const size_t uni = sa.size() + sb.size() - inter;
  return uni ? double(inter) / double(uni) : 1.0;
}

// K+V bytes of a selection, union per KV head, counted independently of selection_kv_bytes.
inline int64_t union_bytes(const LayerKV& kv, const Selection& sel, int n_q_heads) {
  const int group = n_q_heads / kv.n_kv_heads;
  int64_t count = 0;
  for (int g = 0; g < kv.n_kv_heads; ++g) {
    std::set<int32_t> u;
    for (int h = g * group; h < (g + 1) * group; ++h) u.insert(sel.positions[size_t(h)].begin(), sel.positions[size_t(h)].end());
    count += int64_t(u.size());
  }
  return count * 2 * kv.head_dim * int64_t(dtype_size(kv.dtype));
}

// Checks a method's output against the long-double reference over its own selection.
inline double max_rel_error(const std::vector<double>& want, const float* got) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num = std::max(num, std::fabs(want[i] - double(got[i])));
    den = std::max(den, std::fabs(want[i]));
  }
  return num / std::max(den, 1e-30);
}

}  // namespace saap::testref
