// Quest: page metadata, the bound ranking and the budget, against a long-double reference that
// recomputes every page's bounds from the cached keys (no metadata, no method code).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>

#include "methods/reference.h"
#include "saap/core/error.h"
#include "saap/methods/quest.h"
#include "saap/methods/registry.h"

namespace saap {
namespace {

using testref::normal_vector;
using testref::random_cache;

template <class F>
void for_key(const LayerKV& kv, int h, int64_t p, F f) {
  dispatch_dtype(kv.dtype, [&](auto tag) {
    using T = decltype(tag);
    for (int i = 0; i < kv.head_dim; ++i) f(i, (long double)to_float(kv.key<T>(h, p)[i]));
  });
}

// What Quest should select for one query at prefix n, stated from the paper and the budget rule:
// pages of P positions cut at absolute positions, each scored (long double) by the sum over the
// group's heads of sum_i max(q_i min_i, q_i max_i) with min/max over its keys below n; the best
// first (ties to the lower page), each taken whole if its middle positions fit what is left.
std::set<int32_t> reference_selection(const LayerKV& kv, const float* q, int n_q_heads, int kv_head, int64_t n,
                                      const QuestParams& prm, bool* all) {
  const int d = kv.head_dim, group = n_q_heads / kv.n_kv_heads;
  const int64_t P = prm.page_size;
  const int64_t sink_end = std::min<int64_t>(prm.sinks, n);
  const int64_t window_begin = std::max<int64_t>(n - prm.window, sink_end);
  const int64_t total = prm.budget_tokens > 0
                            ? std::min<int64_t>(prm.budget_tokens, n)
                            : std::min<int64_t>(n, int64_t(std::ceil(prm.lookup * double(n) - 1e-9)));
  const int64_t budget = std::max<int64_t>(0, total - sink_end - (n - window_begin));
  *all = budget >= window_begin - sink_end;
  std::set<int32_t> out;
  if (*all) return out;
  for (int64_t p = 0; p < sink_end; ++p) out.insert(int32_t(p));
  for (int64_t p = window_begin; p < n; ++p) out.insert(int32_t(p));
  if (budget == 0) return out;
  struct Page {
    long double key;
    int64_t id, begin, end;
  };
  std::vector<Page> pages;
  for (int64_t c = sink_end / P; c * P < window_begin; ++c) {
    std::vector<long double> lo(size_t(d), INFINITY), hi(size_t(d), -INFINITY);
    for (int64_t p = c * P; p < std::min((c + 1) * P, n); ++p)
      for_key(kv, kv_head, p, [&](int i, long double k) {
        lo[size_t(i)] = std::min(lo[size_t(i)], k);
        hi[size_t(i)] = std::max(hi[size_t(i)], k);
      });
    long double key = 0;
    for (int g = 0; g < group; ++g)
      for (int i = 0; i < d; ++i) {
        const long double qi = q[(kv_head * group + g) * d + i];
        key += std::max(qi * lo[size_t(i)], qi * hi[size_t(i)]);
      }
    pages.push_back({key, c, std::max(c * P, sink_end), std::min((c + 1) * P, window_begin)});
  }
  std::sort(pages.begin(), pages.end(),
            [](const Page& a, const Page& b) { return a.key > b.key || (a.key == b.key && a.id < b.id); });
  int64_t used = 0;
  for (const Page& pg : pages) {
    if (used + (pg.end - pg.begin) > budget) continue;
    used += pg.end - pg.begin;
    for (int64_t p = pg.begin; p < pg.end; ++p) out.insert(int32_t(p));
  }
  return out;
}

struct Case {
  int n_q = 4, n_kv = 2, d = 32;
  int64_t n = 300;
  DType dtype = DType::F32;
  QuestParams prm;
};

// Builds the cache and the method, places all n positions in uneven chunks (partial pages grow
// across appends), checks every query position in `queries` against the reference: selection,
// index bytes, and exact attention over the selection.
void check_case(const Case& c, const std::vector<int64_t>& queries, uint32_t seed) {
  std::mt19937 rng(seed);
  KVCache cache = random_cache(c.n_kv, c.d, c.n, c.dtype, rng);
  const LayerKV kv = cache.layer(0);
  QuestAttention m({0, c.n_q, c.n_kv, c.d, 0}, c.prm);
  for (int64_t b = 0; b < c.n;) {
    const int64_t e = std::min<int64_t>(c.n, b + 1 + int64_t(rng() % 23));
    m.place(kv, b, e, nullptr);
    b = e;
  }
  const int group = c.n_q / c.n_kv;
  for (int64_t pos : queries) {
    SCOPED_TRACE("pos " + std::to_string(pos));
    const std::vector<float> q = normal_vector(size_t(c.n_q * c.d), rng);
    const QueryView qv{q.data(), nullptr, c.n_q, pos};
    Selection sel;
    m.select(kv, qv, sel);
    bool all = false;
    int64_t scored_pages = -1;
    for (int kvh = 0; kvh < c.n_kv; ++kvh) {
      const std::set<int32_t> want = reference_selection(kv, q.data(), c.n_q, kvh, pos + 1, c.prm, &all);
      ASSERT_EQ(sel.all, all);
      if (all) break;
      for (int g = 0; g < group; ++g) {
        const auto& got = sel.positions[size_t(kvh * group + g)];
        EXPECT_EQ(std::set<int32_t>(got.begin(), got.end()), want) << "kv head " << kvh << ", head " << g;
        EXPECT_EQ(got.size(), want.size()) << "a position selected twice";
      }
    }
    if (!all) {
      const int64_t n = pos + 1, P = c.prm.page_size;
      const int64_t sink_end = std::min<int64_t>(c.prm.sinks, n);
      const int64_t window_begin = std::max<int64_t>(n - c.prm.window, sink_end);
      scored_pages = (window_begin + P - 1) / P - sink_end / P;
      const int64_t total = c.prm.budget_tokens > 0 ? std::min<int64_t>(c.prm.budget_tokens, n)
                                                     : int64_t(std::ceil(c.prm.lookup * double(n) - 1e-9));
      if (total <= sink_end + (n - window_begin)) scored_pages = 0;  // nothing to choose, nothing read
      EXPECT_EQ(sel.index_bytes, c.n_kv * scored_pages * 2 * c.d * int64_t(dtype_size(c.dtype)));
    } else {
      EXPECT_EQ(sel.index_bytes, 0);
    }
    std::vector<float> out(size_t(c.n_q * c.d));
    LookupStats stats;
    m.attend(kv, qv, sel, out.data(), stats);
    for (int h = 0; h < c.n_q; ++h) {
      const std::vector<int32_t> pos_list = sel.all ? testref::all_positions(pos + 1) : sel.positions[size_t(h)];
      const std::vector<double> want = testref::attention(kv, q.data() + h * c.d, h / group, pos_list);
      // fp32 accumulation over a few hundred keys: ~1e-6 relative; 1e-4 leaves room, not bugs.
      EXPECT_LT(testref::max_rel_error(want, out.data() + h * c.d), 1e-4) << "head " << h;
    }
    EXPECT_EQ(stats.index_bytes, sel.index_bytes);
  }
}

std::vector<int64_t> every(int64_t from, int64_t to, int64_t step) {
  std::vector<int64_t> v;
  for (int64_t p = from; p < to; p += step) v.push_back(p);
  return v;
}

TEST(Quest, SelectionAndAttentionMatchTheReference) {
  Case c;
  c.prm = {0.2, 0, 4, 16, 16};
  check_case(c, every(0, c.n, 7), 11);
}

TEST(Quest, LowPrecisionCachesAndOtherPageSizes) {
  for (DType dt : {DType::F16, DType::BF16})
    for (int P : {1, 5, 32}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " page " + std::to_string(P));
      Case c;
      c.dtype = dt;
      c.n_q = 6;
      c.n_kv = 2;
      c.prm = {0.15, 0, 2, 8, P};
      check_case(c, every(50, c.n, 31), 12 + P);
    }
}

TEST(Quest, FixedTokenBudget) {
  Case c;
  c.n = 500;
  c.prm = {0.05, 96, 4, 16, 16};
  check_case(c, every(60, c.n, 23), 13);
}

// No window: the partial last page holds the query's own position and competes with the others.
TEST(Quest, PartialLastPageIsACandidate) {
  Case c;
  c.n = 203;  // 12 full pages of 16 and a partial one of 11
  c.prm = {0.3, 0, 0, 0, 16};
  check_case(c, {c.n - 1, 200, 193, 100}, 14);
}

// Queries placed ahead (a prefill places the whole chunk first): the page holding the query's
// position must be bounded by its keys up to the query only, or the choice would see the future.
TEST(Quest, PrefillBoundsIgnoreFuturePositions) {
  Case c;
  c.n = 256;
  c.prm = {0.3, 0, 0, 2, 16};
  check_case(c, every(20, c.n, 5), 15);
}

TEST(Quest, BudgetBelowSinksAndWindowReadsThemOnly) {
  Case c;
  c.n = 120;
  c.prm = {0.5, 0, 8, 48, 16};  // below 112 tokens the half budget cannot pay for sinks + window
  std::mt19937 rng(16);
  KVCache cache = random_cache(c.n_kv, c.d, c.n, c.dtype, rng);
  QuestAttention m({0, c.n_q, c.n_kv, c.d, 0}, c.prm);
  m.place(cache.layer(0), 0, c.n, nullptr);
  const std::vector<float> q = normal_vector(size_t(c.n_q * c.d), rng);
  Selection sel;
  m.select(cache.layer(0), {q.data(), nullptr, c.n_q, 99}, sel);  // n = 100: 50 tokens < 8 + 48
  ASSERT_FALSE(sel.all);
  std::vector<int32_t> want;
  for (int p = 0; p < 8; ++p) want.push_back(p);
  for (int p = 52; p < 100; ++p) want.push_back(p);
  for (const auto& l : sel.positions) EXPECT_EQ(l, want);
  EXPECT_EQ(sel.index_bytes, 0) << "no page is scored when none can be read";
  check_case(c, every(56, c.n, 3), 16);
}

TEST(Quest, SinglePage) {
  Case c;
  c.n = 16;
  c.prm = {0.5, 0, 1, 2, 16};  // one page: its 13 middle positions never fit the 5 tokens left
  check_case(c, every(0, c.n, 1), 17);
  c.prm = {0.5, 0, 1, 2, 64};
  c.n = 64;
  check_case(c, every(0, c.n, 3), 18);
}

TEST(Quest, MetadataIsTheElementWiseMinAndMaxAndSurvivesRefill) {
  std::mt19937 rng(19);
  const int d = 8;
  KVCache cache = random_cache(1, d, 40, DType::F32, rng);
  const LayerKV kv = cache.layer(0);
  QuestAttention m({0, 1, 1, d, 0}, {0.5, 0, 0, 0, 16});
  m.place(kv, 0, 7, nullptr);
  m.place(kv, 7, 40, nullptr);
  m.place(kv, 21, 40, nullptr);  // a truncated cache refilled from inside page 1
  ASSERT_EQ(m.pages(), 3);
  for (int64_t c = 0; c < 3; ++c)
    for (int i = 0; i < d; ++i) {
      float lo = INFINITY, hi = -INFINITY;
      for (int64_t p = c * 16; p < std::min<int64_t>(40, (c + 1) * 16); ++p) {
        lo = std::min(lo, kv.key<float>(0, p)[i]);
        hi = std::max(hi, kv.key<float>(0, p)[i]);
      }
      EXPECT_EQ(m.page_min(0, c)[i], lo) << "page " << c << " dim " << i;
      EXPECT_EQ(m.page_max(0, c)[i], hi) << "page " << c << " dim " << i;
    }
  EXPECT_THROW(m.place(kv, 41, 41, nullptr), Error);
  m.reset();
  EXPECT_EQ(m.pages(), 0);
}

TEST(Quest, BadParametersAreRefusedByName) {
  MethodSpec s;
  s.name = "quest";
  s.page_size = 0;
  try {
    make_method_factory(s, {});
    FAIL() << "page_size 0 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("page_size = 0"), std::string::npos) << e.what();
  }
  s.page_size = 16;
  s.budget_tokens = -1;
  EXPECT_THROW(make_method_factory(s, {}), Error);
  s.budget_tokens = 64;  // sinks 4 + window 64 fill it
  const MethodFactory f = make_method_factory(s, {});
  EXPECT_THROW(f({0, 2, 1, 8, 4096}), Error);
  s.budget_tokens = 0;
  s.lookup = 0.01;  // 41 tokens of 4096 < 68
  EXPECT_THROW(make_method_factory(s, {})({0, 2, 1, 8, 4096}), Error);
  s.lookup = 0.05;
  EXPECT_EQ(make_method_factory(s, {})({0, 2, 1, 8, 4096})->name(), "quest");
  EXPECT_EQ(s.describe(), "quest(lookup=0.05,sinks=4,window=64,page=16)");
  s.budget_tokens = 256;
  EXPECT_EQ(s.describe(), "quest(budget_tokens=256,sinks=4,window=64,page=16)");
  s.name = "loki";  // a method that takes fractions only must not ignore a fixed budget silently
  EXPECT_THROW(make_method_factory(s, {}), Error);
}

}  // namespace
}  // namespace saap
