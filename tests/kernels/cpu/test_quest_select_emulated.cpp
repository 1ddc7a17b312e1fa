// Quest's GPU page selection run on the CPU through cuda_block_emulation.h: the split select
// (quest_select_row, the select kernel's body) and the fused select's gather and compact phases
// (quest_fused_select.cuh, every slice of a (b, h) a block, the phases in turn as the grid barrier
// orders them), both from what the score phase leaves. Below, the split select's description;
// the fused select is checked the same way, at 1 and 5 slices (more candidates in the K-th
// key's bin than kQuestCandCap take its slow exact path), and its scratch must be reset after.
// Quest's GPU page selection (quest_select_row, the select kernel's body) run on the CPU through
// cuda_block_emulation.h, so that CI without a GPU checks it: the pages it lists (sinks, window,
// the fill over the page keys, partial runs) against the fill rule replayed on the host over the
// same keys (saap::rules order, ties to the lower page), listed once each, taken pages in page
// order, the counters, and the score kernel's histogram zeroed behind it. Keys are built to reach
// each path: a bin taken whole or in part, both refinement passes, exact ties split by page id,
// +0 / -0, more pages than the shared cache (read from "global" memory), partial first and last
// pages, K = 0, budgets below sinks + window and above the middle. cuda_test_quest runs the same
// code on the GPU with the score kernel in front of it.
#include "kernels/cpu/cuda_block_emulation.h"  // before the kernel header
// (the kernel header after the emulation)
#include "saap/kernels/cuda/quest_fused_select.cuh"
#include "saap/kernels/cuda/quest_select.cuh"

#include <gtest/gtest.h>

#include <random>
#include <set>
#include <string>

