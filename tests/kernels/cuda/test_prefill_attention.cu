// Causal prefill attention (tensor-core and CUDA-core kernels) vs a float64 CPU reference over the
// same bf16 inputs: GQA groups 3 and 4, chunks that start after cached tokens (pos0 > 0), query
// counts that are not multiples of the tiles, a single query, and batches; head_dim 256 (Gemma-3)
// and sliding windows (Gemma-3's local layers: each query sees its last 512 positions), on the
// kernels that run them (tc, tc128).
// Tolerance: the output is stored in bf16 (relative rounding 2^-9 = 2e-3 per element, ~1.2e-3
// RMS); the tensor-core kernel also rounds the probabilities to bf16 before P·V (again ~2^-9
// relative per term, averaging out over the keys). Limits: 4e-3 (CUDA-core), 6e-3 (tensor-core),
// as ||out - ref|| / ||ref||. A wrong mask, scale, head mapping or tile offset gives errors > 0.1.
#include <string>
#include <utility>

#include "kernels/cuda/cuda_test_util.h"
#include "saap/kernels/cuda/prefill_attention.h"

using namespace saap;

int main() {
  cutest::require_gpu();
  cutest::Tally tally;
  cutest::Rng rng(cutest::test_seed());
  struct Case {
    int batch, hq, hkv;
    int64_t n, pos0, max_len;
    float q_spread = 2.f;  // 2: peaked softmax rows, which exercises the running-max rescaling
    int d = 64;
    int64_t window = 0;  // 0: causal over the whole prefix
  };
  const std::vector<Case> cases = {
      {2, 9, 3, 100, 0, 128},   // SmolLM2's heads, partial last tile
      {1, 4, 1, 37, 200, 300},  // a later chunk: queries at 200..236 see 237 keys
      {1, 9, 3, 1000, 0, 1000},
      {3, 8, 2, 1, 70, 71},     // one query per sequence
      {2, 6, 3, 64, 64, 256},   // tile-aligned chunk after one full tile
      {1, 9, 3, 300, 37, 400},  // 128-row blocks whose warps start and end mid key tile
      // The 32-rows-per-warp kernel's edges (128-query blocks, 32-query warps, 64-key tiles):
      {2, 9, 3, 128, 0, 128},    // exactly one block; the diagonal ends on the last key
      {1, 9, 3, 129, 63, 256},   // one query past a block; the chunk starts a key before a tile edge
      {3, 6, 2, 257, 64, 400},   // batch 3, a tile-aligned later chunk, a last block of one query
      {2, 9, 3, 200, 1000, 1300},  // a later chunk after a long cache: many unmasked tiles, then the diagonal
      {1, 3, 3, 511, 1, 512},    // one query head per KV head; warps whose rows straddle key tiles
      // Scores with a standard deviation of ~23 in base 2: the running max of a row often jumps by
      // more than the lazy-rescaling threshold (2^8) in a later key tile, so O and l are rescaled
      // mid-row; between jumps, probabilities up to 2^8 go through P·V.
      {2, 9, 3, 300, 200, 600, 16.f},
      // Gemma-3-270M: 4 query heads over 1 KV head of dimension 256, global and local (window 512).
      {1, 4, 1, 700, 0, 700, 2.f, 256},      // global: partial tiles, 32-key tiles at d = 256
      {2, 4, 1, 100, 300, 512, 2.f, 256},    // a later chunk
      {3, 8, 2, 1, 70, 71, 2.f, 256},        // one query per sequence
      {1, 4, 1, 1300, 0, 1300, 2.f, 256, 512},  // window: rows before and past 512, blocks skipping tiles
      {2, 4, 1, 200, 1000, 1300, 2.f, 256, 512},  // a later chunk whose windows start mid tile
      {1, 4, 1, 64, 511, 600, 2.f, 256, 512},  // the chunk straddles the first full window
      {1, 9, 3, 600, 37, 700, 2.f, 64, 100},   // window at head_dim 64, not a multiple of a tile
      {2, 4, 1, 77, 5, 100, 2.f, 256, 1},      // window 1: each query sees itself only
  };
  for (const auto& c : cases) {
    const int D = c.d;
    const float scale = 1.f / std::sqrt(float(D));
    const int G = c.hq / c.hkv;
    const size_t q_n = size_t(c.batch) * c.n * c.hq * D, kv_n = size_t(c.batch) * c.hkv * c.max_len * D;
    auto hq = cutest::random_kv(rng, q_n, DType::BF16, c.q_spread);
    auto hk = cutest::random_kv(rng, kv_n, DType::BF16), hv = cutest::random_kv(rng, kv_n, DType::BF16);
    auto dq = cutest::upload(hq), dk = cutest::upload(hk), dv = cutest::upload(hv);
    std::vector<double> ref(q_n);
    std::vector<float> qrow(D);
    for (int b = 0; b < c.batch; ++b)
      for (int64_t t = 0; t < c.n; ++t)
        for (int h = 0; h < c.hq; ++h) {
          const size_t qoff = ((size_t(b) * c.n + t) * c.hq + h) * D;
          for (int d = 0; d < D; ++d) qrow[d] = float(cutest::from_bits(hq[qoff + d], DType::BF16));
          const int64_t p = c.pos0 + t, first = c.window > 0 && p + 1 > c.window ? p + 1 - c.window : 0;
          std::vector<int64_t> pos;
          for (int64_t i = first; i <= p; ++i) pos.push_back(i);
          const size_t kvoff = (size_t(b) * c.hkv + h / G) * c.max_len * D;
          cutest::ref_attention(qrow.data(), &hk[kvoff], &hv[kvoff], pos, D, scale, DType::BF16, &ref[qoff]);
        }
    std::vector<cuda::PrefillKernel> kernels = {cuda::PrefillKernel::TensorCore, cuda::PrefillKernel::TensorCore128};
    if (D == 64 && c.window == 0)
      kernels.insert(kernels.end(), {cuda::PrefillKernel::Simple, cuda::PrefillKernel::TensorCoreWarp32,
                                     cuda::PrefillKernel::TensorCoreWarp16});
    for (auto kernel : kernels) {
      cuda::DeviceBuffer<uint16_t> dout(q_n);
      cutest::poison(dout);
      const cuda::PrefillShape s{c.batch, c.hq, c.hkv, D, c.n, c.pos0, c.max_len, c.window};
      cuda::prefill_attention(s, reinterpret_cast<const __nv_bfloat16*>(dq.get()),
                              reinterpret_cast<const __nv_bfloat16*>(dk.get()),
                              reinterpret_cast<const __nv_bfloat16*>(dv.get()), scale,
                              reinterpret_cast<__nv_bfloat16*>(dout.get()), 0, kernel);
      SAAP_CU(cudaDeviceSynchronize());
      const auto bits = cutest::download(dout);
      std::vector<float> out(q_n);
      for (size_t i = 0; i < q_n; ++i) out[i] = float(cutest::from_bits(bits[i], DType::BF16));
      const double err = cutest::rel_error(out, ref);
      const bool tc = kernel != cuda::PrefillKernel::Simple;
      const double limit = tc ? 6e-3 : 4e-3;
      const std::string what = std::string(cuda::prefill_kernel_name(kernel)) + " b=" + std::to_string(c.batch) +
                                " hq=" + std::to_string(c.hq) + " hkv=" + std::to_string(c.hkv) +
                                " n=" + std::to_string(c.n) + " pos0=" + std::to_string(c.pos0) +
                                " d=" + std::to_string(D) + " window=" + std::to_string(c.window);
      tally.check(err < limit, what.c_str(), err, limit);
    }
  }
  // Bad shapes are refused with a named error.
  bool threw = false;
  try {
    cuda::prefill_attention({1, 9, 3, 64, 10, 120, 128}, nullptr, nullptr, nullptr, 1.f, nullptr);
  } catch (const Error& e) {
    threw = e.kind() == ErrorKind::InvalidArgument;
    std::printf("expected error: %s\n", e.what());
  }
  tally.check(threw, "10 queries at pos0 120 overflow max_len 128 (InvalidArgument)", threw, 1);
  // The kernels without head_dim 256 or a window refuse them by name rather than compute garbage.
  for (auto kernel : {cuda::PrefillKernel::Simple, cuda::PrefillKernel::TensorCoreWarp32}) {
    for (const auto& [d, window] : {std::pair<int, int64_t>{256, 0}, {64, 512}}) {
      threw = false;
      try {
        cuda::DeviceBuffer<__nv_bfloat16> buf(size_t(128) * d);
        cuda::prefill_attention({1, 1, 1, d, 10, 0, 128, window}, buf.get(), buf.get(), buf.get(), 1.f, buf.get(), 0,
                                kernel);
      } catch (const Error& e) {
        threw = e.kind() == ErrorKind::Unsupported;
        std::printf("expected error: %s\n", e.what());
      }
      const std::string what = std::string(cuda::prefill_kernel_name(kernel)) + " refuses d=" + std::to_string(d) +
                               " window=" + std::to_string(window) + " (Unsupported)";
      tally.check(threw, what.c_str(), threw, 1);
    }
  }
  return tally.finish();
}
