// Prefill nearest-centroid assignment (cuBLAS GEMM + argmax) vs a float64 CPU search.
#include <string>

#include "kernels/cuda/cuda_test_util.h"
#include "saap/kernels/cuda/saap.h"

using namespace saap;

int main() {
  cutest::require_gpu();
  cutest::Tally tally;
  cutest::Rng rng(cutest::test_seed());
  struct Case {
    int batch, hkv, d, C;
    DType t;
    std::vector<int32_t> lens;
    int64_t max_len;
  };
  for (const Case& c : {Case{2, 2, 128, 300, DType::BF16, {1000, 517}, 1003}, Case{1, 3, 64, 64, DType::F16, {2049}, 2049}}) {
    cuda::DecodeShape s{c.batch, c.hkv * 2, c.hkv, c.d, c.t};
    cuda::SaapConfig cfg;
    cfg.n_partitions = c.C;
    cfg.max_prefill = c.max_len;
    cuda::SaapIndex idx(s, cfg);
    auto cent = cutest::random_f32(rng, size_t(c.hkv) * c.C * c.d);
    idx.set_centroids(cent);
    auto hk = cutest::random_kv(rng, size_t(c.batch) * c.hkv * c.max_len * c.d, c.t);
    auto dk = cutest::upload(hk);
    cuda::DeviceBuffer<int32_t> dassign(size_t(c.batch) * c.hkv * c.max_len);
    cutest::poison(dassign);
    idx.assign_prefill(dk.get(), c.max_len, c.lens, dassign.get());
    auto assign = cutest::download(dassign);
    int64_t bad = 0, exact = 0, total = 0;
    double worst_gap = 0;
    for (int b = 0; b < c.batch; ++b)
      for (int h = 0; h < c.hkv; ++h)
        for (int t = 0; t < c.lens[b]; ++t) {
          const size_t row = (size_t(b) * c.hkv + h) * c.max_len + t;
          std::vector<double> obj(c.C);
          int best = 0;
          for (int k = 0; k < c.C; ++k) {
            double dot = 0, nn = 0;
            for (int j = 0; j < c.d; ++j) {
              const double cj = double(cent[(size_t(h) * c.C + k) * c.d + j]);
              dot += cj * cutest::from_bits(hk[row * c.d + j], c.t);
              nn += cj * cj;
            }
            obj[k] = dot - nn / 2;
            if (obj[k] > obj[best]) best = k;
          }
          const int a = assign[row];
          ++total;
          if (a < 0 || a >= c.C) {
            ++bad;
            continue;
          }
          exact += a == best;
          const double gap = obj[best] - obj[a];
          worst_gap = std::max(worst_gap, gap);
          if (gap > 1e-3 * (1 + std::abs(obj[best]))) ++bad;  // only fp32 rounding may flip near-ties
        }
    const std::string what = "assign d=" + std::to_string(c.d) + " C=" + std::to_string(c.C) +
                             (c.t == DType::BF16 ? " bf16" : " f16") + ": tokens not at a nearest centroid";
    tally.check(bad == 0, what.c_str(), double(bad), 0);
    tally.check(exact >= total * 0.99, "  exact argmax agreement fraction", double(exact) / total, 0.99);
    std::printf("  worst objective gap %.3g over %lld tokens\n", worst_gap, (long long)total);
  }
  return tally.finish();
}
