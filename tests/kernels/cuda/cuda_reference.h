// Float64 references of what a partitioned index selects, computed from a test's inputs alone
// (router weights, queries, keys, partition sizes), never from a kernel's intermediate results.
// The budget, the order (ties to the lower id) and the fill come from selection_rules.h, the one
// statement of those rules; the scores are recomputed here in float64.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "saap/core/selection_rules.h"

namespace cutest {

// One query head's router in float64: W2 relu(W1 q + b1) + b2, the log density of each partition.
// w1 [H][D], b1 [H], w2 [C][H], b2 [C], q [D] -> [C].
inline std::vector<double> router_logits(const float* w1, const float* b1, const float* w2, const float* b2, int D,
                                         int H, int C, const float* q) {
  std::vector<double> hid(H), out(C);
  for (int u = 0; u < H; ++u) {
    double a = b1[u];
    for (int j = 0; j < D; ++j) a += double(w1[size_t(u) * D + j]) * q[j];
    hid[u] = std::max(0.0, a);
  }
  for (int c = 0; c < C; ++c) {
    double a = b2[c];
    for (int u = 0; u < H; ++u) a += double(w2[size_t(c) * H + u]) * hid[u];
    out[c] = a;
  }
  return out;
}

// Saap's group key of each partition: head g gives partition c the share n_c exp(s_gc) / Z_g of
// its attention (Z_g over partitions with keys), and the group ranks by the summed density
// log sum_g exp(s_gc) / Z_g. logits [G][C]; counts [C]; empty partitions get -inf.
inline std::vector<double> saap_group_keys(const std::vector<std::vector<double>>& logits,
                                           const std::vector<int64_t>& counts) {
  const size_t C = counts.size();
  std::vector<double> density(C, 0.0), key(C, -INFINITY);
  for (const auto& s : logits) {
    double mx = -INFINITY, z = 0;
    for (size_t c = 0; c < C; ++c)
      if (counts[c] > 0) mx = std::max(mx, s[c]);
    if (mx == -INFINITY) return key;
    for (size_t c = 0; c < C; ++c)
      if (counts[c] > 0) z += double(counts[c]) * std::exp(s[c] - mx);
    for (size_t c = 0; c < C; ++c)
      if (counts[c] > 0) density[c] += std::exp(s[c] - mx) / z;
  }
  for (size_t c = 0; c < C; ++c)
    if (counts[c] > 0) key[c] = std::log(density[c]);
  return key;
}

// The symmetric baseline's key: each head ranks the partitions by its score (higher first, ties
// to the lower id), the heads' rankings are merged round-robin, each partition at its first
// appearance; the key is minus that place. scores [G][C].
inline std::vector<double> round_robin_keys(const std::vector<std::vector<double>>& scores) {
  const int G = int(scores.size()), C = int(scores[0].size());
  std::vector<double> key(C, -INFINITY);
  for (int g = 0; g < G; ++g) {
    std::vector<int32_t> order(C);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return scores[g][a] > scores[g][b] || (scores[g][a] == scores[g][b] && a < b);
    });
    for (int r = 0; r < C; ++r) key[order[r]] = std::max(key[order[r]], -double(r * G + g));
  }
  return key;
}

// Which partitions the fill rule takes: ranked by key (rules::ranks_before), each taken whole if
// it fits what is left of `budget` (rules::fill_in_order). taken [C].
inline std::vector<uint8_t> fill_partitions(const std::vector<double>& key, const std::vector<int64_t>& counts,
                                            int64_t budget) {
  const int C = int(key.size());
  std::vector<int32_t> order(C);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return saap::rules::ranks_before(float(key[a]), a, float(key[b]), b);
  });
  std::vector<uint8_t> taken(C, 0);
  saap::rules::fill_in_order(order.data(), C, [&](int32_t c) { return counts[c]; }, budget, taken.data());
  return taken;
}

// Whether two non-empty partitions' keys lie within rel_tol of each other: their order is then
// decided by rounding (fp32 on the device, float64 here), and a selection may differ by it.
inline bool has_near_tie(const std::vector<double>& key, const std::vector<int64_t>& counts, double rel_tol) {
  std::vector<double> k;
  for (size_t c = 0; c < key.size(); ++c)
    if (counts[c] > 0 && std::isfinite(key[c])) k.push_back(key[c]);
  std::sort(k.begin(), k.end());
  for (size_t i = 1; i < k.size(); ++i)
    if (k[i] - k[i - 1] <= rel_tol * std::max({1e-30, std::abs(k[i]), std::abs(k[i - 1])})) return true;
  return false;
}

}  // namespace cutest
