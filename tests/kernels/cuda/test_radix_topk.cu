// radix_topk::select (the grid-wide top-k of the oracle's and Loki's per-head selection) against a
// host reference: each row's keys sorted by rules::ranks_before (higher first, ties to the lower
// position), the first k taken, compared as ascending position lists, exactly. Keys are chosen to
// break a radix select: random normals; a handful of values repeated across many tiles (ties
// everywhere, ±0 among them); all keys equal; keys that differ only in their lowest mantissa bits
// (the third pass decides); and very large / infinite values. Rows cover n = 0, 1, a partial tile and
// several tiles, and k = 0, 1, n - 1, n, > n. The group union's size and its list (positions
// ascending, each with the rows that took it) are compared to the union of the reference sets.
// The same call is repeated (state must not leak) and recorded as a CUDA graph, with each pass's
// find folded into the next grid and in a kernel of its own (rt::Finds).
// Last, the select's time over 32 to 256 rows of 16k to 512k keys, with each way of finding the
// digits, is printed (not checked; not under SAAP_TEST_QUICK).
#include <algorithm>
#include <cstdlib>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <utility>

#include "kernels/cuda/cuda_test_util.h"
#include "saap/core/selection_rules.h"
#include "saap/kernels/cuda/radix_topk.cuh"

using namespace saap;
namespace rt = saap::cuda::radix_topk;

namespace {

struct ArrayRows {
  const int32_t* lens;
  const int32_t* ks;
  __device__ int64_t n(int64_t row) const { return lens[row]; }
  __device__ int64_t k(int64_t row) const { return ks[row]; }
};

// The reference: row's k best positions, ascending.
std::vector<int32_t> reference(const float* keys, int64_t n, int64_t k) {
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  const int64_t take = std::max<int64_t>(0, std::min(k, n));
  std::partial_sort(order.begin(), order.begin() + take, order.end(),
                    [&](int32_t a, int32_t b) { return rules::ranks_before(keys[a], a, keys[b], b); });
  order.resize(size_t(take));
  std::sort(order.begin(), order.end());
  return order;
}

}  // namespace

