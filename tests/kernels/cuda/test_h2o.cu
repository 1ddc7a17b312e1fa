// H2O on the GPU (H2ODecoder) against the CPU method (H2OAttention), step by step over a few
// hundred queries on the same keys, values and queries:
//   - each query head's selected positions must equal the CPU's at every step (as sets: the GPU
//     lists them in no particular order). Both score q.k in fp32 in dimension order and sum the
//     softmax in double, so the accumulators agree to a few fp32 ulps (expf may differ by one);
//     random data leaves no two accumulators that close at an eviction, so the evictions agree;
//   - the group's union (the K/V bytes counted) must equal the CPU's;
//   - the output must match float64 attention over the CPU's positions (the same bf16 inputs; only
//     the fp32 accumulation differs: 1e-4, the dense decode test's limit);
//   - after the last step, every accumulator within 1e-5 (relative) of the CPU's, and evicted
//     exactly where the CPU evicted.
// Two sequences per batch: sequence 0 is queried from position 0 (every query, as perplexity and
// --method-prefill run it); sequence 1 from position P with nothing before it (the CPU's state after
// an exact prefill: every accumulator 0, so the first step evicts down to the heavy half at once,
// all ties, the older going). seed_first_query() is checked against the CPU's state after position
// 0, and the last step runs as a CUDA graph (the runner captures its decode step).
// Shapes: SmolLM2's (D 64, 9 query heads over 3 KV heads), Gemma-3's (D 256, 4 over 1) and a group
// of 8 (D 128). SAAP_TEST_QUICK=1 (scripts/gpu_run.sh under compute-sanitizer): 60 steps per case.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_test_util.h"
#include "kernels/cuda/per_head_check.h"
#include "saap/kernels/cuda/h2o.h"
#include "saap/methods/h2o.h"

using namespace saap;
using namespace saap::cuda;

