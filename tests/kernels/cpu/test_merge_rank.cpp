// merged_rank (merge_rank.h), the step by which Saap's select kernel merges the rankings that the
// blocks of a thread block cluster sort of their slices of the partitions, run on the CPU: slices
// of ceil(C / K) partitions, each sorted by rules::ranks_before (slice-local ids, as the kernel's
// bitonic sort leaves them), merged, must give every partition the rank a single sort of all C
// gives (a permutation: ids[rank] = partition). Keys are drawn to reach ties across slices (few
// distinct values, -inf for empty partitions, +0 / -0), the last slice shorter than the others,
// one partition per slice, and K = 1 (the block is the cluster).
#include "saap/kernels/merge_rank.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

namespace saap {
namespace {

float draw_key(int kind, std::mt19937& rng) {
  switch (kind) {
    case 0: return std::normal_distribution<float>(0.f, 3.f)(rng);  // distinct
    case 1: return float(int(rng() % 4));                            // four values: ties across slices
    case 2: {                                                        // empty partitions, +0 / -0
      const int k = int(rng() % 4);
      return k == 0 ? -INFINITY : k == 1 ? 0.f : k == 2 ? -0.f : -1.f;
    }
    default: return 2.5f;  // one value: the ids alone decide
  }
}

void check(int C, int K, int kind, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> key(static_cast<size_t>(C));
  for (auto& k : key) k = draw_key(kind, rng);
  // The reference: one sort of all C.
  std::vector<int> want(static_cast<size_t>(C));
  std::iota(want.begin(), want.end(), 0);
  std::sort(want.begin(), want.end(), [&](int a, int b) { return rules::ranks_before(key[a], a, key[b], b); });
  // The slices, sorted each (keys in rank order, slice-local ids).
  const int slice = (C + K - 1) / K;
  int top_step = 1;
  while (top_step < slice) top_step <<= 1;
  std::vector<std::vector<float>> skeys(static_cast<size_t>(K));
  std::vector<std::vector<int16_t>> sids(static_cast<size_t>(K));
  for (int q = 0; q < K; ++q) {
    const int lo = std::min(C, q * slice), hi = std::min(C, lo + slice);
    std::vector<int16_t> local(static_cast<size_t>(hi - lo));
    std::iota(local.begin(), local.end(), int16_t(0));
    std::sort(local.begin(), local.end(),
              [&](int a, int b) { return rules::ranks_before(key[lo + a], lo + a, key[lo + b], lo + b); });
    sids[size_t(q)] = local;
    for (int16_t i : local) skeys[size_t(q)].push_back(key[lo + i]);
  }
  auto list = [&](int q) {
    return SortedList{skeys[size_t(q)].data(), sids[size_t(q)].data(), int(sids[size_t(q)].size()),
                      std::min(C, q * slice)};
  };
  std::vector<int> got(size_t(C), -1);
  for (int q = 0; q < K; ++q)
    for (int i = 0; i < int(sids[size_t(q)].size()); ++i) {
      const int id = std::min(C, q * slice) + sids[size_t(q)][size_t(i)];
      const int r = merged_rank(list, K, q, i, skeys[size_t(q)][size_t(i)], id, top_step);
      ASSERT_GE(r, 0);
      ASSERT_LT(r, C);
      ASSERT_EQ(got[size_t(r)], -1) << "rank " << r << " given twice (C=" << C << " K=" << K << ")";
      got[size_t(r)] = id;
    }
  EXPECT_EQ(got, want) << "C=" << C << " K=" << K << " keys " << kind;
}

TEST(MergeRank, EqualsOneSortOfAllPartitions) {
  uint32_t seed = 11;
  // The bench's C (32 ... 1024, and 4096), slices that do not divide C (1025, 300, 2000), one
  // partition per slice (C = K), and every cluster size the kernel launches.
  for (int C : {1, 5, 8, 32, 129, 256, 300, 1024, 1025, 2000, 4096})
    for (int K = 1; K <= kMaxMergeLists; ++K) {
      if (K > C) continue;
      for (int kind = 0; kind < 4; ++kind) check(C, K, kind, seed++);
    }
}

}  // namespace
}  // namespace saap
