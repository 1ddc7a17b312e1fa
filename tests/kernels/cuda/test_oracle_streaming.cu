// Oracle top-k and StreamingLLM on the GPU against the CPU methods and a float64 reference.
//   oracle    - OracleTopKDecoder's positions per query head must equal the CPU OracleTopK's on the
//               same keys and queries (exactly: both score q.k in fp32 in dimension order, so even
//               the ties, planted by copying key rows, must go to the same lower positions), at a
//               lookup fraction and at a fixed token budget; the group's union must equal the
//               CPU's (the bytes the CPU counts); the output must match float64 attention over the
//               CPU's positions (same 16-bit inputs, only fp32 accumulation differs: 1e-4, the
//               dense decode test's limit).
//   streaming - streaming_decode against float64 attention over rules::fixed_reads (1e-4), and the
//               tokens it reports per (b, h) against fixed_reads().count().
// Shapes: SmolLM2's (D 64, 9 query heads over 3 KV heads), Gemma-3's (D 256, 4 over 1) and a group
// of 8 (D 128); two sequences of different lengths per batch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_test_util.h"
#include "kernels/cuda/per_head_check.h"
#include "saap/core/selection_rules.h"
#include "saap/kernels/cuda/oracle_topk.h"
#include "saap/kernels/cuda/streaming.h"
#include "saap/methods/oracle_topk.h"

using namespace saap;
using namespace saap::cuda;

