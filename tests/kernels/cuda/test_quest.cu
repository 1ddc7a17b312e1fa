// Quest on the GPU vs float64 references computed from the inputs alone: page metadata (exact),
// page bounds, the selection (the fill rule replayed on the host over the device's keys must give
// the device's pages exactly; under float64 keys no page left out may beat one taken beyond a
// rounding tolerance), and attention over the selection. With the CPU library at hand (not on a
// CUDA-only build) the CPU method must choose the same pages and give the same output.
// Seed: cutest::test_seed() (SAAP_SEED reruns one), printed.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>

#include "kernels/cuda/cuda_test_util.h"
#include "saap/kernels/cuda/quest.h"
#ifdef SAAP_QUEST_CPU_PARITY
#include "saap/methods/quest.h"
#endif

using namespace saap;

namespace {

struct Case {
  const char* name;
  int batch, hq, hkv, d;
  DType t;
  std::vector<int32_t> lens;
  int appends;
  cuda::QuestConfig cfg;
  cuda::QuestBudget budget;
  // Keys repeat every key_period tokens (0: all random): pages holding the same tokens have the
  // same bound, so ties at the K-th key are exercised (1: every bound ties; ties go to the lower page).
  int key_period = 0;
  bool long_input = false;  // left out under SAAP_TEST_QUICK (compute-sanitizer runs it with that set)
};

// The float64 picture of one (b, h) at prefix n: candidate pages, their middle runs and keys.
struct RefPages {
  int64_t sink_end = 0, window_begin = 0, budget = 0;
  bool all = false;
  std::vector<int64_t> id, begin, end;
  std::vector<double> key;
};

RefPages ref_pages(const Case& c, const std::vector<uint16_t>& K, int64_t max_len, int bh, int64_t n,
                   const std::vector<float>& q) {
  const int D = c.d, G = c.hq / c.hkv, P = c.cfg.page_size;
  RefPages r;
  r.sink_end = std::min<int64_t>(c.cfg.sinks, n);
  r.window_begin = std::max<int64_t>(n - c.cfg.window, r.sink_end);
  const int64_t total = c.budget.tokens > 0 ? std::min<int64_t>(c.budget.tokens, n)
                                            : std::min<int64_t>(n, int64_t(std::ceil(c.budget.lookup * double(n) - 1e-9)));
  r.budget = std::max<int64_t>(0, total - r.sink_end - (n - r.window_begin));
  r.all = r.budget >= r.window_begin - r.sink_end;
  if (r.all || r.budget == 0) return r;
  for (int64_t p = r.sink_end / P; p * P < r.window_begin; ++p) {
    double key = 0;
    for (int j = 0; j < D; ++j) {
      double lo = INFINITY, hi = -INFINITY;
      for (int64_t t = p * P; t < std::min<int64_t>((p + 1) * P, n); ++t) {
        const double x = cutest::from_bits(K[(size_t(bh) * max_len + t) * D + j], c.t);
        lo = std::min(lo, x), hi = std::max(hi, x);
      }
      for (int g = 0; g < G; ++g) {
        const double qj = q[(size_t(bh) * G + g) * D + j];
        key += std::max(qj * lo, qj * hi);
      }
    }
    r.id.push_back(p);
    r.begin.push_back(std::max(p * P, r.sink_end));
    r.end.push_back(std::min((p + 1) * P, r.window_begin));
    r.key.push_back(key);
  }
  return r;
}

// Pages the fill rule takes, walking `keys` best first (ties to the lower page).
std::vector<char> fill(const RefPages& r, const std::vector<double>& keys) {
  std::vector<size_t> order(keys.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return keys[a] > keys[b] || (keys[a] == keys[b] && a < b); });
  std::vector<char> taken(keys.size(), 0);
  int64_t used = 0;
  for (size_t i : order)
    if (used + (r.end[i] - r.begin[i]) <= r.budget) taken[i] = 1, used += r.end[i] - r.begin[i];
  return taken;
}

}  // namespace