namespace {

struct Case {
  const char* name;
  int D, Hq, Hkv;
  int64_t steps;   // queries per sequence
  int64_t start1;  // sequence 1's first query position (P)
  rules::Budget budget;
};

void check_case(cutest::Tally& tally, cutest::Rng& rng, const Case& c) {
  constexpr int B = 2;
  const int64_t L = c.start1 + c.steps;  // max_len: sequence 1's last length
  const size_t per_seq = size_t(c.Hkv) * size_t(L) * size_t(c.D);
  const std::vector<uint16_t> k = cutest::random_kv(rng, B * per_seq, DType::BF16);
  const std::vector<uint16_t> v = cutest::random_kv(rng, B * per_seq, DType::BF16);
  auto dk = cutest::upload(k), dv = cutest::upload(v);
  const DecodeShape shape{B, c.Hq, c.Hkv, c.D, DType::BF16};
  H2ODecoder gpu(shape, L, c.budget);
  SplitWorkspace ws;
  DeviceBuffer<float> dq(size_t(B) * c.Hq * c.D), dout(size_t(B) * c.Hq * c.D);
  DeviceBuffer<int32_t> dlen(B);
  const float scale = 1.f / std::sqrt(float(c.D));
  const size_t rows = size_t(B) * c.Hq;

  std::vector<cutest::CpuCache> cache;
  std::vector<std::unique_ptr<H2OAttention>> cpu;
  for (int b = 0; b < B; ++b) {
    cache.emplace_back(k, v, b, c.Hkv, L, c.D, DType::BF16);
    cpu.push_back(std::make_unique<H2OAttention>(LayerShape{0, c.Hq, c.Hkv, c.D, L}, c.budget));
  }

  cutest::PerHeadAgreement agree;
  int64_t first_bad = -1;
  std::vector<float> out_cpu(size_t(c.Hq) * c.D);
  for (int64_t s = 0; s < c.steps; ++s) {
    const int64_t pos[B] = {s, c.start1 + s};
    const std::vector<int32_t> lengths = {int32_t(pos[0] + 1), int32_t(pos[1] + 1)};
    const std::vector<float> q = cutest::random_f32(rng, rows * c.D);
    SAAP_CU(cudaMemcpy(dq.get(), q.data(), q.size() * 4, cudaMemcpyHostToDevice));
    SAAP_CU(cudaMemcpy(dlen.get(), lengths.data(), B * 4, cudaMemcpyHostToDevice));
    cutest::poison(dout);
    auto step = [&](cudaStream_t st) {
      gpu.decode(dk.get(), dv.get(), dlen.get(), dq.get(), scale, dout.get(), ws, st);
    };
    if (s + 1 == c.steps)
      cutest::run_as_graph(step);
    else
      step(0);
    SAAP_CU(cudaDeviceSynchronize());
    const auto out = cutest::download(dout);
    const cutest::PerHeadSelection got = cutest::read_selection(gpu, shape, L);
    for (int b = 0; b < B; ++b) {
      const int64_t n = pos[b] + 1;
      LayerKV& kv = cache[size_t(b)].kv;
      kv.length = n;
      const float* qb = q.data() + size_t(b) * c.Hq * c.D;
      const QueryView qv{qb, qb, c.Hq, pos[b]};
      Selection sel;
      cpu[size_t(b)]->select(kv, qv, sel);
      LookupStats stats;
      cpu[size_t(b)]->attend(kv, qv, sel, out_cpu.data(), stats);
      const int64_t missed = agree.heads - agree.same;
      // H2O's GPU lists each head's positions in no set order: compared as sets.
      cutest::compare_sequence(shape, L, b, n, sel, got, out, qb, k, v, scale, /*in_any_order=*/true, agree);
      if (agree.heads - agree.same != missed && first_bad < 0) first_bad = s;
    }
  }
  // The state after the last step.
  std::vector<float> acc(rows * size_t(L));
  SAAP_CU(cudaMemcpy(acc.data(), gpu.accumulators(), acc.size() * 4, cudaMemcpyDeviceToHost));
  int64_t evicted_same = 0, cells = 0;
  double acc_worst = 0;
  for (int b = 0; b < B; ++b) {
    const int64_t n = c.start1 * b + c.steps;
    for (int hq = 0; hq < c.Hq; ++hq)
      for (int64_t p = 0; p < n; ++p) {
        const float g = acc[(size_t(b) * c.Hq + hq) * size_t(L) + size_t(p)];
        const bool ev = cpu[size_t(b)]->evicted(hq, p);
        ++cells;
        evicted_same += ev == (g == -INFINITY);
        if (!ev) {
          const double want = cpu[size_t(b)]->accumulated(hq, p);
          acc_worst = std::max(acc_worst, std::abs(double(g) - want) / std::max(1e-3, std::abs(want)));
        }
      }
  }

  char what[200];
  std::snprintf(what, sizeof what, "h2o %s: positions identical to the CPU's, every head and step (first differing "
                "step %lld)", c.name, (long long)first_bad);
  tally.check(agree.same == agree.heads, what, double(agree.same), double(agree.heads));
  std::snprintf(what, sizeof what, "h2o %s: group union equals the CPU's (the bytes counted)", c.name);
  tally.check(agree.union_same == agree.groups, what, double(agree.union_same), double(agree.groups));
  std::snprintf(what, sizeof what, "h2o %s: output vs float64 attention over the CPU's positions", c.name);
  tally.check(agree.worst < 1e-4, what, agree.worst, 1e-4);
  std::snprintf(what, sizeof what, "h2o %s: evicted exactly where the CPU evicted", c.name);
  tally.check(evicted_same == cells, what, double(evicted_same), double(cells));
  std::snprintf(what, sizeof what, "h2o %s: accumulators vs the CPU's (relative)", c.name);
  tally.check(acc_worst < 1e-5, what, acc_worst, 1e-5);
}

// seed_first_query() is the CPU's state after its query at position 0: accumulator 1 there.
void check_seed(cutest::Tally& tally) {
  const DecodeShape shape{3, 4, 1, 64, DType::BF16};
  const int64_t L = 50;
  H2ODecoder gpu(shape, L, rules::Budget{0.05, 0});
  gpu.seed_first_query();
  SAAP_CU(cudaDeviceSynchronize());
  std::vector<float> acc(size_t(3 * 4) * L);
  SAAP_CU(cudaMemcpy(acc.data(), gpu.accumulators(), acc.size() * 4, cudaMemcpyDeviceToHost));
  // The CPU: one query at position 0 over a one-token cache.
  std::vector<float> key(size_t(L) * 64, 0.5f), q(4 * 64, 0.25f), out(4 * 64);
  const LayerKV kv = cutest::f32_layer_kv(key.data(), key.data(), 1, 64, L, 1);
  H2OAttention cpu(LayerShape{0, 4, 1, 64, L}, 0.05);
  LookupStats stats;
  const QueryView qv{q.data(), q.data(), 4, 0};
  cpu.forward(kv, qv, out.data(), stats);
  int64_t same = 0;
  for (size_t r = 0; r < 12; ++r)
    for (int64_t p = 0; p < L; ++p) same += acc[r * L + size_t(p)] == cpu.accumulated(int(r % 4), p);
  tally.check(same == 12 * L, "h2o seed_first_query equals the CPU's state after position 0", double(same),
              double(12 * L));
}

}  // namespace

int main() {
  cutest::require_gpu();
  cutest::Rng rng(cutest::test_seed());
  cutest::Tally tally;
  const char* quick_env = std::getenv("SAAP_TEST_QUICK");
  const bool quick = quick_env && std::string(quick_env) == "1";
  auto steps = [&](int64_t s) { return quick ? std::min<int64_t>(s, 60) : s; };
  check_case(tally, rng, Case{"D64 9/3 lookup 0.1", 64, 9, 3, steps(300), 700, {0.1, 0}});
  check_case(tally, rng, Case{"D256 4/1 lookup 0.05", 256, 4, 1, steps(400), 3000, {0.05, 0}});
  check_case(tally, rng, Case{"D128 8/1 lookup 0.3", 128, 8, 1, steps(250), 500, {0.3, 0}});
  // Reads everything, evicts nothing.
  check_case(tally, rng, Case{"D64 9/3 lookup 1", 64, 9, 3, steps(120), 200, {1.0, 0}});
  // A fixed budget of tokens: whole prefixes up to it, then evictions one a step (and a first step
  // after P positions that evicts all but the budget at once).
  check_case(tally, rng, Case{"D64 9/3 24 tokens", 64, 9, 3, steps(300), 700, {0.05, 24}});
  check_case(tally, rng, Case{"D256 4/1 40 tokens", 256, 4, 1, steps(200), 3000, {0.05, 40}});
  check_seed(tally);
  return tally.finish();
}
