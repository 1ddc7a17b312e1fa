// CPU dense decode: time per token, tokens/s, achieved GB/s of K+V read, 4k-64k cached positions,
// at SmolLM2-135M's head shape (9 query / 3 KV heads, d = 64) and Llama-3.1-8B's (32 / 8, d = 128).
#include <benchmark/benchmark.h>

#include <cmath>
#include <random>
#include <vector>

#include "saap/kernels/cpu/attention.h"

namespace {

void DenseDecode(benchmark::State& state) {
  const int64_t n = state.range(0);
  const int hq = int(state.range(1)), hkv = int(state.range(2)), d = int(state.range(3));
  const saap::DType dtype = state.range(4) ? saap::DType::BF16 : saap::DType::F32;
  saap::KVCache cache({1, hkv, d, n, dtype});
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  const int64_t chunk = 1024;
  std::vector<float> k(size_t(chunk) * hkv * d), v(k.size());
  for (int64_t done = 0; done < n; done += chunk) {
    for (auto& x : k) x = normal(rng);
    for (auto& x : v) x = normal(rng);
    cache.append(0, k.data(), v.data(), std::min(chunk, n - done));
  }
  std::vector<float> q(size_t(hq) * d), out(q.size());
  for (auto& x : q) x = normal(rng);
  for (auto _ : state) {
    saap::attention_decode(cache.layer(0), q.data(), hq, n, 1.f / std::sqrt(float(d)), out.data());
    benchmark::DoNotOptimize(out.data());
  }
  const double bytes = double(n) * hkv * cache.layer(0).token_bytes();
  state.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["MB_read"] = bytes / 1e6;
  state.SetLabel(std::string(saap::dtype_name(dtype)) + " " + std::to_string(hq) + "q/" + std::to_string(hkv) + "kv d" +
                 std::to_string(d));
}

void Args(benchmark::internal::Benchmark* b) {
  for (int64_t n : {4096, 16384, 65536})
    for (auto shape : {std::vector<int64_t>{9, 3, 64}, std::vector<int64_t>{32, 8, 128}})
      for (int64_t bf : {0, 1}) b->Args({n, shape[0], shape[1], shape[2], bf});
}

BENCHMARK(DenseDecode)->Apply(Args)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
