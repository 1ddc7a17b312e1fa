// Saap routing vs a float64 reference computed from the inputs alone (router weights, queries,
// the partition labels the test gives build()): the classifier logits, and per KV group the
// selected positions, which must be the sinks, the recent window and the partitions the fill
// rule takes (selection_rules.h: budget, order, skip-and-continue fill) in the order of the
// group's summed density. The segments must cover each selected slot exactly once, in pieces of
// at most `segment` tokens, and the counters must match.
#include <algorithm>
#include <map>
#include <set>
#include <string>

#include "kernels/cuda/cuda_reference.h"
#include "kernels/cuda/cuda_test_util.h"
#include "saap/kernels/cuda/saap.h"

using namespace saap;

int main() {
  cutest::require_gpu();
  cutest::Tally tally;
  cutest::Rng rng(cutest::test_seed());
  struct Case {
    int batch, hq, hkv, d, C, hidden;
    std::vector<int32_t> lens;
    float lookup;
    int64_t tokens = 0;  // > 0: a fixed budget of tokens instead of lookup (rules::Budget)
    bool twins = false;  // partition 2k+1's router rows are 2k's: equal keys, ranked by id
  };
  // Fractional budgets (0.33 of 5000 is 1650, of 3001 is 990.33), GQA groups 4, 3, 7, 1 and 8,
  // head dims 64, 128 and 256 (Gemma-3's 4 query heads over one KV head),
  // more partitions than select threads (2000), and a lookup of 1 (everything). The two 4096-
  // partition cases (the most supported, many of them empty) exercise the block-scan prefix of
  // the fill over several 1024-rank tiles and the warp walk after the first misfit over many
  // 32-rank chunks, with many skips (the printed "taken after a skip" count). 72 sequences of one
  // KV head: each router block computes the logits of 72 sequences in turn from its W2 rows,
  // staged once (the other cases have at most 2), and 72 selection blocks run at once.
  std::vector<int32_t> many_lens;
  for (int i = 0; i < 72; ++i) many_lens.push_back(200 + 41 * i);
  for (const Case& c : {Case{2, 8, 2, 128, 300, 64, {5000, 3001}, 0.33f}, Case{1, 9, 3, 64, 2000, 96, {8000}, 0.3f},
                        Case{1, 7, 1, 64, 120, 32, {2500}, 0.07f}, Case{2, 2, 2, 128, 64, 32, {1200, 777}, 0.2f},
                        Case{1, 8, 1, 128, 50, 32, {900}, 1.0f}, Case{2, 4, 1, 64, 4096, 32, {20000, 12000}, 0.5f},
                        Case{1, 4, 2, 64, 4096, 32, {30000}, 0.1f},
                        Case{1, 4, 1, 256, 500, 128, {12000}, 0.05f}, Case{72, 2, 1, 64, 48, 32, many_lens, 0.25f},
                        // Fixed token budgets: Gemma-3's shape and artifact size (C = 1024, router
                        // hidden 640) at 2048 tokens of 32k, SmolLM2's at 512 of two lengths, and a
                        // budget covering the whole prefix (read whole).
                        Case{1, 4, 1, 256, 1024, 640, {32768}, 0.05f, 2048},
                        Case{2, 9, 3, 64, 256, 64, {4000, 1500}, 0.05f, 512},
                        Case{1, 4, 1, 256, 1024, 640, {1000}, 0.05f, 1024},
                        // The select block is sized to C (a power of two from 32 to 1024 threads,
                        // one partition each) and instantiated per group size G: the bench's C =
                        // 32 (one warp, a ranking without barriers) and 1024 (32 warps) at G = 4,
                        // C = 1024 at G = 8, C = 256 at G = 1, C = 33 (64 threads, 31 padding
                        // ranks), a single partition, C = 512 at G = 7 under a fixed budget, and
                        // C = 1025 (the shared-memory ranking of 2048, two partitions a thread).
                        Case{1, 8, 2, 128, 32, 64, {16384}, 0.05f}, Case{1, 8, 2, 128, 1024, 64, {60000}, 0.05f},
                        Case{1, 8, 1, 128, 1024, 64, {50000}, 0.05f}, Case{2, 2, 2, 64, 256, 32, {9000, 7000}, 0.1f},
                        Case{1, 5, 1, 64, 33, 32, {3000}, 0.2f}, Case{1, 6, 1, 64, 1, 32, {500}, 0.5f},
                        Case{1, 7, 1, 128, 512, 64, {20000}, 0.05f, 1500},
                        Case{1, 4, 1, 64, 1025, 32, {40000}, 0.1f},
                        // Exact ties: twin partitions share their keys bit for bit, so the fill
                        // must take the lower id first, also at the first partition that does not
                        // fit (one block of 256, a loop of two partitions a thread, a fixed
                        // budget). And a budget of nothing past the sinks and window (40 tokens).
                        Case{1, 8, 2, 128, 256, 64, {30000}, 0.05f, 0, true},
                        Case{2, 4, 1, 64, 2000, 32, {40000, 25000}, 0.1f, 0, true},
                        Case{1, 9, 3, 64, 256, 64, {9000}, 0.05f, 700, true},
                        Case{1, 4, 1, 64, 64, 32, {3000}, 0.05f, 40}}) {
    cuda::DecodeShape s{c.batch, c.hq, c.hkv, c.d, DType::BF16};
    cuda::SaapConfig cfg;
    cfg.n_partitions = c.C;
    cfg.sinks = 8;
    cfg.window = 32;
    cfg.segment = 64;
    cfg.append_page = 16;
    cfg.max_prefill = *std::max_element(c.lens.begin(), c.lens.end());
    cfg.max_new_tokens = 0;
    cfg.classifier_hidden = c.hidden;
    const int64_t max_len = cfg.max_prefill;
    cuda::SaapIndex idx(s, cfg);
    const int bh_n = c.batch * c.hkv, G = c.hq / c.hkv;
    // Skewed partition sizes: token -> partition drawn with lognormal weights.
    std::lognormal_distribution<double> ln(0.0, 1.5);
    std::vector<double> w(c.C);
    for (auto& x : w) x = ln(rng);
    std::discrete_distribution<int> part(w.begin(), w.end());
    std::vector<int32_t> assign(size_t(bh_n) * max_len);
    for (auto& a : assign) a = part(rng);
    // Random keys (K = V here) identify each slot's token by content.
    auto hk = cutest::random_kv(rng, size_t(bh_n) * max_len * c.d, DType::BF16);
    auto dk = cutest::upload(hk);
    auto da = cutest::upload(assign);
    idx.build(dk.get(), dk.get(), max_len, c.lens, da.get());
    // Router weights scaled so each head's softmax over partitions is spread, not one-hot.
    const int H = c.hidden;
    auto w1 = cutest::random_f32(rng, size_t(c.hq) * H * c.d, float(1.0 / std::sqrt(c.d)));
    auto b1 = cutest::random_f32(rng, size_t(c.hq) * H, 0.3f);
    auto w2 = cutest::random_f32(rng, size_t(c.hq) * c.C * H, float(1.2 / std::sqrt(H)));
    auto b2 = cutest::random_f32(rng, size_t(c.hq) * c.C, 0.5f);
    if (c.twins)
      for (int h = 0; h < c.hq; ++h)
        for (int p = 1; p < c.C; p += 2) {
          std::copy_n(&w2[(size_t(h) * c.C + p - 1) * H], H, &w2[(size_t(h) * c.C + p) * H]);
          b2[size_t(h) * c.C + p] = b2[size_t(h) * c.C + p - 1];
        }
    idx.set_classifier(w1, b1, w2, b2);
    auto q = cutest::random_f32(rng, size_t(c.batch) * c.hq * c.d);
    auto dq = cutest::upload(q);
    const rules::Budget budget{c.lookup, c.tokens};
    idx.select(dq.get(), budget);
    idx.check();
    std::vector<float> logits(size_t(c.batch) * c.hq * c.C);
    SAAP_CU(cudaMemcpy(logits.data(), idx.logits(), logits.size() * 4, cudaMemcpyDeviceToHost));
    std::vector<std::vector<double>> ref_logits(size_t(c.batch) * c.hq);
    std::vector<double> ref_flat;
    for (int b = 0; b < c.batch; ++b)
      for (int h = 0; h < c.hq; ++h) {
        auto& r = ref_logits[size_t(b) * c.hq + h];
        r = cutest::router_logits(&w1[size_t(h) * H * c.d], &b1[size_t(h) * H], &w2[size_t(h) * c.C * H],
                                  &b2[size_t(h) * c.C], c.d, H, c.C, &q[(size_t(b) * c.hq + h) * c.d]);
        ref_flat.insert(ref_flat.end(), r.begin(), r.end());
      }
    const std::string tag = "C=" + std::to_string(c.C) + " G=" + std::to_string(G) + " d=" + std::to_string(c.d) +
                            (c.tokens > 0 ? " tokens=" + std::to_string(c.tokens)
                                          : " lookup=" + std::to_string(c.lookup).substr(0, 4)) + ": ";
    // fp32 weights (as the CPU router's) and fp32 dot products of at most 1024 terms: relative
    // error near 1e-6.
    const double lerr = cutest::rel_error(logits, ref_flat);
    tally.check(lerr < 1e-5, (tag + "classifier logits rel error").c_str(), lerr, 1e-5);

    const int64_t rows = idx.rows();
    std::vector<uint16_t> pool(size_t(bh_n) * rows * c.d);
    SAAP_CU(cudaMemcpy(pool.data(), idx.k_pool(), pool.size() * 2, cudaMemcpyDeviceToHost));
    const auto segs = cutest::read_segments(idx);
    const auto ctr = idx.counters();
    int64_t cover_errors = 0, mismatches = 0, ties = 0, taken_total = 0, skipped_then_taken = 0, split_twins = 0;
    for (int bh = 0; bh < bh_n; ++bh) {
      const int b = bh / c.hkv, h = bh % c.hkv;
      const int64_t n = c.lens[b];
      std::map<std::string, int32_t> token_of;  // a slot's content -> its token
      for (int64_t t = 0; t < n; ++t)
        token_of[std::string(reinterpret_cast<const char*>(&hk[(size_t(bh) * max_len + t) * c.d]), c.d * 2)] =
            int32_t(t);
      std::set<int32_t> got;
      for (int64_t sl : segs.slots[bh]) {
        const auto it = token_of.find(
            std::string(reinterpret_cast<const char*>(&pool[(size_t(bh) * rows + sl) * c.d]), c.d * 2));
        if (sl < 0 || sl >= rows || it == token_of.end() || !got.insert(it->second).second) ++cover_errors;
      }
      if (segs.longest[bh] > cfg.segment || ctr.selected_tokens[bh] != int32_t(got.size())) ++cover_errors;
      // Reference from the inputs: candidate counts of each partition, the group's density keys,
      // the fill.
      const rules::FixedReads fixed = rules::fixed_reads(n, cfg.sinks, cfg.window);
      std::vector<int64_t> counts(c.C, 0);
      for (int64_t t = fixed.sink_end; t < fixed.window_begin; ++t) counts[assign[size_t(bh) * max_len + t]]++;
      std::vector<std::vector<double>> group(ref_logits.begin() + size_t(b) * c.hq + h * G,
                                             ref_logits.begin() + size_t(b) * c.hq + (h + 1) * G);
      const auto key = cutest::saap_group_keys(group, counts);
      const auto taken = cutest::fill_partitions(key, counts, budget.selectable(n, cfg.sinks, cfg.window));
      std::set<int32_t> ref;
      for (int64_t t = 0; t < n; ++t)
        if (t < fixed.sink_end || t >= fixed.window_begin || taken[assign[size_t(bh) * max_len + t]])
          ref.insert(int32_t(t));
      // How often the fill skipped a partition and still took a later one (the rule under test).
      std::vector<int32_t> order(c.C);
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(),
                [&](int32_t x, int32_t y) { return rules::ranks_before(float(key[x]), x, float(key[y]), y); });
      bool skipped = false;
      for (int32_t p : order) {
        if (counts[p] == 0) continue;
        if (!taken[p]) skipped = true;
        else if (skipped) ++skipped_then_taken;
        taken_total += taken[p];
      }
      // Equal keys, one taken and one not: the id decided (the twins cases must have some).
      for (int r = 0; r + 1 < c.C; ++r)
        split_twins += counts[order[r]] > 0 && counts[order[r + 1]] > 0 && key[order[r]] == key[order[r + 1]] &&
                       taken[order[r]] != taken[order[r + 1]];
      if (got == ref) continue;
      // The device ranks in fp32: two partitions whose keys lie within 2e-5 (log density) of
      // each other, one taken and one not, may swap places. Equal keys (twins) may not: both
      // sides rank them by id.
      bool tie = false;
      for (int r = 0; r + 1 < c.C; ++r) {
        const double gap = key[order[r]] - key[order[r + 1]];
        tie |= counts[order[r]] > 0 && counts[order[r + 1]] > 0 && taken[order[r]] != taken[order[r + 1]] &&
               gap > 0 && gap <= 2e-5;
      }
      (tie ? ties : mismatches)++;
    }
    std::printf("%s%lld partitions taken, %lld taken after a skip, %lld equal-key pairs split by the fill, %lld "
                "near-tie differences\n",
                tag.c_str(), (long long)taken_total, (long long)skipped_then_taken, (long long)split_twins,
                (long long)ties);
    if (c.twins)
      tally.check(split_twins > 0, (tag + "twins: equal-key pairs split by the fill (the id decides)").c_str(),
                  double(split_twins), 1);
    tally.check(cover_errors == 0, (tag + "segment coverage errors").c_str(), double(cover_errors), 0);
    tally.check(mismatches == 0, (tag + "KV groups whose selection differs from the reference").c_str(),
                double(mismatches), 0);
  }
  // Bad input is refused with the right error kind, not a crash.
  auto refused = [&](const char* what, ErrorKind kind, auto&& fn) {
    bool ok = false;
    try {
      fn();
    } catch (const Error& e) {
      ok = e.kind() == kind;
      std::printf("expected error: %s\n", e.what());
    }
    tally.check(ok, what, ok, 1);
  };
  const cuda::DecodeShape s1{1, 4, 2, 64, DType::BF16};
  cuda::SaapConfig cfg;
  cfg.max_prefill = 64;
  cfg.n_partitions = 5000;
  refused("5000 partitions are refused (Unsupported)", ErrorKind::Unsupported, [&] { cuda::SaapIndex bad(s1, cfg); });
  cfg.n_partitions = 8;
  refused("head_dim 96 is refused (Unsupported: kernels instantiate 64, 128 and 256)", ErrorKind::Unsupported,
          [&] { cuda::SaapIndex bad(cuda::DecodeShape{1, 4, 2, 96, DType::BF16}, cfg); });
  refused("a group of 9 query heads is refused (Unsupported: at most 8)", ErrorKind::Unsupported,
          [&] { cuda::SaapIndex bad(cuda::DecodeShape{1, 9, 1, 64, DType::BF16}, cfg); });
  cuda::SaapIndex idx(s1, cfg);
  cuda::DeviceBuffer<float> q(4 * 64);
  refused("select before set_classifier is refused (InvalidArgument)", ErrorKind::InvalidArgument,
          [&] { idx.select(q.get(), 0.05f); });
  refused("a classifier of the wrong size is refused (InvalidArgument)", ErrorKind::InvalidArgument,
          [&] { idx.set_classifier({1.f}, {1.f}, {1.f}, {1.f}); });
  idx.set_classifier(std::vector<float>(size_t(4) * 128 * 64, 0.1f), std::vector<float>(4 * 128, 0.f),
                     std::vector<float>(size_t(4) * 8 * 128, 0.1f), std::vector<float>(4 * 8, 0.f));
  refused("lookup 1.5 is refused (InvalidArgument)", ErrorKind::InvalidArgument, [&] { idx.select(q.get(), 1.5f); });
  refused("budget_tokens -1 is refused (InvalidArgument)", ErrorKind::InvalidArgument,
          [&] { idx.select(q.get(), rules::Budget{0.05, -1}); });
  return tally.finish();
}
