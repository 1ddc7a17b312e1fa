// Helpers for the CUDA kernel tests: plain executables (the GPU machine has no GoogleTest) that
// exit 77 without a GPU (ctest: skipped; with SAAP_REQUIRE_GPU=1 a missing GPU fails instead),
// print their seed (SAAP_SEED=<seed> reruns one), "N passed, N failed", and fail non-zero.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "saap/core/kv_cache.h"
#include "saap/kernels/cuda/decode.h"

namespace cutest {

inline void require_gpu() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e == cudaSuccess && n > 0) return;
  const char* req = std::getenv("SAAP_REQUIRE_GPU");
  const bool required = req && std::string(req) == "1";
  std::printf("no usable CUDA device (%s): %s\n", e == cudaSuccess ? "none found" : cudaGetErrorString(e),
              required ? "FAIL (SAAP_REQUIRE_GPU=1)" : "skipped");
  std::exit(required ? 1 : 77);
}

using Rng = std::mt19937_64;

// The test's random seed: SAAP_SEED when set (to rerun a failure), else a fresh one; printed
// either way so that every run can be repeated.
inline uint64_t test_seed() {
  uint64_t seed = 0;
  const char* env = std::getenv("SAAP_SEED");
  if (env && *env) {
    char* end = nullptr;
    seed = std::strtoull(env, &end, 10);
    if (*end) {
      std::printf("SAAP_SEED='%s' is not a decimal number\n", env);
      std::exit(2);
    }
  } else {
    seed = (uint64_t(std::random_device{}()) << 32) | std::random_device{}();
  }
  std::printf("seed=%llu (rerun: SAAP_SEED=%llu)\n", (unsigned long long)seed, (unsigned long long)seed);
  return seed;
}

struct Tally {
  int passed = 0, failed = 0;
  void check(bool ok, const char* what, double value, double limit) {
    std::printf("%-6s %-70s %.3g (limit %.3g)\n", ok ? "PASS" : "FAIL", what, value, limit);
    (ok ? passed : failed)++;
  }
  int finish() {
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
  }
};

// Host storage of a 16-bit KV element and its exact value.
inline uint16_t to_bits(float f, saap::DType t) {
  if (t == saap::DType::F16) {
    __half h = __float2half_rn(f);
    return *reinterpret_cast<uint16_t*>(&h);
  }
  __nv_bfloat16 b = __float2bfloat16_rn(f);
  return *reinterpret_cast<uint16_t*>(&b);
}
inline double from_bits(uint16_t u, saap::DType t) {
  if (t == saap::DType::F16) return __half2float(*reinterpret_cast<__half*>(&u));
  return __bfloat162float(*reinterpret_cast<__nv_bfloat16*>(&u));
}

inline std::vector<uint16_t> random_kv(Rng& rng, size_t n, saap::DType t, float sd = 1.f) {
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = to_bits(nd(rng), t);
  return v;
}
// n sequence lengths spread over [lo, hi) (a fixed pattern, no two neighbours equal): issue 11's
// batch of 32 with ragged lengths.
inline std::vector<int32_t> spread_lengths(int n, int lo, int hi) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[size_t(i)] = lo + int32_t((int64_t(i) * 7919) % (hi - lo));
  return v;
}

