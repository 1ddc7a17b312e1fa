// Loki on the GPU vs float64 CPU references: keys stored in a random orthonormal PCA basis
// (low/rest split), rotated queries, low-rank scores, exact top-k of those scores, and gather
// attention over the kept tokens; with k_frac = 1 the result equals dense attention on the raw
// keys (the rotation is exact up to the rounding of the stored keys). bf16 keys at rank 16/32 are
// scored on the tensor cores, the others on the CUDA cores; both must match the fp32 query's scores.
#include <algorithm>
#include <string>

#include "kernels/cuda/cuda_test_util.h"
#include "saap/kernels/cuda/loki.h"

using namespace saap;

namespace {
// Random orthonormal D x D matrix (Gram-Schmidt in float64); column j = component j.
std::vector<double> random_basis(cutest::Rng& rng, int D) {
  std::normal_distribution<double> nd;
  std::vector<double> P(size_t(D) * D);
  for (int j = 0; j < D; ++j) {
    std::vector<double> v(D);
    for (auto& x : v) x = nd(rng);
    for (int pass = 0; pass < 2; ++pass)
      for (int k = 0; k < j; ++k) {
        double dot = 0;
        for (int i = 0; i < D; ++i) dot += v[i] * P[size_t(i) * D + k];
        for (int i = 0; i < D; ++i) v[i] -= dot * P[size_t(i) * D + k];
      }
    double nn = 0;
    for (double x : v) nn += x * x;
    for (int i = 0; i < D; ++i) P[size_t(i) * D + j] = v[i] / std::sqrt(nn);
  }
  return P;
}
}  // namespace

