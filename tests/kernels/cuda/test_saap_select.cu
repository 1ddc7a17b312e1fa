// Saap routing: classifier logits vs a float64 CPU MLP, and the per-KV-group selection under a
// lookup budget: the selected partitions are a top set by the CPU reference's score (the group's
// summed size-normalised density) that fits the budget and cannot take the next partition, and the
// segments cover sinks, window and each selected partition's slots exactly once.
#include <algorithm>
#include <set>
#include <string>

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
  };
  for (const Case& c : {Case{2, 8, 2, 128, 300, 64, {5000, 3000}, 0.1f}, Case{1, 9, 3, 64, 2000, 96, {8000}, 0.3f},
                        Case{1, 4, 1, 128, 50, 32, {900}, 1.0f}}) {
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
    const int bh_n = c.batch * c.hkv;
    // Skewed partition sizes: token -> partition drawn with lognormal weights.
    std::lognormal_distribution<double> ln(0.0, 1.5);
    std::vector<double> w(c.C);
    for (auto& x : w) x = ln(rng);
    std::discrete_distribution<int> part(w.begin(), w.end());
    std::vector<int32_t> assign(size_t(bh_n) * max_len);
    for (auto& a : assign) a = part(rng);
    auto hk = cutest::random_kv(rng, size_t(bh_n) * max_len * c.d, DType::BF16);
    auto dk = cutest::upload(hk);
    auto da = cutest::upload(assign);
    idx.build(dk.get(), dk.get(), max_len, c.lens, da.get());
    const int H = c.hidden;
    auto w1 = cutest::random_f32(rng, size_t(c.hq) * H * c.d, 0.1f), b1 = cutest::random_f32(rng, size_t(c.hq) * H, 0.1f);
    auto w2 = cutest::random_f32(rng, size_t(c.hq) * c.C * H, 0.3f), b2 = cutest::random_f32(rng, size_t(c.hq) * c.C, 0.1f);
    idx.set_classifier(w1, b1, w2, b2);
    auto q = cutest::random_f32(rng, size_t(c.batch) * c.hq * c.d);
    auto dq = cutest::upload(q);
    idx.select(dq.get(), c.lookup);
    idx.check();
    std::vector<float> logits(size_t(c.batch) * c.hq * c.C);
    SAAP_CU(cudaMemcpy(logits.data(), idx.logits(), logits.size() * 4, cudaMemcpyDeviceToHost));
    std::vector<double> ref(logits.size());
    auto rb = [](float x) { return cutest::from_bits(cutest::to_bits(x, DType::BF16), DType::BF16); };
    for (int b = 0; b < c.batch; ++b)
      for (int h = 0; h < c.hq; ++h) {
        std::vector<double> hid(H);
        for (int u = 0; u < H; ++u) {
          double a = b1[size_t(h) * H + u];
          for (int j = 0; j < c.d; ++j) a += rb(w1[(size_t(h) * H + u) * c.d + j]) * q[(size_t(b) * c.hq + h) * c.d + j];
          hid[u] = std::max(0.0, a);
        }
        for (int k = 0; k < c.C; ++k) {
          double a = b2[size_t(h) * c.C + k];
          for (int u = 0; u < H; ++u) a += rb(w2[(size_t(h) * c.C + k) * H + u]) * hid[u];
          ref[(size_t(b) * c.hq + h) * c.C + k] = a;
        }
      }
    const std::string tag = "C=" + std::to_string(c.C) + " G=" + std::to_string(c.hq / c.hkv) +
                            " lookup=" + std::to_string(c.lookup).substr(0, 4) + ": ";
    const double lerr = cutest::rel_error(logits, ref);
    tally.check(lerr < 1e-4, (tag + "classifier logits rel error").c_str(), lerr, 1e-4);

    std::vector<int32_t> pstart(size_t(bh_n) * c.C), pcount(pstart.size()), acount(pstart.size());
    SAAP_CU(cudaMemcpy(pstart.data(), idx.part_start(), pstart.size() * 4, cudaMemcpyDeviceToHost));
    SAAP_CU(cudaMemcpy(pcount.data(), idx.part_count(), pcount.size() * 4, cudaMemcpyDeviceToHost));
    SAAP_CU(cudaMemcpy(acount.data(), idx.append_count(), acount.size() * 4, cudaMemcpyDeviceToHost));
    const auto segs = cutest::read_segments(idx);
    const auto ctr = idx.counters();
    int64_t cover_errors = 0, budget_errors = 0, order_errors = 0, not_maximal = 0;
    const int G = c.hq / c.hkv;
    for (int bh = 0; bh < bh_n; ++bh) {
      const int b = bh / c.hkv, h = bh % c.hkv;
      const int64_t n = c.lens[b];
      const int64_t fixed = std::min<int64_t>(cfg.sinks, n) + std::min<int64_t>(cfg.window, std::max<int64_t>(0, n - cfg.sinks));
      // Slot -> partition (or -1 for sinks/window).
      std::vector<int> owner(idx.rows(), -2);
      for (int64_t sl = 0; sl < fixed; ++sl) owner[sl] = -1;
      for (int k = 0; k < c.C; ++k)
        for (int i = 0; i < pcount[size_t(bh) * c.C + k]; ++i) owner[pstart[size_t(bh) * c.C + k] + i] = k;
      std::vector<int> hits(idx.rows(), 0);
      std::vector<int64_t> covered(c.C, 0);
      int64_t fixed_seen = 0;
      for (int64_t sl : segs.slots[bh]) {
        if (sl < 0 || sl >= idx.rows() || owner[sl] == -2 || hits[sl]++) {
          ++cover_errors;
          continue;
        }
        if (owner[sl] == -1)
          ++fixed_seen;
        else
          covered[owner[sl]]++;
      }
      if (fixed_seen != fixed || segs.longest[bh] > cfg.segment) ++cover_errors;
      std::vector<bool> sel(c.C);
      int64_t sel_tokens = 0;
      for (int k = 0; k < c.C; ++k) {
        const int64_t sz = pcount[size_t(bh) * c.C + k];
        if (covered[k] != 0 && covered[k] != sz) ++cover_errors;  // partitions are read whole
        sel[k] = sz > 0 && covered[k] == sz;
        sel_tokens += sel[k] ? sz : 0;
      }
      if (ctr.selected_tokens[bh] != sel_tokens + fixed) ++cover_errors;
      const int64_t budget = std::max<int64_t>(0, int64_t(std::floor(double(c.lookup) * n)) - fixed);
      if (sel_tokens > budget) ++budget_errors;
      // Scores from the device's logits in float64, as SaapAttention::group_scores ranks: head g
      // gives partition k the share n_k exp(s_gk) / Z_g, and k scores log sum_g exp(s_gk) / Z_g.
      // n_k counts prefill and append keys, as the selection does (this test makes no appends).
      std::vector<double> size(c.C);
      for (int k = 0; k < c.C; ++k) size[k] = double(pcount[size_t(bh) * c.C + k]) + acount[size_t(bh) * c.C + k];
      std::vector<double> density(c.C, 0.0);
      for (int g = 0; g < G; ++g) {
        const float* lg = &logits[(size_t(b) * c.hq + h * G + g) * c.C];
        double mx = -INFINITY, z = 0;
        for (int k = 0; k < c.C; ++k)
          if (size[k] > 0) mx = std::max(mx, double(lg[k]));
        for (int k = 0; k < c.C; ++k)
          if (size[k] > 0) z += size[k] * std::exp(lg[k] - mx);
        for (int k = 0; k < c.C; ++k)
          if (size[k] > 0) density[k] += std::exp(lg[k] - mx) / z;
      }
      std::vector<double> score(c.C);
      for (int k = 0; k < c.C; ++k) score[k] = std::log(density[k]);
      // Near-ties (within eps in log score) may fall either way in fp32.
      const double eps = 1e-4;
      double min_sel = INFINITY, best_unsel = -INFINITY;
      for (int k = 0; k < c.C; ++k) {
        if (size[k] == 0) continue;
        if (sel[k]) min_sel = std::min(min_sel, score[k]);
        else best_unsel = std::max(best_unsel, score[k]);
      }
      if (best_unsel > min_sel + eps) ++order_errors;
      // Prefix by score: the next partition must not have fit (any near-tie of the best unselected
      // one may be the device's next).
      double next_size = -1;
      for (int k = 0; k < c.C; ++k)
        if (size[k] > 0 && !sel[k] && score[k] >= best_unsel - eps) next_size = std::max(next_size, size[k]);
      if (next_size >= 0 && double(sel_tokens) + next_size <= double(budget)) ++not_maximal;
    }
    tally.check(cover_errors == 0, (tag + "segment coverage errors").c_str(), double(cover_errors), 0);
    tally.check(budget_errors == 0, (tag + "heads over the lookup budget").c_str(), double(budget_errors), 0);
    tally.check(order_errors == 0, (tag + "unselected partition scored above a selected one").c_str(),
                double(order_errors), 0);
    tally.check(not_maximal == 0, (tag + "next partition by score would still have fit").c_str(), double(not_maximal), 0);
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
  cuda::SaapIndex idx(s1, cfg);
  cuda::DeviceBuffer<float> q(4 * 64);
  refused("select before set_classifier is refused (InvalidArgument)", ErrorKind::InvalidArgument,
          [&] { idx.select(q.get(), 0.05f); });
  refused("a classifier of the wrong size is refused (InvalidArgument)", ErrorKind::InvalidArgument,
          [&] { idx.set_classifier({1.f}, {1.f}, {1.f}, {1.f}); });
  idx.set_classifier(std::vector<float>(size_t(4) * 128 * 64, 0.1f), std::vector<float>(4 * 128, 0.f),
                     std::vector<float>(size_t(4) * 8 * 128, 0.1f), std::vector<float>(4 * 8, 0.f));
  refused("lookup 1.5 is refused (InvalidArgument)", ErrorKind::InvalidArgument, [&] { idx.select(q.get(), 1.5f); });
  return tally.finish();
}
