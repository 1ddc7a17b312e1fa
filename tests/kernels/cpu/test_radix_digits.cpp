// radix_topk.cuh's select replayed on the CPU with the rules its kernels call (radix_digits.h),
// tile by tile as the grids run it, so that CI without a GPU checks the digit layout, the boundary
// search and the tie handling: pass 0's histogram (built per tile, as the fused score kernel or
// hist0_kernel does), the boundary of each pass (block_find's scan from the top digit), the filter
// that counts the keys above pass 0's bin and compacts the bin's keys per tile, the refine block's
// passes 1 and 2 over those candidates only and its per-tile counts, and the ordered write (the
// first `need` ties in position order). The result is compared
// with a sort by rules::ranks_before (higher first, ties to the lower position), exactly. Keys are
// built to reach every path: random normals, a few values with ±0 (ties across tiles), all equal
// (pass 0's bin holds every key), keys that differ only in their lowest mantissa bits (pass 2
// decides), infinities and huge and tiny values; n from 0 to several tiles and k = 0, 1, n / 4,
// n - 1, n and more. cuda_test_radix_topk runs the kernels themselves on the GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "saap/kernels/cuda/radix_digits.h"

namespace saap::cuda::radix_topk {
namespace {

constexpr int64_t kTile = 4096;     // radix_topk.cuh's tile: 256 threads x 16 positions
constexpr int kPerThread = 16;

// block_find: the boundary of `pass` from the row's histogram, scanned from the top digit.
RowState find(RowState s, int pass, const std::vector<int32_t>& hist) {
  if (s.done) return s;
  int32_t cum = 0;
  for (int bin = pass_bins(pass) - 1; bin >= 0; --bin) {
    if (boundary_in(s, cum, hist[size_t(bin)])) return take_bin(s, pass, uint32_t(bin), cum, hist[size_t(bin)]);
    cum += hist[size_t(bin)];
  }
  ADD_FAILURE() << "pass " << pass << ": no boundary for need " << s.need << " among " << cum << " keys";
  return s;
}

struct Trace {
  std::vector<int32_t> positions;
  int64_t candidates = 0;  // keys in pass 0's boundary bin (what passes 1 and 2 read)
};

// The select of one row, as the grids compute it.
Trace select_emulated(const std::vector<float>& keys, int64_t k) {
  const int64_t n = int64_t(keys.size());
  const int64_t tiles = (n + kTile - 1) / kTile;
  RowState s = row_start(n, k);
  // Pass 0: each tile's histogram of the top digit, added into the row's.
  std::vector<int32_t> hist(kBins, 0);
  if (!s.done)
    for (int64_t p = 0; p < n; ++p) ++hist[digit_of(rank_key(keys[size_t(p)]), 0)];
  s = find(s, 0, hist);
  // The filter: per tile, keys above the bin and the bin's keys in position order; pass 1's histogram.
  std::vector<int32_t> above_bin(size_t(tiles), 0);
  std::vector<std::vector<uint32_t>> cand(static_cast<size_t>(tiles));
  std::fill(hist.begin(), hist.end(), 0);
  Trace trace;
  if (!s.all && s.mask != 0)
    for (int64_t t = 0; t < tiles; ++t)
      for (int64_t p = t * kTile; p < std::min(n, (t + 1) * kTile); ++p) {
        const uint32_t u = rank_key(keys[size_t(p)]);
        above_bin[size_t(t)] += key_above(s, u);
        if (key_matches(s, u)) {
          cand[size_t(t)].push_back(u);
          if (!s.done) ++hist[digit_of(u, 1)];
          ++trace.candidates;
        }
      }
  s = find(s, 1, hist);
  // Pass 2 over the candidates that match the digits found.
  std::fill(hist.begin(), hist.end(), 0);
  if (!s.done)
    for (const auto& seg : cand)
      for (uint32_t u : seg)
        if (key_matches(s, u)) ++hist[digit_of(u, 2)];
  s = find(s, 2, hist);
  // Per-tile counts from the filter's count and the candidates.
  std::vector<int64_t> above(size_t(tiles), 0), ties(size_t(tiles), 0);
  for (int64_t t = 0; t < tiles; ++t) {
    above[size_t(t)] = above_bin[size_t(t)];
    for (uint32_t u : cand[size_t(t)]) {
      above[size_t(t)] += key_above(s, u);
      ties[size_t(t)] += key_matches(s, u);
    }
  }
  // The write: tile t's positions at the offset of the tiles before it; within the tile, each
  // "thread" of 16 positions takes its ties by ties_taken from its first tie's rank.
  const int64_t total = s.all ? n : s.need + std::accumulate(above.begin(), above.end(), int64_t(0));
  trace.positions.assign(size_t(std::max<int64_t>(total, 0)), -1);
  int64_t before_above = 0, before_ties = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    int64_t tie_rank = before_ties, out = s.all ? t * kTile : before_above + std::min<int64_t>(before_ties, s.need);
    for (int64_t e0 = t * kTile; e0 < std::min(n, (t + 1) * kTile); e0 += kPerThread) {
      const int64_t e1 = std::min(n, e0 + kPerThread);
      int my_ties = 0;
      for (int64_t p = e0; p < e1; ++p) my_ties += !s.all && (rank_key(keys[size_t(p)]) & s.mask) == s.prefix;
      int take_ties = ties_taken(s, tie_rank, my_ties);
      tie_rank += my_ties;
      for (int64_t p = e0; p < e1; ++p) {
        const uint32_t u = rank_key(keys[size_t(p)]);
        bool take = s.all || key_above(s, u);
        if (!s.all && key_matches(s, u) && take_ties > 0) {
          take = true;
          --take_ties;
        }
        if (take) {
          if (out >= total) {
            ADD_FAILURE() << "position " << p << " written past the row's " << total;
            return trace;
          }
          trace.positions[size_t(out++)] = int32_t(p);
        }
      }
    }
    before_above += above[size_t(t)];
    before_ties += ties[size_t(t)];
  }
  return trace;
}

std::vector<int32_t> reference(const std::vector<float>& keys, int64_t k) {
  std::vector<int32_t> order(keys.size());
  std::iota(order.begin(), order.end(), 0);
  const size_t take = size_t(std::max<int64_t>(0, std::min<int64_t>(k, int64_t(keys.size()))));
  std::partial_sort(order.begin(), order.begin() + take, order.end(), [&](int32_t a, int32_t b) {
    return rules::ranks_before(keys[size_t(a)], a, keys[size_t(b)], b);
  });
  order.resize(take);
  std::sort(order.begin(), order.end());
  return order;
}

enum class Kind { Normal, FewValues, AllEqual, LowBits, Extremes };

std::vector<float> make_keys(Kind kind, int64_t n, std::mt19937_64& rng) {
  std::vector<float> keys(static_cast<size_t>(n));
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int> pick(0, 5), small(0, 15);
  const float few[] = {-1.f, -0.f, 0.f, 0.5f, 2.f, 0.5f};
  for (auto& x : keys) switch (kind) {
      case Kind::Normal: x = nd(rng); break;
      case Kind::FewValues: x = few[pick(rng)]; break;
      case Kind::AllEqual: x = 1.25f; break;
      case Kind::LowBits: x = std::nextafter(1.f, 2.f) + float(small(rng)) * 1.1920929e-7f; break;
      case Kind::Extremes: {
        const int c = pick(rng);
        x = c == 0 ? INFINITY : c == 1 ? -INFINITY : c == 2 ? 3e38f : c == 3 ? -3e38f : nd(rng) * 1e-30f;
        break;
      }
    }
  return keys;
}

TEST(RadixDigits, LayoutCoversEveryBitOnce) {
  EXPECT_EQ(pass_mask(0) | pass_mask(1) | pass_mask(2), 0xffffffffu);
  EXPECT_EQ(pass_mask(0) & pass_mask(1), 0u);
  EXPECT_EQ(pass_mask(1) & pass_mask(2), 0u);
  EXPECT_EQ(pass_bins(0), kTopBins);
  // The key orders as the floats do, -0 as +0.
  EXPECT_EQ(rank_key(-0.f), rank_key(0.f));
  EXPECT_LT(rank_key(-INFINITY), rank_key(-3e38f));
  EXPECT_LT(rank_key(-1e-30f), rank_key(0.f));
  EXPECT_LT(rank_key(0.f), rank_key(1e-45f));
  EXPECT_LT(rank_key(1.f), rank_key(std::nextafter(1.f, 2.f)));
  EXPECT_LT(rank_key(3e38f), rank_key(INFINITY));
}

TEST(RadixDigits, SelectsAsTheRankingDoes) {
  std::mt19937_64 rng(20261203);
  const int64_t sizes[] = {0, 1, 100, kTile - 1, kTile, kTile + 1, 3 * kTile + 77, 16384, 40000};
  for (Kind kind : {Kind::Normal, Kind::FewValues, Kind::AllEqual, Kind::LowBits, Kind::Extremes})
    for (int64_t n : sizes) {
      const auto keys = make_keys(kind, n, rng);
      for (int64_t k : {int64_t(0), int64_t(1), int64_t(2), n / 4, n / 2 + 1, n - 1, n, n + 5}) {
        const auto got = select_emulated(keys, k);
        const auto want = reference(keys, k);
        EXPECT_EQ(got.positions, want) << "kind " << int(kind) << " n " << n << " k " << k;
      }
    }
}

// What the filter buys: for normal scores with k a quarter of n (Loki's k_f 0.25), pass 0's bin
// (sign, exponent and one mantissa bit) holds under 10% of the keys (P(0.5 < x < 0.75) = 8.2% at
// the 75th percentile 0.67), so passes 1 and 2 read that share instead of the row.
TEST(RadixDigits, FilterKeepsFewCandidatesOfNormalScores) {
  std::mt19937_64 rng(7);
  const int64_t n = 131072;
  const auto keys = make_keys(Kind::Normal, n, rng);
  const auto trace = select_emulated(keys, n / 4);
  EXPECT_EQ(trace.positions, reference(keys, n / 4));
  EXPECT_LT(double(trace.candidates) / double(n), 0.10);
  EXPECT_GT(trace.candidates, 0);
}

}  // namespace
}  // namespace saap::cuda::radix_topk
