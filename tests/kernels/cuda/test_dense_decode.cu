// Dense split-KV decode vs a float64 CPU reference: bf16/f16, head dims 64/128/256 (256: Gemma-3),
// group sizes 1, 2, 3, 4, 7, 8, batches with different lengths (including 1 and lengths that are
// not multiples of any tile), and sliding windows (Gemma-3's local layers read the last 512
// positions): longer and shorter than the sequence, one past it, and a window of 1.
// Both sides see the same rounded 16-bit inputs, so only fp32 accumulation differs: limit 1e-4.
// dense_decode (whose tuning depends on the batch: the cases have batches 1 and > 1) and every
// tuning of dense_decode_tuned the benchmark compares (dense_tuning_candidates: the plain loop,
// interleaved splits, prefetching, tensor-core logits, the bulk-copy ring, the fused combine) are
// held to the same reference (the tensor-core loop runs on the bf16 cases at head dim 64 and 128);
// the cases' lengths leave partial ring tiles and empty splits.
#include <string>
#include <vector>

#include "kernels/cuda/cuda_test_util.h"
#include "saap/kernels/cuda/decode.h"

using namespace saap;

int main() {
  cutest::require_gpu();
  cutest::Tally tally;
  cutest::Rng rng(cutest::test_seed());
  struct Case {
    int batch, hq, hkv, d;
    DType t;
    std::vector<int> lens;
    int64_t max_len;
    int64_t window;  // 0: every cached position
  };
  const std::vector<int32_t> ragged32 = cutest::spread_lengths(32, 1, 2000);
  const std::vector<Case> cases = {
      {1, 32, 8, 128, DType::BF16, {4099}, 4099, 0},
      {3, 9, 3, 64, DType::BF16, {1, 777, 5000}, 5003, 0},
      {2, 8, 8, 128, DType::F16, {300, 2}, 301, 0},
      {2, 16, 2, 64, DType::F16, {20000, 9}, 20000, 0},
      {1, 6, 3, 128, DType::BF16, {65536 + 13}, 65536 + 13, 0},
      {2, 14, 2, 64, DType::F16, {3333, 1}, 3340, 0},  // G = 7
      {2, 28, 4, 128, DType::BF16, {9001, 31}, 9001, 0},  // G = 7, bf16: the tensor-core ring by default
      {2, 16, 2, 64, DType::BF16, {5000, 7}, 5000, 0},    // G = 8 at d = 64: the ring's tensor-core values
      {2, 4, 4, 128, DType::BF16, {3001, 15}, 3001, 0},   // G = 1: one live row of the MMA's sixteen
      // head_dim 256: Gemma-3-270M's 4 query heads over 1 KV head, then G = 8 and G = 1.
      {1, 4, 1, 256, DType::BF16, {32768}, 32768, 0},
      {2, 16, 2, 256, DType::BF16, {1000, 3}, 1003, 0},
      {3, 3, 3, 256, DType::F16, {1, 257, 4097}, 4100, 0},
      // Sliding windows: a sequence longer than the window, one shorter, one exactly one past it.
      {3, 4, 1, 256, DType::BF16, {5000, 300, 513}, 5000, 512},
      {2, 8, 2, 64, DType::F16, {20000, 17}, 20000, 100},
      {1, 16, 2, 128, DType::BF16, {70000}, 70000, 4096},
      {2, 4, 1, 256, DType::BF16, {9, 2}, 16, 1},
      // Batch 32 (issue 11's largest batch), ragged lengths, the bench's head shape.
      {32, 32, 8, 128, DType::BF16, std::vector<int>(ragged32.begin(), ragged32.end()), 2000, 0},
  };
  for (const auto& c : cases) {
    cuda::DecodeShape s{c.batch, c.hq, c.hkv, c.d, c.t};
    const size_t kv_n = size_t(c.batch) * c.hkv * c.max_len * c.d;
    auto hk = cutest::random_kv(rng, kv_n, c.t), hv = cutest::random_kv(rng, kv_n, c.t);
    // Larger query spread makes the softmax peaked, which exercises the running-max rescaling.
    auto hq = cutest::random_f32(rng, size_t(c.batch) * c.hq * c.d, 2.f);
    auto dk = cutest::upload(hk), dv = cutest::upload(hv);
    auto dq = cutest::upload(hq);
    auto dl = cutest::upload(std::vector<int32_t>(c.lens.begin(), c.lens.end()));
    const float scale = 1.f / std::sqrt(float(c.d));
    std::vector<double> ref(hq.size());
    const int G = c.hq / c.hkv;
    for (int b = 0; b < c.batch; ++b) {
      const int64_t first = c.window > 0 && c.lens[b] > c.window ? c.lens[b] - c.window : 0;
      std::vector<int64_t> pos;
      for (int64_t i = first; i < c.lens[b]; ++i) pos.push_back(i);
      for (int h = 0; h < c.hq; ++h) {
        const size_t off = (size_t(b) * c.hkv + h / G) * c.max_len * c.d;
        cutest::ref_attention(&hq[(size_t(b) * c.hq + h) * c.d], &hk[off], &hv[off], pos, c.d, scale, c.t,
                              &ref[(size_t(b) * c.hq + h) * c.d]);
      }
    }
    // dense_decode, then every tuning the benchmark compares (dense_tuning_candidates).
    const auto tunings = cuda::dense_tuning_candidates();
    // A fused combine runs three times on one workspace, the third as a captured graph: its
    // tickets must be back at zero after each call (a graph replays the step on one workspace).
    for (size_t ti = 0; ti <= tunings.size(); ++ti) {
      cuda::DeviceBuffer<float> dout(hq.size());
      cuda::SplitWorkspace ws;
      const int calls = ti > 0 && tunings[ti - 1].fused ? 3 : 1;
      for (int call = 0; call < calls; ++call) {
        cutest::poison(dout);
        auto step = [&](cudaStream_t st) {
          if (ti == 0)
            cuda::dense_decode(s, dk.get(), dv.get(), c.max_len, dl.get(), dq.get(), scale, dout.get(), ws, st,
                               c.window);
          else
            cuda::dense_decode_tuned(s, dk.get(), dv.get(), c.max_len, dl.get(), dq.get(), scale, dout.get(), ws,
                                     tunings[ti - 1], st, c.window);
        };
        if (call == 2)
          cutest::run_as_graph(step);
        else
          step(0);
        SAAP_CU(cudaDeviceSynchronize());
        const auto out = cutest::download(dout);
        const double err = cutest::rel_error(out, ref);
        std::string what = (ti == 0 ? std::string("dense") : "dense " + tunings[ti - 1].name()) +
                           " b=" + std::to_string(c.batch) + " hq=" + std::to_string(c.hq) +
                           " hkv=" + std::to_string(c.hkv) + " d=" + std::to_string(c.d) +
                           (c.t == DType::BF16 ? " bf16" : " f16") + " maxlen=" + std::to_string(c.max_len) +
                           " window=" + std::to_string(c.window) +
                           (call == 1 ? " (2nd call, same workspace)" : call == 2 ? " (3rd, as a graph)" : "");
        tally.check(err < 1e-4, what.c_str(), err, 1e-4);
      }
    }
  }
  // Bad input is refused with an error, not a crash.
  bool threw = false;
  try {
    cuda::SplitWorkspace ws;
    cuda::dense_decode({1, 12, 8, 128, DType::BF16}, nullptr, nullptr, 1, nullptr, nullptr, 1.f, nullptr, ws);
  } catch (const Error& e) {
    threw = e.kind() == ErrorKind::InvalidArgument;
    std::printf("expected error: %s\n", e.what());
  }
  tally.check(threw, "12 query heads over 8 kv heads is refused (InvalidArgument)", threw, 1);
  // head_dim 96 has no kernel instantiation (dispatch.cuh: 64, 128, 256): refused, not run.
  threw = false;
  try {
    cuda::SplitWorkspace ws;
    cuda::dense_decode({1, 8, 2, 96, DType::BF16}, nullptr, nullptr, 1, nullptr, nullptr, 1.f, nullptr, ws);
  } catch (const Error& e) {
    threw = e.kind() == ErrorKind::Unsupported;
    std::printf("expected error: %s\n", e.what());
  }
  tally.check(threw, "head_dim 96 is refused (Unsupported)", threw, 1);
  // A negative window is a named error.
  threw = false;
  try {
    cuda::SplitWorkspace ws;
    cuda::dense_decode({1, 4, 1, 256, DType::BF16}, nullptr, nullptr, 1, nullptr, nullptr, 1.f, nullptr, ws, 0, -1);
  } catch (const Error& e) {
    threw = e.kind() == ErrorKind::InvalidArgument;
    std::printf("expected error: %s\n", e.what());
  }
  tally.check(threw, "window = -1 is refused (InvalidArgument)", threw, 1);
  // A tuning that does not parse, a dropped field (the cp.async ring), the tensor-core loop
  // without prefetch (no longer built), a bulk ring outside 2..8 stages, with a register loop, or
  // larger than the shared memory (8 stages of 32 KiB with mma at d = 128) is a named error.
  for (const char* bad : {"waves=x", "unroll=2", "waves", "stages=3", "mma=1", "mma=1;prefetch=0", "bulk=1",
                          "bulk=9", "bulk=-2", "bulk=4;prefetch=1", "bulk=4;mma=1;prefetch=1", "bulk=8;mma=1"}) {
    threw = false;
    try {
      cuda::SplitWorkspace ws;
      cuda::DeviceBuffer<float> buf(128);
      cuda::DeviceBuffer<int32_t> len(1);
      cuda::dense_decode_tuned({1, 1, 1, 128, DType::BF16}, buf.get(), buf.get(), 1, len.get(), buf.get(), 1.f,
                               buf.get(), ws, cuda::DenseTuning::parse(bad));
    } catch (const Error& e) {
      threw = e.kind() == ErrorKind::InvalidArgument;
      std::printf("expected error: %s\n", e.what());
    }
    tally.check(threw, (std::string("dense tuning '") + bad + "' is refused (InvalidArgument)").c_str(), threw, 1);
  }
  return tally.finish();
}
