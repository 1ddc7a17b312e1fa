// Saap sparse decode end to end (prefill assignment, build, appends, classifier, selection,
// sparse attention) vs float64 CPU attention over exactly the tokens the segments name; and with
// lookup 1 vs dense attention over every token the sequence has seen (nothing lost or doubled).
#include <algorithm>
#include <string>

#include "kernels/cuda/cuda_test_util.h"
#include "saap/kernels/cuda/saap.h"

using namespace saap;

int main() {
  cutest::require_gpu();
  cutest::Tally tally;
  cutest::Rng rng(cutest::test_seed());
  struct Case {
    int batch, hq, hkv, d, C;
    DType t;
    std::vector<int32_t> lens;
    int appends;
  };
  for (const Case& c : {Case{2, 8, 2, 128, 24, DType::BF16, {2000, 1500}, 30},
                        Case{1, 9, 3, 64, 40, DType::F16, {3000}, 12}}) {
    cuda::DecodeShape s{c.batch, c.hq, c.hkv, c.d, c.t};
    cuda::SaapConfig cfg;
    cfg.n_partitions = c.C;
    cfg.sinks = 16;
    cfg.window = 64;
    cfg.segment = 96;
    cfg.append_page = 16;
    cfg.max_prefill = *std::max_element(c.lens.begin(), c.lens.end());
    cfg.max_new_tokens = c.appends;
    cfg.classifier_hidden = 64;
    const int64_t max_len = cfg.max_prefill, total_len = max_len + c.appends;
    const int bh_n = c.batch * c.hkv;
    cuda::SaapIndex idx(s, cfg);
    idx.set_centroids(cutest::random_f32(rng, size_t(c.hkv) * c.C * c.d));
    const int H = cfg.classifier_hidden;
    idx.set_classifier(cutest::random_f32(rng, size_t(c.hq) * H * c.d, 0.1f), cutest::random_f32(rng, size_t(c.hq) * H),
                       cutest::random_f32(rng, size_t(c.hq) * c.C * H, 0.3f), cutest::random_f32(rng, size_t(c.hq) * c.C));
    std::vector<uint16_t> allk(size_t(bh_n) * total_len * c.d), allv(allk.size());
    auto hk = cutest::random_kv(rng, size_t(bh_n) * max_len * c.d, c.t);
    auto hv = cutest::random_kv(rng, hk.size(), c.t);
    for (int bh = 0; bh < bh_n; ++bh)
      std::copy_n(&hk[size_t(bh) * max_len * c.d], max_len * c.d, &allk[size_t(bh) * total_len * c.d]),
          std::copy_n(&hv[size_t(bh) * max_len * c.d], max_len * c.d, &allv[size_t(bh) * total_len * c.d]);
    auto dk = cutest::upload(hk);
    auto dv = cutest::upload(hv);
    cuda::DeviceBuffer<int32_t> da(size_t(bh_n) * max_len);
    idx.assign_prefill(dk.get(), max_len, c.lens, da.get());
    idx.build(dk.get(), dv.get(), max_len, c.lens, da.get());
    for (int a = 0; a < c.appends; ++a) {
      auto nk = cutest::random_kv(rng, size_t(bh_n) * c.d, c.t), nv = cutest::random_kv(rng, size_t(bh_n) * c.d, c.t);
      for (int bh = 0; bh < bh_n; ++bh) {
        const size_t t = c.lens[bh / c.hkv] + a;
        std::copy_n(&nk[size_t(bh) * c.d], c.d, &allk[(bh * total_len + t) * c.d]);
        std::copy_n(&nv[size_t(bh) * c.d], c.d, &allv[(bh * total_len + t) * c.d]);
      }
      auto dnk = cutest::upload(nk);
      auto dnv = cutest::upload(nv);
      idx.append(dnk.get(), dnv.get());
    }
    idx.check();
    const int64_t rows = idx.rows();
    std::vector<uint16_t> pk(size_t(bh_n) * rows * c.d), pv(pk.size());
    SAAP_CU(cudaMemcpy(pk.data(), idx.k_pool(), pk.size() * 2, cudaMemcpyDeviceToHost));
    SAAP_CU(cudaMemcpy(pv.data(), idx.v_pool(), pv.size() * 2, cudaMemcpyDeviceToHost));
    const float scale = 1.f / std::sqrt(float(c.d));
    const int G = c.hq / c.hkv;
    for (float lookup : {0.2f, 1.0f}) {
      auto q = cutest::random_f32(rng, size_t(c.batch) * c.hq * c.d, 2.f);
      auto dq = cutest::upload(q);
      cuda::DeviceBuffer<float> dout(q.size());
      cutest::poison(dout);
      cuda::SplitWorkspace ws;
      idx.select(dq.get(), lookup);
      idx.attend(dq.get(), scale, dout.get(), ws);
      SAAP_CU(cudaDeviceSynchronize());
      auto out = cutest::download(dout);
      const auto segs = cutest::read_segments(idx);
      std::vector<double> ref(out.size());
      int64_t read = 0, total = 0;
      for (int bh = 0; bh < bh_n; ++bh) {
        const int b = bh / c.hkv, h = bh % c.hkv;
        const int64_t n = c.lens[b] + c.appends;
        read += segs.slots[bh].size();
        total += n;
        std::vector<int64_t> all(n);
        for (int64_t t = 0; t < n; ++t) all[t] = t;
        for (int g = 0; g < G; ++g) {
          const size_t row = (size_t(b) * c.hq + h * G + g) * c.d;
          if (lookup < 1.f)  // exactly the tokens the segments name, read from the pool
            cutest::ref_attention(&q[row], &pk[size_t(bh) * rows * c.d], &pv[size_t(bh) * rows * c.d], segs.slots[bh],
                                  c.d, scale, c.t, &ref[row]);
          else  // every token the sequence has seen, from the original data
            cutest::ref_attention(&q[row], &allk[size_t(bh) * total_len * c.d], &allv[size_t(bh) * total_len * c.d],
                                  all, c.d, scale, c.t, &ref[row]);
        }
      }
      const double err = cutest::rel_error(out, ref);
      const std::string what = std::string(c.t == DType::BF16 ? "bf16" : "f16") + " d=" + std::to_string(c.d) +
                               " G=" + std::to_string(G) + " lookup=" + std::to_string(lookup).substr(0, 3) +
                               " (read " + std::to_string(read) + "/" + std::to_string(total) + " tokens)";
      tally.check(err < 1e-4, what.c_str(), err, 1e-4);
      if (lookup < 1.f) tally.check(read < total * 0.25, "  sparse read stays near the budget", double(read) / total, 0.25);
    }
  }
  return tally.finish();
}