int main() {
  cutest::require_gpu();
  cutest::Tally tally;
  cutest::Rng rng(cutest::test_seed());
  const std::vector<Case> cases = {
      {"gqa4 bf16 d128 5%", 2, 8, 2, 128, DType::BF16, {5000, 1234}, 3, {16, 4, 64}, {0.05, 0}},
      {"gqa3 f16 d64 fixed 1024", 1, 9, 3, 64, DType::F16, {20000}, 2, {16, 4, 64}, {0.05, 1024}},
      {"partial last page, no window", 1, 4, 4, 64, DType::BF16, {1000}, 5, {16, 0, 0}, {0.1, 0}},
      {"budget below sinks + window", 1, 8, 2, 64, DType::BF16, {1000}, 1, {16, 64, 256}, {0.2, 0}},
      {"one page (P 64)", 1, 8, 1, 128, DType::BF16, {39}, 1, {64, 2, 4}, {0.5, 0}},
      {"page size 7, gqa8", 1, 16, 2, 128, DType::F16, {3001}, 4, {7, 3, 20}, {0.1, 0}},
      {"equal keys: ties to the lower page", 1, 4, 1, 64, DType::BF16, {4096}, 0, {16, 4, 64}, {0.1, 0}, 1},
      {"long, 2%", 1, 32, 8, 128, DType::BF16, {70001}, 1, {16, 4, 64}, {0.02, 0}},
      // The select kernel's paths: K-th key's 16-bit bin taken whole (K = one whole group of
      // 1000 equal pages), taken in part with exact ties ranked by id (8 of a group), ties across
      // its compaction tiles of 16384 pages (4500 of a 5000-page group, 4096 in the first tile),
      // every bound tied over two tiles, more pages than the select kernel caches in shared
      // memory (keys with period 3: ties too), and batch 3 with one sequence read whole.
      {"4 bounds x 1000 pages, K = 1000 (a whole bin)", 1, 8, 2, 64, DType::BF16, {64000}, 0, {16, 0, 0}, {0.05, 16000}, 64},
      {"4 bounds x 1000 pages, K = 1008 (8 of 1000 ties)", 1, 8, 2, 64, DType::BF16, {64000}, 0, {16, 0, 0}, {0.05, 16128}, 64},
      {"ties across tiles (P 4, 20000 pages)", 1, 4, 1, 64, DType::BF16, {80000}, 0, {4, 0, 0}, {0.05, 38000}, 16},
      {"one bound over two tiles (P 2)", 1, 4, 1, 64, DType::F16, {40000}, 0, {2, 3, 5}, {0.3, 0}, 1},
      {"P 1, 40000 pages (keys past the select's shared cache)", 1, 4, 2, 64, DType::BF16, {40000}, 1, {1, 4, 16}, {0.1, 0}, 3},
      {"batch 3, one read whole", 3, 32, 8, 128, DType::BF16, {12000, 17, 5001}, 2, {16, 4, 64}, {0.03, 0}},
      // The bench's head shape at batch 8 (64 (b, h): the fused select's slices shrink to a few
      // per (b, h)), lengths with partial last pages and one below sinks + window.
      {"32x8x128 batch 8, 2%", 8, 32, 8, 128, DType::BF16, {16384, 9001, 12345, 300, 16383, 7777, 20000, 4097}, 1,
       {16, 64, 256}, {0.02, 0}},
      {"gemma-3 d256 gqa4 5%", 1, 4, 1, 256, DType::BF16, {4000}, 3, {16, 4, 64}, {0.05, 0}},
      // The bulk ring's pieces (SparseAttendTuning bulk=S; stages of 64 rows with mma, 32 at d128
      // and 64 at d64 without): chunks that straddle stage boundaries beside partial runs (P 24),
      // chunks of two whole stages (P 128), and splits of more chunks than a ring block stages in
      // shared memory (kQuestRingChunks = 256: P 1, 6144 tokens a (b, h) over 64 (b, h), 4-16
      // splits each), whose further chunk rows the producer reads from L2.
      {"ring: P 24 straddles stages, partial runs", 2, 8, 2, 128, DType::BF16, {5003, 777}, 2, {24, 5, 30}, {0.1, 0}},
      {"ring: P 128, chunks of two stages", 1, 8, 2, 64, DType::BF16, {9000}, 1, {128, 4, 64}, {0.1, 0}},
      {"ring: P 1, more chunks a split than staged", 8, 8, 8, 64, DType::BF16,
       {20000, 20000, 19999, 20000, 18000, 20000, 20000, 17001}, 1, {1, 4, 16}, {0.05, 6144}},
      {"d256 f16 gqa2 fixed 512", 2, 4, 2, 256, DType::F16, {2000, 777}, 2, {16, 4, 64}, {0.05, 512}},
      // The benchmark's configuration (pages of 16, sinks 64, window 256) at batch 8 and at the
      // lengths issue 10 is judged at: 128k, and 512k (32768 pages: the select kernel's shared
      // cache exactly full), with fixed budgets and 5%. One KV head of 64 keeps the host's float64
      // references affordable.
      {"batch 8, fixed 1024", 8, 8, 2, 64, DType::BF16, {16384, 16000, 9001, 16384, 12345, 70, 16383, 5000}, 1,
       {16, 64, 256}, {0.05, 1024}},
      {"128k, fixed 2048", 1, 4, 1, 64, DType::BF16, {131072 + 7}, 1, {16, 64, 256}, {0.05, 2048}, 0, true},
      {"128k, 5%", 1, 4, 1, 64, DType::BF16, {131072 - 3}, 2, {16, 64, 256}, {0.05, 0}, 0, true},
      {"512k, fixed 1024", 1, 4, 1, 64, DType::BF16, {524288 - 9}, 1, {16, 64, 256}, {0.05, 1024}, 0, true},
      {"512k, 5%", 1, 4, 1, 64, DType::BF16, {524288 - 1}, 1, {16, 64, 256}, {0.05, 0}, 0, true},
      // Batch 32 (issue 11's largest), ragged lengths, some below sinks + window.
      {"batch 32, 5%", 32, 8, 2, 64, DType::BF16, cutest::spread_lengths(32, 100, 4000), 1, {16, 16, 64}, {0.05, 0}},
  };
  const bool quick = std::getenv("SAAP_TEST_QUICK") != nullptr;
  for (const Case& c : cases) {
    const std::string tag = std::string(c.name) + ": ";
    if (quick && c.long_input) {
      std::printf("%sleft out under SAAP_TEST_QUICK\n", tag.c_str());
      continue;
    }
    cuda::DecodeShape s{c.batch, c.hq, c.hkv, c.d, c.t};
    const int64_t src_len = *std::max_element(c.lens.begin(), c.lens.end());
    const int64_t max_len = src_len + c.appends;
    const int bh_n = c.batch * c.hkv, D = c.d, G = c.hq / c.hkv, P = c.cfg.page_size;
    cuda::QuestIndex idx(s, max_len, c.cfg);
    std::vector<uint16_t> allk(size_t(bh_n) * max_len * D), allv(allk.size());
    auto hk = cutest::random_kv(rng, size_t(bh_n) * src_len * D, c.t), hv = cutest::random_kv(rng, hk.size(), c.t);
    if (c.key_period > 0)
      for (int bh = 0; bh < bh_n; ++bh)
        for (size_t i = 0; i < size_t(src_len) * D; ++i)
          hk[size_t(bh) * src_len * D + i] = hk[size_t(bh) * src_len * D + i % (size_t(c.key_period) * D)];
    for (int bh = 0; bh < bh_n; ++bh) {
      std::copy_n(&hk[size_t(bh) * src_len * D], src_len * D, &allk[size_t(bh) * max_len * D]);
      std::copy_n(&hv[size_t(bh) * src_len * D], src_len * D, &allv[size_t(bh) * max_len * D]);
    }
    auto dk = cutest::upload(hk);
    auto dv = cutest::upload(hv);
    idx.store(dk.get(), dv.get(), src_len, c.lens);
    for (int a = 0; a < c.appends; ++a) {
      auto nk = cutest::random_kv(rng, size_t(bh_n) * D, c.t), nv = cutest::random_kv(rng, size_t(bh_n) * D, c.t);
      for (int bh = 0; bh < bh_n; ++bh) {
        const size_t t = c.lens[bh / c.hkv] + a;
        std::copy_n(&nk[size_t(bh) * D], D, &allk[(bh * max_len + t) * D]);
        std::copy_n(&nv[size_t(bh) * D], D, &allv[(bh * max_len + t) * D]);
      }
      auto dnk = cutest::upload(nk);
      auto dnv = cutest::upload(nv);
      idx.append(dnk.get(), dnv.get());
    }
    // Metadata: the element-wise min and max of each page's keys, exactly (they are stored values).
    std::vector<uint16_t> meta(size_t(bh_n) * idx.max_pages() * 2 * D);
    SAAP_CU(cudaMemcpy(meta.data(), idx.meta(), meta.size() * 2, cudaMemcpyDeviceToHost));
    int64_t meta_errors = 0;
    for (int bh = 0; bh < bh_n; ++bh) {
      const int64_t n = c.lens[bh / c.hkv] + c.appends;
      for (int64_t p = 0; p * P < n; ++p)
        for (int j = 0; j < D; ++j) {
          double lo = INFINITY, hi = -INFINITY;
          for (int64_t t = p * P; t < std::min<int64_t>(n, (p + 1) * P); ++t) {
            const double x = cutest::from_bits(allk[(size_t(bh) * max_len + t) * D + j], c.t);
            lo = std::min(lo, x), hi = std::max(hi, x);
          }
          const uint16_t* m = &meta[(size_t(bh) * idx.max_pages() + p) * 2 * D];
          meta_errors += cutest::from_bits(m[j], c.t) != lo || cutest::from_bits(m[D + j], c.t) != hi;
        }
    }
    tally.check(meta_errors == 0, (tag + "page min/max errors (partial last pages included)").c_str(),
                double(meta_errors), 0);
    const auto ctr0 = idx.counters();
    bool len_ok = true;
    for (int bh = 0; bh < bh_n; ++bh) len_ok &= ctr0.seq_len[bh] == c.lens[bh / c.hkv] + c.appends;
    tally.check(len_ok, (tag + "lengths after appends").c_str(), len_ok, 1);

    // Twice: what one select leaves behind must not leak into the next.
    for (int rep = 0; rep < 2; ++rep) {
      auto q = cutest::random_f32(rng, size_t(c.batch) * c.hq * D, 1.f);
      auto dq = cutest::upload(q);
      cuda::DeviceBuffer<float> dout(q.size());
      cutest::poison(dout);
      cuda::SplitWorkspace ws;
      const float scale = 1.f / std::sqrt(float(D));
      idx.select(dq.get(), c.budget);
      idx.attend(dq.get(), scale, dout.get(), ws);
      SAAP_CU(cudaDeviceSynchronize());
      auto out = cutest::download(dout);
      std::vector<float> keys(size_t(bh_n) * idx.key_stride());
      std::vector<int32_t> rows(size_t(bh_n) * idx.max_chunks()), nch(bh_n), parts(size_t(bh_n) * 8), npart(bh_n);
      SAAP_CU(cudaMemcpy(keys.data(), idx.page_keys(), keys.size() * 4, cudaMemcpyDeviceToHost));
      SAAP_CU(cudaMemcpy(rows.data(), idx.chunk_rows(), rows.size() * 4, cudaMemcpyDeviceToHost));
      SAAP_CU(cudaMemcpy(nch.data(), idx.chunk_count(), nch.size() * 4, cudaMemcpyDeviceToHost));
      SAAP_CU(cudaMemcpy(parts.data(), idx.partials(), parts.size() * 4, cudaMemcpyDeviceToHost));
      SAAP_CU(cudaMemcpy(npart.data(), idx.partial_count(), npart.size() * 4, cudaMemcpyDeviceToHost));
      const auto ctr = idx.counters();
      std::vector<double> ref(out.size());
      double key_err = 0;
      int64_t sel_errors = 0, order_errors = 0, dup_errors = 0, count_errors = 0, scored_errors = 0;
      std::vector<std::set<int64_t>> gpu_sel(bh_n);
      std::vector<RefPages> refs;
      for (int bh = 0; bh < bh_n; ++bh) {
        const int64_t n = c.lens[bh / c.hkv] + c.appends;
        refs.push_back(ref_pages(c, allk, max_len, bh, n, q));
        const RefPages& r = refs.back();
        // What the device reads.
        int64_t listed = 0;
        for (int i = 0; i < nch[bh]; ++i)
          for (int j = 0; j < P; ++j) gpu_sel[bh].insert(rows[size_t(bh) * idx.max_chunks() + i] + j), ++listed;
        for (int i = 0; i < npart[bh]; ++i) {
          const int32_t* p = &parts[(size_t(bh) * 4 + i) * 2];
          for (int j = 0; j < p[1]; ++j) gpu_sel[bh].insert(p[0] + j), ++listed;
        }
        dup_errors += listed != int64_t(gpu_sel[bh].size());
        count_errors += ctr.selected_tokens[bh] != listed;
        // What it should read: everything, or sinks + window + the fill over the keys.
        std::set<int64_t> want;
        const int64_t count = int64_t(r.id.size());
        scored_errors += ctr.scored_pages[bh] != count;
        if (r.all) {
          for (int64_t t = 0; t < n; ++t) want.insert(t);
        } else {
          for (int64_t t = 0; t < r.sink_end; ++t) want.insert(t);
          for (int64_t t = r.window_begin; t < n; ++t) want.insert(t);
          std::vector<double> dev_keys(static_cast<size_t>(count));
          double scale_sum = 0;
          for (int64_t i = 0; i < count; ++i) {
            dev_keys[size_t(i)] = keys[size_t(bh) * idx.key_stride() + i];
            key_err = std::max(key_err, std::fabs(dev_keys[size_t(i)] - r.key[size_t(i)]) / (1 + std::fabs(r.key[size_t(i)])));
            scale_sum = std::max(scale_sum, std::fabs(r.key[size_t(i)]));
          }
          // The device's own keys through the host's fill rule: the device's pages, exactly.
          const std::vector<char> taken = fill(r, dev_keys);
          // Under float64 keys: no full page left out above a full page taken, beyond rounding
          // (fp32 sums of 2 G D terms: 1e-5 of the largest key is far above their error).
          double min_taken = INFINITY, max_left = -INFINITY;
          for (int64_t i = 0; i < count; ++i) {
            if (taken[size_t(i)])
              for (int64_t t = r.begin[size_t(i)]; t < r.end[size_t(i)]; ++t) want.insert(t);
            if (r.end[size_t(i)] - r.begin[size_t(i)] != P) continue;
            (taken[size_t(i)] ? min_taken : max_left) = taken[size_t(i)] ? std::min(min_taken, r.key[size_t(i)])
                                                                          : std::max(max_left, r.key[size_t(i)]);
          }
          if (max_left > min_taken + 1e-5 * (1 + scale_sum)) ++order_errors;
        }
        sel_errors += want != gpu_sel[bh];
        // float64 attention over the device's selection, for every head of the group.
        const std::vector<int64_t> pos(gpu_sel[bh].begin(), gpu_sel[bh].end());
        for (int g = 0; g < G; ++g) {
          const size_t row = (size_t(bh) * G + g) * D;
          cutest::ref_attention(&q[row], &allk[size_t(bh) * max_len * D], &allv[size_t(bh) * max_len * D], pos, D, scale,
                                c.t, &ref[row]);
        }
      }
      const std::string rt = tag + "select " + std::to_string(rep) + ": ";
      tally.check(key_err < 1e-5, (rt + "page bound rel error vs float64").c_str(), key_err, 1e-5);
      tally.check(sel_errors == 0, (rt + "(b,h) whose pages differ from the fill over the device keys").c_str(),
                  double(sel_errors), 0);
      tally.check(order_errors == 0, (rt + "(b,h) leaving out a page that beats a taken one (float64)").c_str(),
                  double(order_errors), 0);
      tally.check(dup_errors == 0, (rt + "(b,h) reading a row twice").c_str(), double(dup_errors), 0);
      tally.check(count_errors + scored_errors == 0, (rt + "selected-token / scored-page counter errors").c_str(),
                  double(count_errors + scored_errors), 0);
      // fp32 accumulation in base 2 over 16-bit K/V: ~1e-6; 1e-4 leaves room, not bugs.
      const double err = cutest::rel_error(out, ref);
      tally.check(err < 1e-4, (rt + "attention rel error vs float64").c_str(), err, 1e-4);
      // Every other attend tuning the benchmark compares, over the same selection.
      const auto tunings = cuda::sparse_attend_candidates();
      for (size_t ti = 1; ti < tunings.size(); ++ti) {
        cutest::poison(dout);
        idx.attend(dq.get(), scale, dout.get(), ws, 0, tunings[ti]);
        SAAP_CU(cudaDeviceSynchronize());
        const double terr = cutest::rel_error(cutest::download(dout), ref);
        tally.check(terr < 1e-4, (rt + "attention (" + tunings[ti].name() + ") rel error vs float64").c_str(), terr,
                    1e-4);
      }
      {  // select + attend recorded as a CUDA graph (capture fails if either synchronises), after
         // the selects above: the same pages and a bit-identical output (what a select leaves
         // behind for the next, its histogram zeroed, must not change the next one).
        cutest::poison(dout);
        cutest::run_as_graph([&](cudaStream_t st) {
          idx.select(dq.get(), c.budget, st);
          idx.attend(dq.get(), scale, dout.get(), ws, st);
        });
        std::vector<int32_t> grows(rows.size()), gnch(nch.size());
        SAAP_CU(cudaMemcpy(grows.data(), idx.chunk_rows(), grows.size() * 4, cudaMemcpyDeviceToHost));
        SAAP_CU(cudaMemcpy(gnch.data(), idx.chunk_count(), gnch.size() * 4, cudaMemcpyDeviceToHost));
        bool same = gnch == nch && cutest::download(dout) == out;
        for (int bh = 0; same && bh < bh_n; ++bh)
          same = std::equal(rows.begin() + size_t(bh) * idx.max_chunks(),
                            rows.begin() + size_t(bh) * idx.max_chunks() + nch[bh],
                            grows.begin() + size_t(bh) * idx.max_chunks());
        tally.check(same, (rt + "graph-captured select + attend == plain (chunks and output)").c_str(), same, 1);
        // The fused combine captured too: its tickets must come back to zero inside the graph.
        cuda::SparseAttendTuning fused;
        fused.fused = true;
        cutest::poison(dout);
        cutest::run_as_graph([&](cudaStream_t st) {
          idx.select(dq.get(), c.budget, st);
          idx.attend(dq.get(), scale, dout.get(), ws, st, fused);
        });
        const double ferr = cutest::rel_error(cutest::download(dout), ref);
        tally.check(ferr < 1e-4, (rt + "graph-captured select + fused attend rel error vs float64").c_str(), ferr,
                    1e-4);
      }
      // The fused select (one cooperative kernel), the cluster select (the select kernel over a
      // cluster of blocks per (b, h): up to 16 here, every case has at most 64 (b, h)) and the
      // select kernel of one block per (b, h), each forced, on the same query as the default select
      // (the cluster from QuestConfig::cluster_from_pages on): the same list (chunks in the same
      // order, partial runs, counters): one rule, applied exactly. What each leaves behind (the
      // histogram zeroed) the selects after it must not see: select_attend below and the next rep
      // are checked.
      for (const char* variant : {"fused select", "cluster select", "one-block select"}) {
        const bool fused_variant = variant[0] == 'f', cluster_variant = variant[0] == 'c';
        idx.set_fused_select(fused_variant);
        idx.set_cluster_from_pages(cluster_variant ? 0 : cuda::QuestConfig::kNoCluster);
        idx.select(dq.get(), c.budget);
        SAAP_CU(cudaDeviceSynchronize());
        std::vector<int32_t> srows(rows.size()), snch(nch.size()), sparts(parts.size()), snpart(npart.size());
        SAAP_CU(cudaMemcpy(srows.data(), idx.chunk_rows(), srows.size() * 4, cudaMemcpyDeviceToHost));
        SAAP_CU(cudaMemcpy(snch.data(), idx.chunk_count(), snch.size() * 4, cudaMemcpyDeviceToHost));
        SAAP_CU(cudaMemcpy(sparts.data(), idx.partials(), sparts.size() * 4, cudaMemcpyDeviceToHost));
        SAAP_CU(cudaMemcpy(snpart.data(), idx.partial_count(), snpart.size() * 4, cudaMemcpyDeviceToHost));
        const auto sctr = idx.counters();
        bool same = snch == nch && snpart == npart && sctr.selected_tokens == ctr.selected_tokens &&
                    sctr.scored_pages == ctr.scored_pages;
        for (int bh = 0; same && bh < bh_n; ++bh) {
          same = std::equal(rows.begin() + size_t(bh) * idx.max_chunks(),
                            rows.begin() + size_t(bh) * idx.max_chunks() + nch[bh],
                            srows.begin() + size_t(bh) * idx.max_chunks());
          same = same && std::equal(parts.begin() + size_t(bh) * 8, parts.begin() + size_t(bh) * 8 + 2 * npart[bh],
                                    sparts.begin() + size_t(bh) * 8);
        }
        tally.check(same, (rt + variant + " == the default select (chunks, partial runs, counters)").c_str(), same, 1);
        idx.set_fused_select(false);
        idx.set_cluster_from_pages(c.cfg.cluster_from_pages);
      }
      {  // The step in one kernel (select_attend): the same list and the attention vs float64, plain
         // and captured in a graph (twice: its tickets and scratch must come back reset).
        cutest::poison(dout);
        idx.select_attend(dq.get(), c.budget, scale, dout.get(), ws);
        SAAP_CU(cudaDeviceSynchronize());
        const double serr = cutest::rel_error(cutest::download(dout), ref);
        std::vector<int32_t> frows(rows.size()), fnch(nch.size());
        SAAP_CU(cudaMemcpy(frows.data(), idx.chunk_rows(), frows.size() * 4, cudaMemcpyDeviceToHost));
        SAAP_CU(cudaMemcpy(fnch.data(), idx.chunk_count(), fnch.size() * 4, cudaMemcpyDeviceToHost));
        bool same = fnch == nch;
        for (int bh = 0; same && bh < bh_n; ++bh)
          same = std::equal(rows.begin() + size_t(bh) * idx.max_chunks(),
                            rows.begin() + size_t(bh) * idx.max_chunks() + nch[bh],
                            frows.begin() + size_t(bh) * idx.max_chunks());
        tally.check(same, (rt + "select_attend's list == select's").c_str(), same, 1);
        tally.check(serr < 1e-4, (rt + "select_attend rel error vs float64").c_str(), serr, 1e-4);
        for (int g = 0; g < 2; ++g) {
          cutest::poison(dout);
          cutest::run_as_graph(
              [&](cudaStream_t st) { idx.select_attend(dq.get(), c.budget, scale, dout.get(), ws, st); });
          const double gerr = cutest::rel_error(cutest::download(dout), ref);
          tally.check(gerr < 1e-4, (rt + "graph-captured select_attend rel error vs float64").c_str(), gerr, 1e-4);
        }
      }
#ifdef SAAP_QUEST_CPU_PARITY
      // The CPU method on the same cache and queries: the same pages (up to the rounding of the
      // bound, as above) and the same output.
      int64_t parity_errors = 0;
      double parity_err = 0;
      for (int b = 0; b < c.batch; ++b) {
        const int64_t n = c.lens[b] + c.appends;
        KVCache cache({1, c.hkv, D, n, c.t});
        std::vector<float> kf(size_t(n) * c.hkv * D), vf(kf.size());
        for (int h = 0; h < c.hkv; ++h)
          for (int64_t t = 0; t < n; ++t)
            for (int j = 0; j < D; ++j) {
              const size_t src = ((size_t(b) * c.hkv + h) * max_len + t) * D + j;
              kf[(size_t(t) * c.hkv + h) * D + j] = float(cutest::from_bits(allk[src], c.t));
              vf[(size_t(t) * c.hkv + h) * D + j] = float(cutest::from_bits(allv[src], c.t));
            }
        cache.append(0, kf.data(), vf.data(), n);
        QuestAttention cpu({0, c.hq, c.hkv, D, 0},
                           {c.budget.lookup, c.budget.tokens, c.cfg.sinks, c.cfg.window, c.cfg.page_size});
        cpu.place(cache.layer(0), 0, n, nullptr);
        const float* qb = &q[size_t(b) * c.hq * D];
        Selection sel;
        cpu.select(cache.layer(0), {qb, nullptr, c.hq, n - 1}, sel);
        std::vector<float> cpu_out(size_t(c.hq) * D);
        LookupStats st;
        cpu.attend(cache.layer(0), {qb, nullptr, c.hq, n - 1}, sel, cpu_out.data(), st);
        bool same = true;
        for (int h = 0; h < c.hkv; ++h) {
          const int bh = b * c.hkv + h;
          std::set<int64_t> cs;
          if (sel.all)
            for (int64_t t = 0; t < n; ++t) cs.insert(t);
          else
            for (int32_t p : sel.positions[size_t(h * G)]) cs.insert(p);
          if (cs == gpu_sel[bh]) continue;
          same = false;
          // Pages one backend took and the other did not must be float64 near-ties of each
          // other: the two sum the bound's terms in different orders (as the float64 check above).
          const RefPages& r = refs[size_t(bh)];
          std::vector<double> only_cpu, only_gpu;
          for (size_t i = 0; i < r.key.size(); ++i) {
            const bool in_cpu = cs.count(r.begin[i]) > 0, in_gpu = gpu_sel[bh].count(r.begin[i]) > 0;
            if (in_cpu != in_gpu) (in_cpu ? only_cpu : only_gpu).push_back(r.key[i]);
          }
          auto near = [&](const std::vector<double>& a, const std::vector<double>& b) {
            for (double x : a) {
              bool found = false;
              for (double y : b) found |= std::fabs(x - y) <= 1e-5 * (1 + std::fabs(x));
              if (!found) return false;
            }
            return true;
          };
          const bool tie = !r.all && !only_cpu.empty() && near(only_cpu, only_gpu) && near(only_gpu, only_cpu);
          if (!tie) ++parity_errors;
        }
        if (same) {
          std::vector<double> gpu_b(out.begin() + size_t(b) * c.hq * D, out.begin() + size_t(b + 1) * c.hq * D);
          parity_err = std::max(parity_err, cutest::rel_error(cpu_out, gpu_b));
        }
      }
      tally.check(parity_errors == 0, (rt + "(b,h) where the CPU method chose other pages").c_str(),
                  double(parity_errors), 0);
      tally.check(parity_err < 1e-4, (rt + "CPU vs GPU output rel error").c_str(), parity_err, 1e-4);
#endif
    }
  }
  // Bad input is refused with the right error kind, not a crash.
  auto refused = [&](const char* what, ErrorKind kind, auto&& fn) {
    bool ok = false;
    try {
      fn();
    } catch (const Error& e) {
      ok = e.kind() == kind;
    }
    tally.check(ok, what, ok, 1);
  };
  // Attend tunings: name() parses back to itself; a malformed field, a ring outside 2..8 stages,
  // mma without the ring, prefetch with it and waves outside 1..8 are named errors, from parse
  // and (a tuning built by hand) from attend; so is a ring larger than the shared memory.
  for (const cuda::SparseAttendTuning& t : cuda::sparse_attend_candidates())
    tally.check(cuda::SparseAttendTuning::parse(t.name()).name() == t.name(),
                ("attend tuning '" + t.name() + "' parses back to itself").c_str(), 1, 1);
  for (const char* bad : {"bulk=x", "stages=3", "bulk", "bulk=1", "bulk=9", "mma=1", "bulk=3;prefetch=1", "waves=0",
                          "bulk=3;waves=9"})
    refused((std::string("attend tuning '") + bad + "' refused").c_str(), ErrorKind::InvalidArgument,
            [&] { cuda::SparseAttendTuning::parse(bad); });
  cuda::DecodeShape s{1, 4, 2, 64, DType::BF16};
  refused("attend with bulk and prefetch refused", ErrorKind::InvalidArgument, [&] {
    cuda::QuestIndex idx(s, 8, {16, 4, 64});
    cuda::DeviceBuffer<float> q(4 * 64), out(4 * 64);
    cuda::SplitWorkspace ws;
    cuda::SparseAttendTuning t;  // prefetch = 1
    t.bulk = 3;
    idx.attend(q.get(), 1.f, out.get(), ws, 0, t);
  });
  refused("attend ring larger than the shared memory (bulk=8;mma=1 at d = 128) refused", ErrorKind::InvalidArgument,
          [&] {
            cuda::QuestIndex idx({1, 4, 2, 128, DType::BF16}, 8, {16, 4, 64});
            cuda::DeviceBuffer<float> q(4 * 128), out(4 * 128);
            cuda::SplitWorkspace ws;
            idx.attend(q.get(), 1.f, out.get(), ws, 0, cuda::SparseAttendTuning::parse("bulk=8;mma=1"));
          });
  refused("page_size 0 refused", ErrorKind::InvalidArgument, [&] { cuda::QuestIndex(s, 100, {0, 4, 64}); });
  refused("append past max_len refused", ErrorKind::OutOfMemory, [&] {
    cuda::QuestIndex idx(s, 8, {16, 4, 64});
    cuda::DeviceBuffer<uint16_t> kv(size_t(2) * 8 * 64);
    idx.store(kv.get(), kv.get(), 8, {8});
    idx.append(kv.get(), kv.get());
  });
  refused("lookup 0 without fixed tokens refused", ErrorKind::InvalidArgument, [&] {
    cuda::QuestIndex idx(s, 8, {16, 4, 64});
    cuda::DeviceBuffer<float> q(4 * 64);
    idx.select(q.get(), {0.0, 0});
  });
  refused("q not 16-byte aligned refused", ErrorKind::InvalidArgument, [&] {
    cuda::QuestIndex idx(s, 8, {16, 4, 64});
    cuda::DeviceBuffer<float> q(4 * 64 + 1);
    idx.select(q.get() + 1, {0.05, 0});
  });
  return tally.finish();
}