int main() {
  cutest::require_gpu();
  cutest::Tally tally;
  cutest::Rng rng(cutest::test_seed());
  struct Case {
    int batch, hq, hkv, d, r;
    DType t;
    std::vector<int32_t> lens;
    int appends;
    float k_frac;
  };
  for (const Case& c : {Case{2, 8, 2, 128, 32, DType::BF16, {5000, 1234}, 3, 0.25f},
                        Case{1, 9, 3, 64, 16, DType::F16, {20000}, 2, 0.125f},
                        Case{1, 4, 4, 64, 8, DType::BF16, {777}, 0, 0.05f},
                        // tensor-core scoring at rank 16, G = 8 (every MMA column a distinct head), 3 score blocks
                        Case{1, 8, 1, 128, 16, DType::BF16, {20001}, 1, 0.1f}}) {
    cuda::DecodeShape s{c.batch, c.hq, c.hkv, c.d, c.t};
    const int64_t src_len = *std::max_element(c.lens.begin(), c.lens.end());
    const int64_t max_len = src_len + c.appends;
    const int bh_n = c.batch * c.hkv, D = c.d, G = c.hq / c.hkv;
    cuda::LokiIndex idx(s, max_len, c.r);
    std::vector<double> basis;
    for (int h = 0; h < c.hkv; ++h) {
      auto P = random_basis(rng, D);
      basis.insert(basis.end(), P.begin(), P.end());
    }
    idx.set_basis(std::vector<float>(basis.begin(), basis.end()));
    std::vector<uint16_t> allk(size_t(bh_n) * max_len * D), allv(allk.size());
    auto hk = cutest::random_kv(rng, size_t(bh_n) * src_len * D, c.t), hv = cutest::random_kv(rng, hk.size(), c.t);
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
    const std::string tag = std::string(c.t == DType::BF16 ? "bf16" : "f16") + " d=" + std::to_string(D) +
                            " r=" + std::to_string(c.r) + " G=" + std::to_string(G) + ": ";
    // Stored keys = P^T k rounded to the storage type.
    const int R = c.r;
    std::vector<uint16_t> klow(size_t(bh_n) * max_len * R), krest(size_t(bh_n) * max_len * (D - R));
    SAAP_CU(cudaMemcpy(klow.data(), idx.k_low(), klow.size() * 2, cudaMemcpyDeviceToHost));
    SAAP_CU(cudaMemcpy(krest.data(), idx.k_rest(), krest.size() * 2, cudaMemcpyDeviceToHost));
    auto stored = [&](int bh, int64_t t, int j) {
      return j < R ? cutest::from_bits(klow[(bh * max_len + t) * R + j], c.t)
                   : cutest::from_bits(krest[(bh * max_len + t) * (D - R) + j - R], c.t);
    };
    double num = 0, den = 0;
    for (int bh = 0; bh < bh_n; ++bh) {
      const int64_t n = c.lens[bh / c.hkv] + c.appends;
      const double* P = &basis[size_t(bh % c.hkv) * D * D];
      for (int64_t t = 0; t < n; t += 7)
        for (int j = 0; j < D; ++j) {
          double ref = 0;
          for (int i = 0; i < D; ++i) ref += P[size_t(i) * D + j] * cutest::from_bits(allk[(bh * max_len + t) * D + i], c.t);
          num += (stored(bh, t, j) - ref) * (stored(bh, t, j) - ref);
          den += ref * ref;
        }
    }
    const double kerr = std::sqrt(num / den);
    tally.check(kerr < 1e-2, (tag + "stored rotated keys rel error").c_str(), kerr, 1e-2);
    const auto lens_now = idx.seq_len();
    bool len_ok = true;
    for (int bh = 0; bh < bh_n; ++bh) len_ok &= lens_now[bh] == c.lens[bh / c.hkv] + c.appends;
    tally.check(len_ok, (tag + "lengths after appends").c_str(), len_ok, 1);

    // The third pass repeats the first: the counters and histograms one select() leaves behind
    // must be clean for the next.
    for (float k_frac : {c.k_frac, 1.f, c.k_frac}) {
      auto q = cutest::random_f32(rng, size_t(c.batch) * c.hq * D, 2.f);
      auto dq = cutest::upload(q);
      cuda::DeviceBuffer<float> dout(q.size());
      cutest::poison(dout);
      cuda::SplitWorkspace ws;
      idx.select(dq.get(), k_frac);
      const float scale = 1.f / std::sqrt(float(D));
      idx.attend(scale, dout.get(), ws);
      SAAP_CU(cudaDeviceSynchronize());
      auto out = cutest::download(dout);
      std::vector<float> qrot(q.size()), scores(size_t(bh_n) * max_len);
      std::vector<int32_t> sel(size_t(bh_n) * max_len);
      SAAP_CU(cudaMemcpy(qrot.data(), idx.q_rot(), qrot.size() * 4, cudaMemcpyDeviceToHost));
      SAAP_CU(cudaMemcpy(scores.data(), idx.scores(), scores.size() * 4, cudaMemcpyDeviceToHost));
      SAAP_CU(cudaMemcpy(sel.data(), idx.selected(), sel.size() * 4, cudaMemcpyDeviceToHost));
      const auto count = idx.selected_count();
      std::vector<double> qref(q.size()), sref, ref(out.size());
      std::vector<float> sgot;
      for (int row = 0; row < c.batch * c.hq; ++row) {
        const double* P = &basis[size_t((row % c.hq) / G) * D * D];
        for (int j = 0; j < D; ++j) {
          double a = 0;
          for (int i = 0; i < D; ++i) a += P[size_t(i) * D + j] * q[size_t(row) * D + i];
          qref[size_t(row) * D + j] = a;
        }
      }
      int64_t topk_errors = 0;
      for (int bh = 0; bh < bh_n; ++bh) {
        const int b = bh / c.hkv;
        const int64_t n = c.lens[b] + c.appends;
        const int64_t k = std::min<int64_t>(n, std::max<int64_t>(1, int64_t(std::floor(k_frac * float(n)))));
        for (int64_t t = 0; t < n; ++t) {
          double best = -INFINITY;
          for (int g = 0; g < G; ++g) {
            double d = 0;
            for (int j = 0; j < R; ++j) d += double(qrot[(size_t(bh) * G + g) * D + j]) * stored(bh, t, j);
            best = std::max(best, d);
          }
          sref.push_back(best);
          sgot.push_back(scores[size_t(bh) * max_len + t]);
        }
        // Exact top-k of the device scores: k distinct tokens, none below an unselected one.
        if (count[bh] != k) ++topk_errors;
        std::vector<char> in(n, 0);
        float min_in = INFINITY;
        for (int i = 0; i < std::min<int64_t>(count[bh], n); ++i) {
          const int32_t t = sel[size_t(bh) * max_len + i];
          if (t < 0 || t >= n || in[t]) {
            ++topk_errors;
            continue;
          }
          in[t] = 1;
          min_in = std::min(min_in, scores[size_t(bh) * max_len + t]);
        }
        std::vector<int64_t> pos;
        for (int64_t t = 0; t < n; ++t) {
          if (!in[t] && scores[size_t(bh) * max_len + t] > min_in) ++topk_errors;
          if (in[t]) pos.push_back(t);
        }
        // Attention over the kept tokens with the stored (rotated) keys and the device's q_rot.
        std::vector<uint16_t> kk(size_t(n) * D);
        for (int64_t t = 0; t < n; ++t)
          for (int j = 0; j < D; ++j) kk[t * D + j] = cutest::to_bits(float(stored(bh, t, j)), c.t);
        for (int g = 0; g < G; ++g) {
          const size_t row = (size_t(bh) * G + g) * D;
          if (k_frac < 1.f)
            cutest::ref_attention(&qrot[row], kk.data(), &allv[size_t(bh) * max_len * D], pos, D, scale, c.t, &ref[row]);
          else  // raw keys, raw query: the basis must cancel
            cutest::ref_attention(&q[row], &allk[size_t(bh) * max_len * D], &allv[size_t(bh) * max_len * D], pos, D,
                                  scale, c.t, &ref[row]);
        }
      }
      const std::string kt = tag + "k_frac=" + std::to_string(k_frac).substr(0, 5) + ": ";
      const double qerr = cutest::rel_error(qrot, qref);
      tally.check(qerr < 1e-5, (kt + "rotated query rel error").c_str(), qerr, 1e-5);
      const double serr = cutest::rel_error(sgot, sref);
      tally.check(serr < 1e-5, (kt + "low-rank scores rel error").c_str(), serr, 1e-5);
      tally.check(topk_errors == 0, (kt + "top-k errors").c_str(), double(topk_errors), 0);
      const double err = cutest::rel_error(out, ref);
      const double lim = k_frac < 1.f ? 1e-4 : 2e-2;  // k_frac 1 compares with the unrounded raw keys
      tally.check(err < lim, (kt + "attention rel error").c_str(), err, lim);
    }
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
  refused("rank 12 is refused (Unsupported)", ErrorKind::Unsupported, [&] { cuda::LokiIndex bad(s1, 16, 12); });
  {
    cuda::LokiIndex idx(s1, 16, 8);
    std::vector<float> eye(size_t(2) * 64 * 64, 0.f);
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < 64; ++i) eye[(size_t(h) * 64 + i) * 64 + i] = 1.f;
    idx.set_basis(eye);
    auto k = cutest::upload(cutest::random_kv(rng, size_t(2) * 16 * 64, DType::BF16));
    idx.store(k.get(), k.get(), 16, {16});
    refused("append to a full sequence is refused (InvalidArgument)", ErrorKind::InvalidArgument,
            [&] { idx.append(k.get(), k.get()); });
    cuda::DeviceBuffer<float> q(4 * 64);
    refused("k_frac 0 is refused (InvalidArgument)", ErrorKind::InvalidArgument, [&] { idx.select(q.get(), 0.f); });
    refused("a basis of the wrong size is refused (InvalidArgument)", ErrorKind::InvalidArgument,
            [&] { idx.set_basis(std::vector<float>(64)); });
  }
  return tally.finish();
}