int main() {
  cutest::require_gpu();
  cutest::Tally tally;
  cutest::Rng rng(cutest::test_seed());
  const int64_t stride = 3 * rt::kTile + 77;
  const int group = 3, n_rows = 18;
  enum Kind { Normal, FewValues, AllEqual, LowBits, Extremes };
  for (Kind kind : {Normal, FewValues, AllEqual, LowBits, Extremes}) {
    const char* name[] = {"normal", "few values", "all equal", "low bits", "extremes"};
    std::vector<float> keys(size_t(n_rows) * stride);
    std::normal_distribution<float> nd;
    std::uniform_int_distribution<int> pick(0, 5), small(0, 15);
    const float few[] = {-1.f, -0.f, 0.f, 0.5f, 2.f, 0.5f};
    for (auto& x : keys) {
      switch (kind) {
        case Normal: x = nd(rng); break;
        case FewValues: x = few[pick(rng)]; break;
        case AllEqual: x = 1.25f; break;
        case LowBits: x = std::nextafter(1.f, 2.f) + float(small(rng)) * 1.1920929e-7f; break;
        case Extremes: {
          const int c = pick(rng);
          x = c == 0 ? INFINITY : c == 1 ? -INFINITY : c == 2 ? 3e38f : c == 3 ? -3e38f : nd(rng) * 1e-30f;
          break;
        }
      }
    }
    // n and k per row: empty, one key, a partial tile, several tiles, the whole stride.
    std::uniform_int_distribution<int64_t> any_n(1, stride);
    std::vector<int32_t> lens(n_rows), ks(n_rows);
    for (int r = 0; r < n_rows; ++r) {
      const int64_t n = r == 0 ? 0 : r == 1 ? 1 : r == 2 ? 100 : r == 3 ? stride : any_n(rng);
      const int64_t choice = r % 6;
      const int64_t k = choice == 0 ? 0 : choice == 1 ? 1 : choice == 2 ? n - 1 : choice == 3 ? n : choice == 4 ? n + 5
                                                                                                            : 1 + int64_t(rng() % uint64_t(std::max<int64_t>(n, 1)));
      lens[size_t(r)] = int32_t(n);
      ks[size_t(r)] = int32_t(k);
    }
    auto dkeys = cutest::upload(keys);
    auto dlens = cutest::upload(lens);
    auto dks = cutest::upload(ks);
    saap::cuda::DeviceBuffer<int32_t> pos(size_t(n_rows) * stride), counts(n_rows), unions(n_rows / group),
        list_pos(size_t(n_rows / group) * stride);
    saap::cuda::DeviceBuffer<uint8_t> list_mask(list_pos.size());
    rt::Workspace ws;
    ws.ensure(n_rows, stride, n_rows / group);
    const ArrayRows rows{dlens.get(), dks.get()};
    for (int run = 0; run < 6; ++run) {  // plain, plain again (nothing leaks between calls), graph
      const int rep = run % 3;
      const rt::Finds finds = run < 3 ? rt::Finds::Folded : rt::Finds::Separate;
      cutest::poison(pos);
      cutest::poison(counts);
      cutest::poison(unions);
      cutest::poison(list_pos);
      cutest::poison(list_mask);
      auto call = [&](cudaStream_t st) {
        rt::select(dkeys.get(), stride, n_rows, group, rows, ws, pos.get(), counts.get(), unions.get(), st,
                   rt::UnionList{list_pos.get(), list_mask.get()}, finds);
      };
      if (rep < 2)
        call(0);
      else
        cutest::run_as_graph(call);
      SAAP_CU(cudaDeviceSynchronize());
      const auto hpos = cutest::download(pos), hcount = cutest::download(counts), hunion = cutest::download(unions);
      const auto hlist = cutest::download(list_pos);
      const auto hmask = cutest::download(list_mask);
      int64_t wrong_rows = 0, wrong_unions = 0, wrong_lists = 0;
      for (int gi = 0; gi < n_rows / group; ++gi) {
        std::set<int32_t> all;
        std::map<int32_t, uint8_t> took;  // position -> the group's rows that took it
        for (int g = 0; g < group; ++g) {
          const int r = gi * group + g;
          const auto want = reference(&keys[size_t(r) * stride], lens[size_t(r)], ks[size_t(r)]);
          all.insert(want.begin(), want.end());
          for (int32_t p : want) took[p] |= uint8_t(1u << g);
          const bool ok = hcount[size_t(r)] == int32_t(want.size()) &&
                          std::equal(want.begin(), want.end(), hpos.begin() + size_t(r) * stride);
          if (!ok) {
            ++wrong_rows;
            std::printf("  %s row %d (n %d, k %d): count %d, want %zu\n", name[kind], r, lens[size_t(r)],
                        ks[size_t(r)], hcount[size_t(r)], want.size());
          }
        }
        wrong_unions += hunion[size_t(gi)] != int32_t(all.size());
        // The union list: the same positions ascending, each with the rows that took it.
        bool list_ok = hunion[size_t(gi)] == int32_t(took.size());
        size_t j = 0;
        for (const auto& [p, m] : took) {
          if (!list_ok) break;
          list_ok = hlist[size_t(gi) * stride + j] == p && hmask[size_t(gi) * stride + j] == m;
          ++j;
        }
        wrong_lists += !list_ok;
      }
      const std::string tag = std::string(name[kind]) + (finds == rt::Finds::Folded ? ", finds folded" : ", find kernels") +
                              (rep == 0 ? "" : rep == 1 ? " (again)" : " (graph)") + ": ";
      tally.check(wrong_rows == 0, (tag + "rows whose selection differs from the reference").c_str(),
                  double(wrong_rows), 0);
      tally.check(wrong_unions == 0, (tag + "group unions differing from the reference").c_str(), double(wrong_unions),
                  0);
      tally.check(wrong_lists == 0, (tag + "union lists (positions, rows) differing from the reference").c_str(),
                  double(wrong_lists), 0);
    }
  }

  // Time: rows (query heads) in groups of 4, k = 5% of n, normal keys, with the finds folded, in
  // kernels of their own, and as select() chooses (Auto), back to back (the keys stay in L2 where
  // they fit). Not under SAAP_TEST_QUICK (scripts/gpu_run.sh's memcheck runs), where a time means
  // nothing.
  const char* quick = std::getenv("SAAP_TEST_QUICK");
  if (quick && std::string(quick) == "1") return tally.finish();
  const std::pair<int, int64_t> shapes[] = {{32, int64_t(16) << 10},  {32, int64_t(128) << 10},
                                            {64, int64_t(128) << 10}, {32, int64_t(512) << 10},
                                            {128, int64_t(128) << 10}, {64, int64_t(512) << 10},
                                            {256, int64_t(128) << 10}};
  for (const auto& shape : shapes) {
    const int rows_n = shape.first;
    const int64_t n = shape.second;
    auto keys = cutest::random_f32(rng, size_t(rows_n) * n);
    auto dkeys = cutest::upload(keys);
    std::vector<int32_t> lens(rows_n, int32_t(n)), ks(rows_n, int32_t(rules::tokens_for_fraction(0.05, n)));
    auto dlens = cutest::upload(lens);
    auto dks = cutest::upload(ks);
    saap::cuda::DeviceBuffer<int32_t> pos(size_t(rows_n) * n), counts(rows_n), unions(rows_n / 4);
    rt::Workspace ws;
    ws.ensure(rows_n, n);
    const ArrayRows rows{dlens.get(), dks.get()};
    cudaEvent_t a, b;
    SAAP_CU(cudaEventCreate(&a));
    SAAP_CU(cudaEventCreate(&b));
    const int reps = 20;
    std::printf("time: %d rows x %lld keys (a pass's grid: %lld blocks), k = 5%%:", rows_n, (long long)n,
                (long long)(rows_n * ((n + rt::kTile - 1) / rt::kTile)));
    // Three rounds in turn; the best round of each.
    const rt::Finds ways[] = {rt::Finds::Folded, rt::Finds::Separate, rt::Finds::Auto};
    float best[3] = {1e30f, 1e30f, 1e30f};
    for (int round = 0; round < 3; ++round)
      for (int w = 0; w < 3; ++w) {
        auto call = [&] {
          rt::select(dkeys.get(), n, rows_n, 4, rows, ws, pos.get(), counts.get(), unions.get(), 0, {}, ways[w]);
        };
        call();
        SAAP_CU(cudaEventRecord(a));
        for (int i = 0; i < reps; ++i) call();
        SAAP_CU(cudaEventRecord(b));
        SAAP_CU(cudaEventSynchronize(b));
        float ms = 0;
        SAAP_CU(cudaEventElapsedTime(&ms, a, b));
        best[w] = std::min(best[w], 1e3f * ms / reps);
      }
    std::printf(" folded %.1f us, kernels %.1f us, auto %.1f us\n", best[0], best[1], best[2]);
    SAAP_CU(cudaEventDestroy(a));
    SAAP_CU(cudaEventDestroy(b));
  }
  return tally.finish();
}