namespace saap::cuda {
namespace {

struct Case {
  std::string name;
  int64_t n;
  int P, sinks, window;
  double lookup;
  int64_t tokens;
  int keys;     // how page keys are drawn (page_key below)
  int key_cap;  // keys the "shared memory" caches (kQuestCachedKeys on the GPU)
};

float page_key(int kind, int64_t r, std::mt19937& rng) {
  switch (kind) {
    case 0: return std::uniform_real_distribution<float>(-100.f, 100.f)(rng);  // both signs, many bins
    case 1: return float(int(rng() % 4)) - 1.f;                                 // four values: ties
    case 2: return 3.f;                                                         // one value
    case 3: return 1.f + float(rng() % 5000) * 0x1p-22f;  // one 16-bit bin, the low bits decide, ties
    case 4: {                                              // +0, -0 (equal) and small negatives
      const int k = int(rng() % 3);
      return k == 0 ? 0.f : k == 1 ? -0.f : -1e-3f * float(rng() % 7);
    }
    case 5: return 1000.f + float(rng() % 64) * 0x1p-14f;  // a few bins, crowded low bits
    case 7: return -3.f;                                   // one negative value: below +0's bits
    default: return float(r % 7);                          // periodic: ties at page distance 7
  }
}

// The cluster select's blocks (quest_select_row over a QuestSelectCluster) emulated: block R of
// kEmuCluster, its own instance of the function (so its own shared variables), its cluster
// barrier one barrier of every emulated thread, at(p, r) the same offset in block r's dynamic
// shared memory (where all that is read across blocks lives).
constexpr int kEmuCluster = 4;
struct EmuClusterState {
  std::unique_ptr<EmuBarrier> bar;
  std::vector<std::vector<float4>> dyn;  // [rank]: the block's dynamic shared memory
};
inline EmuClusterState* emu_cluster = nullptr;
template <int R>
struct EmuCluster {
  static constexpr bool kMany = true;
  int rank() const { return R; }
  int size() const { return kEmuCluster; }
  void sync() const { emu_cluster->bar->wait(); }
  // The two halves of the barrier as one wait at the second (stronger; no rank waits forever).
  void arrive() const {}
  void wait() const { sync(); }
  template <class V>
  V* at(V* p, int r) const {
    const char* mine = reinterpret_cast<const char*>(emu_cluster->dyn[size_t(R)].data());
    char* theirs = reinterpret_cast<char*>(emu_cluster->dyn[size_t(r)].data());
    return reinterpret_cast<V*>(theirs + (reinterpret_cast<const char*>(p) - mine));
  }
};
// slices: 0 runs the split select, -1 the cluster select (kEmuCluster blocks), else the fused
// select's phases over that many slices.
void check(const Case& c, uint32_t seed, int slices) {
  std::mt19937 rng(seed);
  const QuestStep step{c.P, c.sinks, c.window, c.lookup, c.tokens};
  int64_t budget;
  const quest::PageRange range = step.range(c.n, &budget);
  const rules::FixedReads& f = range.fixed;
  const int64_t max_pages = (c.n + c.P - 1) / c.P, stride = (max_pages + 3) / 4 * 4, max_chunks = max_pages + 2;
  const bool scored = budget > 0 && budget < f.middle();
  const int count = scored ? int(range.count()) : 0;
  // What the score kernel leaves: the keys (padding not zero: the select must not read it as
  // pages) and the top-16-bit histogram of the full pages' keys.
  std::vector<float> keys(size_t(stride), 12345.f);
  std::vector<uint32_t> hist(size_t(kQuestHistBins), 0u);
  for (int r = 0; r < count; ++r) {
    keys[size_t(r)] = page_key(c.keys, r, rng);
    if (range.size(range.first + r) == c.P) ++hist[quest_rank_bits(keys[size_t(r)]) >> kQuestHistShift];
  }
  int32_t seq_len = int32_t(c.n), chunk_count = -1, partial_count = -1, selected = -1, scored_pages = -1;
  std::vector<int32_t> rows(size_t(max_chunks), -1);
  std::vector<int2> parts(4, make_int2(-1, -1));
  const QuestFusedScratch reset{~0u, 0u, 0ull, 0u, 0u};
  QuestFusedScratch scratch = reset;
  if (slices == 0) {
    std::vector<float4> cache(size_t(std::max(1, c.key_cap / 4)));
    emu_run_block(kQuestSelectThreads, 0, [&] {
      quest_select_row(0, keys.data(), stride, &seq_len, step, hist.data(), max_chunks, rows.data(), &chunk_count,
                       parts.data(), &partial_count, &selected, &scored_pages, c.key_cap, cache.data());
    });
  } else if (slices < 0) {
    // Each block caches its slice as the host sizes it (at most the case's cap), then the
    // cluster's shared values. Two warps a block keep the emulation fast and still scan across
    // warps.
    constexpr int kEmuThreads = 64;
    const int64_t key4 = stride / 4;
    const int key_cap = int(std::min<int64_t>(c.key_cap, (key4 + kEmuCluster - 1) / kEmuCluster * 4));
    EmuClusterState st;
    st.bar = std::make_unique<EmuBarrier>(kEmuCluster * kEmuThreads);
    for (int r = 0; r < kEmuCluster; ++r)
      st.dyn.emplace_back(size_t(key_cap / 4) + sizeof(QuestClusterShared) / sizeof(float4) + 1,
                          make_float4(-7.f, -7.f, -7.f, -7.f));  // not zero: the kernel must zero what it sums
    emu_cluster = &st;
    static_assert(kEmuCluster == 4, "one case per rank below");
    emu_run_cluster(kEmuCluster, kEmuThreads, [&](int r) {
      auto run = [&](const auto& x) {
        quest_select_row(0, keys.data(), stride, &seq_len, step, hist.data(), max_chunks, rows.data(), &chunk_count,
                         parts.data(), &partial_count, &selected, &scored_pages, key_cap, st.dyn[size_t(r)].data(), x);
      };
      switch (r) {
        case 0: return run(EmuCluster<0>{});
        case 1: return run(EmuCluster<1>{});
        case 2: return run(EmuCluster<2>{});
        default: return run(EmuCluster<3>{});
      }
    });
    emu_cluster = nullptr;
  } else {
    // What the score phase adds to the scratch: the full keys' bit range, the full pages ranked
    // before each partial page (saap::rules order, on the host).
    const QuestFusedView view(c.n, step);
    for (int r = view.full_lo; r < view.full_hi; ++r) {
      const uint32_t u = quest_rank_bits(keys[size_t(r)]);
      scratch.u_lo = std::min(scratch.u_lo, u);
      scratch.u_hi = std::max(scratch.u_hi, u);
      for (int e = 0; e < 2; ++e) {
        const int se = view.small_r(e);
        if (se >= 0 && rules::ranks_before(keys[size_t(r)], r, keys[size_t(se)], se))
          scratch.before += 1ull << (32 * e);
      }
    }
    QuestFusedPlan plan{};
    std::vector<uint32_t> above(size_t(kQuestMaxSlices), 0xdeadu);
    std::vector<unsigned long long> cand(size_t(kQuestCandCap), 0xdeadull);
    // The phases use blockDim.x, not kQuestFusedThreads: two warps keep the emulation (a thread
    // per CUDA thread) fast and still scan across warps.
    constexpr int kEmuThreads = 64;
    for (int sl = 0; sl < slices; ++sl)
      emu_run_block(kEmuThreads, sl, [&] {
        quest_fused_gather(0, sl, slices, keys.data(), stride, &seq_len, step, hist.data(), &scratch, &plan,
                           above.data(), cand.data());
      });
    for (int sl = 0; sl < slices; ++sl)
      emu_run_block(kEmuThreads, sl, [&] {
        quest_fused_compact(0, sl, slices, keys.data(), stride, &seq_len, step, hist.data(), &scratch, &plan,
                            above.data(), cand.data(), max_chunks, rows.data(), &chunk_count, parts.data(),
                            &partial_count, &selected, &scored_pages);
      });
  }
  // The host's fill over the same keys.
  std::set<int64_t> want;
  if (budget >= f.middle()) {
    for (int64_t t = 0; t < c.n; ++t) want.insert(t);
  } else {
    for (int64_t t = 0; t < f.sink_end; ++t) want.insert(t);
    for (int64_t t = f.window_begin; t < c.n; ++t) want.insert(t);
    std::vector<int> order(static_cast<size_t>(count));
    for (int i = 0; i < count; ++i) order[size_t(i)] = i;
    std::sort(order.begin(), order.end(),
              [&](int a, int b) { return rules::ranks_before(keys[size_t(a)], a, keys[size_t(b)], b); });
    int64_t used = 0;
    for (int i : order) {
      const int64_t page = range.first + i, size = range.size(page);
      if (used + size > budget) continue;
      used += size;
      for (int64_t t = range.begin(page); t < range.finish(page); ++t) want.insert(t);
    }
  }
  std::set<int64_t> got;
  int64_t listed = 0;
  for (int i = 0; i < chunk_count; ++i)
    for (int j = 0; j < c.P; ++j) got.insert(rows[size_t(i)] + j), ++listed;
  for (int i = 0; i < partial_count; ++i)
    for (int j = 0; j < parts[size_t(i)].y; ++j) got.insert(parts[size_t(i)].x + j), ++listed;
  const std::string at = c.name + " (seed " + std::to_string(seed) + ", " +
                         (slices > 0   ? std::to_string(slices) + " slices"
                          : slices < 0 ? std::string("cluster select")
                                       : std::string("split select")) +
                         ")";
  EXPECT_EQ(got, want) << at;
  EXPECT_EQ(listed, int64_t(got.size())) << at << ": a row listed twice";
  EXPECT_EQ(selected, listed) << at;
  EXPECT_EQ(scored_pages, count) << at;
  for (int64_t i = std::max(0, chunk_count); i < max_chunks; ++i)
    ASSERT_EQ(rows[size_t(i)], -1) << at << ": chunk row " << i << " written past the list";
  // After the sinks' and the window's chunks, the taken pages in page order.
  if (budget < f.middle()) {
    const int64_t fixed_chunks = f.sink_end / c.P + (c.n - f.window_begin) / c.P;
    for (int64_t i = fixed_chunks + 1; i < chunk_count; ++i)
      EXPECT_LT(rows[size_t(i - 1)], rows[size_t(i)]) << at << ": chunk " << i;
  }
  EXPECT_EQ(std::count(hist.begin(), hist.end(), 0u), int64_t(hist.size())) << at << ": histogram not zeroed";
  EXPECT_TRUE(scratch.u_lo == reset.u_lo && scratch.u_hi == reset.u_hi && scratch.before == reset.before &&
              scratch.cand_n == reset.cand_n)
      << at << ": scratch not reset";
}

const Case kCases[] = {
    {"random keys, the bench's config, 1024 tokens", 16384, 16, 64, 256, 0.05, 1024, 0, kQuestCachedKeys},
    {"partial first and last pages, 5%", 20001, 16, 5, 37, 0.05, 0, 0, kQuestCachedKeys},
    {"four values: ties split by page id", 30000, 16, 4, 64, 0.05, 0, 1, kQuestCachedKeys},
    {"one value everywhere", 16000, 16, 3, 20, 0.1, 0, 2, kQuestCachedKeys},
    {"one value, more pages than kQuestCandCap: the cut among ties", 50000, 16, 3, 20, 0.1, 0, 2, kQuestCachedKeys},
    // A cluster block's loads past its slice read zeros (bits above every negative key); the
    // next block's pages must not count them (the H200 at 867f40c: rows written past the list).
    {"one negative value, partial pages: ties below zero", 16001, 16, 3, 20, 0.1, 0, 7, kQuestCachedKeys},
    {"one bin: both refinement passes and exact ties", 50000, 16, 4, 64, 0.07, 0, 3, kQuestCachedKeys},
    {"the same past the cache", 50000, 16, 4, 64, 0.07, 0, 3, 1024},
    {"+0 and -0 tie, negatives", 9000, 8, 3, 11, 0.2, 0, 4, kQuestCachedKeys},
    {"crowded bins, pages of 4, 30%", 40000, 4, 1, 3, 0.3, 0, 5, kQuestCachedKeys},
    {"the same past the cache", 40000, 4, 1, 3, 0.3, 0, 5, 4096},
    {"pages of 1: 39980 pages, past the cache", 40000, 1, 4, 16, 0.1, 0, 6, kQuestCachedKeys},
    {"budget below sinks + window", 1000, 16, 64, 256, 0.2, 0, 0, kQuestCachedKeys},
    {"budget covers the middle", 1000, 16, 4, 64, 0.95, 0, 0, kQuestCachedKeys},
    {"one page", 39, 64, 2, 4, 0.5, 0, 0, kQuestCachedKeys},
    {"two partial pages only", 30, 16, 5, 9, 0.9, 20, 0, kQuestCachedKeys},
    {"K = 0: the budget is below a page, a partial one fits", 2000, 16, 5, 7, 0.05, 20, 0, kQuestCachedKeys},
    {"pages of 7", 3001, 7, 3, 20, 0.1, 0, 0, kQuestCachedKeys},
};

TEST(QuestSelectEmulated, MatchesTheFillRuleOnEveryPath) {
  uint32_t seed = 1;
  for (const Case& c : kCases) check(c, seed++, 0);
}

// The cluster select (kEmuCluster blocks of one cluster) on the same cases.
TEST(QuestClusterSelectEmulated, MatchesTheFillRuleOnEveryPath) {
  uint32_t seed = 1;
  for (const Case& c : kCases) check(c, seed++, -1);
}

// The fused select's gather and compact phases on the same cases, at 1 and 5 slices per (b, h).
TEST(QuestFusedSelectEmulated, MatchesTheFillRuleOnEveryPath) {
  uint32_t seed = 1;
  for (const Case& c : kCases)
    for (int slices : {1, 5}) check(c, seed++, slices);
}

}  // namespace
}  // namespace saap::cuda