inline std::vector<float> random_f32(Rng& rng, size_t n, float sd = 1.f) {
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

template <class T>
saap::cuda::DeviceBuffer<T> upload(const std::vector<T>& h) {
  saap::cuda::DeviceBuffer<T> d(h.size());
  SAAP_CU(cudaMemcpy(d.get(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}
template <class T>
std::vector<T> download(const saap::cuda::DeviceBuffer<T>& d) {
  std::vector<T> h(d.size());
  SAAP_CU(cudaMemcpy(h.data(), d.get(), h.size() * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}
// NaN bit pattern everywhere: an output the kernel forgets to write then fails the comparison.
template <class T>
void poison(saap::cuda::DeviceBuffer<T>& d) {
  SAAP_CU(cudaMemset(d.get(), 0xff, d.bytes()));
}

// ||a - ref|| / ||ref||; NaN anywhere gives NaN (which fails every "<" check).
inline double rel_error(const std::vector<float>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}

// A CPU method's view of fp32 keys and values [n_kv_heads][capacity][head_dim] with `length`
// positions cached (the tests' fp32 copies of a 16-bit cache).
inline saap::LayerKV f32_layer_kv(const float* keys, const float* values, int n_kv_heads, int head_dim,
                                  int64_t capacity, int64_t length) {
  saap::LayerKV kv;
  kv.keys = keys;
  kv.values = values;
  kv.dtype = saap::DType::F32;
  kv.n_kv_heads = n_kv_heads;
  kv.head_dim = head_dim;
  kv.capacity = capacity;
  kv.length = length;
  return kv;
}

// float64 attention of one query row q[D] over rows `pos` of K/V ([len][D], 16-bit storage).
inline void ref_attention(const float* q, const uint16_t* K, const uint16_t* V, const std::vector<int64_t>& pos, int D,
                          double scale, saap::DType t, double* out) {
  std::vector<double> s(pos.size());
  double mx = -INFINITY;
  for (size_t i = 0; i < pos.size(); ++i) {
    double d = 0;
    for (int j = 0; j < D; ++j) d += double(q[j]) * from_bits(K[pos[i] * D + j], t);
    s[i] = d * scale;
    mx = std::max(mx, s[i]);
  }
  double L = 0;
  for (auto& x : s) L += (x = std::exp(x - mx));
  for (int j = 0; j < D; ++j) {
    double a = 0;
    for (size_t i = 0; i < pos.size(); ++i) a += s[i] * from_bits(V[pos[i] * D + j], t);
    out[j] = pos.empty() ? 0 : a / L;
  }
}

}  // namespace cutest

namespace cutest {

// Records fn(stream) as a CUDA graph on a fresh stream and launches it once, waiting for it to
// finish: the capture fails if fn synchronises the host, which is what the graph tests check.
template <class Fn>
void run_as_graph(Fn&& fn) {
  cudaStream_t st;
  SAAP_CU(cudaStreamCreate(&st));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  SAAP_CU(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  fn(st);
  SAAP_CU(cudaStreamEndCapture(st, &graph));
  SAAP_CU(cudaGraphInstantiate(&exec, graph, 0));
  SAAP_CU(cudaGraphLaunch(exec, st));
  SAAP_CU(cudaStreamSynchronize(st));
  SAAP_CU(cudaGraphExecDestroy(exec));
  SAAP_CU(cudaGraphDestroy(graph));
  SAAP_CU(cudaStreamDestroy(st));
}

// The (b, h) work segments written by SaapIndex::select, as host vectors.
struct SaapSegments {
  std::vector<int32_t> count;                  // [bh]
  std::vector<std::vector<int64_t>> slots;     // [bh]: every slot the segments cover, in order
  std::vector<int> longest;                    // [bh]: longest segment
};
template <class Index>
SaapSegments read_segments(const Index& idx) {
  const auto ctr = idx.counters();
  const size_t bh_n = ctr.segments.size();
  std::vector<int32_t> seg(bh_n * idx.max_segments() * 2);
  SAAP_CU(cudaMemcpy(seg.data(), idx.segments(), seg.size() * 4, cudaMemcpyDeviceToHost));
  SaapSegments r;
  r.count = ctr.segments;
  r.slots.resize(bh_n);
  r.longest.assign(bh_n, 0);
  for (size_t bh = 0; bh < bh_n; ++bh)
    for (int i = 0; i < ctr.segments[bh]; ++i) {
      const int32_t* s = &seg[(bh * idx.max_segments() + i) * 2];
      r.longest[bh] = std::max(r.longest[bh], s[1]);
      for (int j = 0; j < s[1]; ++j) r.slots[bh].push_back(s[0] + j);
    }
  return r;
}

}  // namespace cutest