namespace {

struct Case {
  const char* name;
  int D, Hq, Hkv;
  int64_t max_len;
  std::vector<int32_t> lengths;  // [batch]
};

struct Inputs {
  std::vector<uint16_t> k, v;  // [B][Hkv][max_len][D] bf16 bits
  std::vector<float> q;        // [B][Hq][D]
};

Inputs make_inputs(cutest::Rng& rng, const Case& c) {
  const int B = int(c.lengths.size());
  Inputs in;
  const size_t rows = size_t(B) * c.Hkv * c.max_len;
  in.k = cutest::random_kv(rng, rows * c.D, DType::BF16);
  in.v = cutest::random_kv(rng, rows * c.D, DType::BF16);
  // Ties: every 5th key repeats the key 3 positions before it, so its score equals that one's
  // exactly and the rank order must send the tie to the lower position.
  for (size_t r = 0; r < rows; ++r) {
    const int64_t p = int64_t(r % size_t(c.max_len));
    if (p >= 3 && p % 5 == 0) std::copy_n(&in.k[(r - 3) * c.D], c.D, &in.k[r * c.D]);
  }
  in.q = cutest::random_f32(rng, size_t(B) * c.Hq * c.D);
  return in;
}

// Inputs on the device, with an output buffer [B][Hq][D] of NaN (a row the kernel leaves unwritten
// fails the comparison).
struct DeviceInputs {
  DeviceBuffer<uint16_t> k, v;
  DeviceBuffer<float> q;
  DeviceBuffer<int32_t> lengths;
  DeviceBuffer<float> out;
};

DeviceInputs upload_inputs(const Inputs& in, const Case& c) {
  DeviceInputs d{cutest::upload(in.k), cutest::upload(in.v), cutest::upload(in.q), cutest::upload(c.lengths),
                 DeviceBuffer<float>(in.q.size())};
  cutest::poison(d.out);
  return d;
}

void check_oracle(cutest::Tally& tally, cutest::Rng& rng, const Case& c, const rules::Budget& budget) {
  const int B = int(c.lengths.size());
  const Inputs in = make_inputs(rng, c);
  const DeviceInputs d = upload_inputs(in, c);
  const DecodeShape shape{B, c.Hq, c.Hkv, c.D, DType::BF16};
  OracleTopKDecoder oracle(shape, c.max_len);
  SplitWorkspace ws;
  const float scale = 1.f / std::sqrt(float(c.D));
  oracle.decode(d.k.get(), d.v.get(), d.lengths.get(), d.q.get(), scale, budget, d.out.get(), ws);
  SAAP_CU(cudaDeviceSynchronize());
  const auto out = cutest::download(d.out);
  const cutest::PerHeadSelection got = cutest::read_selection(oracle, shape, c.max_len);

  cutest::PerHeadAgreement agree;
  OracleTopK cpu(LayerShape{0, c.Hq, c.Hkv, c.D, c.max_len}, budget);
  for (int b = 0; b < B; ++b) {
    const int64_t n = c.lengths[size_t(b)];
    cutest::CpuCache cache(in.k, in.v, b, c.Hkv, c.max_len, c.D, DType::BF16);
    cache.kv.length = n;
    const float* qb = in.q.data() + size_t(b) * c.Hq * c.D;
    Selection sel;
    cpu.select(cache.kv, QueryView{qb, qb, c.Hq, n - 1}, sel);
    // Both list each head's positions ascending: compared as lists.
    cutest::compare_sequence(shape, c.max_len, b, n, sel, got, out, qb, in.k, in.v, scale, /*in_any_order=*/false,
                             agree);
  }
  char what[200];
  std::snprintf(what, sizeof what, "oracle %s, %s: positions identical to the CPU's per head", c.name,
                budget.fixed() ? ("budget_tokens " + std::to_string(budget.tokens)).c_str()
                               : ("lookup " + std::to_string(budget.lookup)).c_str());
  tally.check(agree.same == agree.heads, what, double(agree.same), double(agree.heads));
  std::snprintf(what, sizeof what, "oracle %s: group union equals the CPU's (the bytes counted)", c.name);
  tally.check(agree.union_same == agree.groups, what, double(agree.union_same), double(agree.groups));
  std::snprintf(what, sizeof what, "oracle %s: output vs float64 attention over the CPU's positions", c.name);
  tally.check(agree.worst < 1e-4, what, agree.worst, 1e-4);
}

void check_streaming(cutest::Tally& tally, cutest::Rng& rng, const Case& c, int sinks, int window) {
  const int B = int(c.lengths.size()), G = c.Hq / c.Hkv;
  const Inputs in = make_inputs(rng, c);
  const DeviceInputs d = upload_inputs(in, c);
  const DecodeShape shape{B, c.Hq, c.Hkv, c.D, DType::BF16};
  DeviceBuffer<int32_t> dsel(size_t(B) * c.Hkv);
  cutest::poison(dsel);
  SplitWorkspace ws;
  const float scale = 1.f / std::sqrt(float(c.D));
  streaming_decode(shape, d.k.get(), d.v.get(), c.max_len, d.lengths.get(), d.q.get(), scale, sinks, window,
                   d.out.get(), ws, dsel.get());
  SAAP_CU(cudaDeviceSynchronize());
  const auto out = cutest::download(d.out);
  const auto sel = cutest::download(dsel);
  double worst = 0;
  int counted = 0;
  for (int b = 0; b < B; ++b) {
    const rules::FixedReads f = rules::fixed_reads(c.lengths[size_t(b)], sinks, window);
    std::vector<int64_t> pos;
    for (int64_t p = 0; p < f.sink_end; ++p) pos.push_back(p);
    for (int64_t p = f.window_begin; p < f.n; ++p) pos.push_back(p);
    for (int h = 0; h < c.Hkv; ++h) {
      counted += sel[size_t(b) * c.Hkv + h] == int32_t(f.count());
      for (int g = 0; g < G; ++g) {
        const size_t row = size_t(b) * c.Hq + h * G + g;
        std::vector<double> ref(size_t(c.D));
        cutest::ref_attention(&in.q[row * c.D], &in.k[(size_t(b) * c.Hkv + h) * c.max_len * c.D],
                              &in.v[(size_t(b) * c.Hkv + h) * c.max_len * c.D], pos, c.D, scale, DType::BF16,
                              ref.data());
        const std::vector<float> o(out.begin() + row * c.D, out.begin() + (row + 1) * c.D);
        const double e = cutest::rel_error(o, ref);
        worst = std::isnan(e) ? INFINITY : std::max(worst, e);
      }
    }
  }
  char what[200];
  std::snprintf(what, sizeof what, "streaming %s, sinks %d window %d: output vs float64 over the fixed reads",
                c.name, sinks, window);
  tally.check(worst < 1e-4, what, worst, 1e-4);
  std::snprintf(what, sizeof what, "streaming %s, sinks %d window %d: tokens read = fixed_reads().count()", c.name,
                sinks, window);
  tally.check(counted == B * c.Hkv, what, counted, B * c.Hkv);
}

}  // namespace

int main() {
  cutest::require_gpu();
  cutest::Rng rng(cutest::test_seed());
  cutest::Tally tally;
  const Case smol{"D64 9/3", 64, 9, 3, 700, {700, 333}};
  const Case gemma{"D256 4/1", 256, 4, 1, 3000, {3000, 1500}};
  const Case wide{"D128 8/1", 128, 8, 1, 2000, {2000, 77}};
  check_oracle(tally, rng, smol, rules::Budget{0.05, 0});
  check_oracle(tally, rng, smol, rules::Budget{0.05, 100});
  check_oracle(tally, rng, gemma, rules::Budget{0.02, 0});
  check_oracle(tally, rng, gemma, rules::Budget{0.02, 512});
  check_oracle(tally, rng, gemma, rules::Budget{0.02, 5000});  // covers every prefix: read whole
  check_oracle(tally, rng, wide, rules::Budget{0.1, 0});
  check_oracle(tally, rng, wide, rules::Budget{0.1, 1});  // one key per head
  check_streaming(tally, rng, smol, 4, 64);
  check_streaming(tally, rng, gemma, 4, 64);
  check_streaming(tally, rng, gemma, 0, 1);
  check_streaming(tally, rng, wide, 4, 5000);  // the window covers every prefix
  return tally.finish();
}
