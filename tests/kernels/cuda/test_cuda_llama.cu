// The CUDA model runner against the fp32 CPU runner, on the real model (env SAAP_MODEL_PATH, the
// SmolLM2-135M-Instruct GGUF). The CPU logits of two 64-token prompts are precomputed in
// tests/model/data/cuda_reference_logits.txt (kept current by tests/model/test_cuda_reference.cpp).
//
// What runs, all at batch 3 = [prompt 0, prompt 1, prompt 0] (a mixed-up sequence would fail):
//   1. prefill of the 64 tokens with every position's logits: tensor-core attention in one chunk,
//      tensor-core attention in chunks of 24 tokens (later chunks attend to the cache), and the
//      CUDA-core attention kernel;
//   2. prefill of 32 tokens, then 32 teacher-forced decode steps (the first eager, the rest CUDA
//      graph replays), each step's logits compared at its position;
//   3. greedy decode: the device's argmax equals the host's argmax of the same logits;
//   4. bad input is refused with InvalidArgument.
// Tolerance (bf16 weights and GEMM inputs vs fp32 everywhere): bf16 keeps 8 significant bits
// (relative rounding up to 2^-9 = 0.2%); with ~8 rounded GEMM inputs per layer over 30 layers the
// hidden state drifts by ~1-3%, and the logits (|logit| up to ~30) by up to ~1. Limits: per
// position max |Δlogit| over the CPU's top-32 ids <= 1.0, RMS over all compared logits <= 0.25,
// |Δ log-sum-exp| <= 0.5, mean |Δ NLL of the next token| <= 0.05 nats, top-1 identical on >= 99%
// of the positions where the CPU's top two differ by more than 0.2 (raw agreement printed).
// Calibration (scripts/bf16_emulation.py): a NumPy float32 forward pass over the same prompts
// with the runner's bf16 roundings (weights, GEMM inputs, q/K/V, P before P·V, attention output)
// gave max |Δlogit| 0.43, RMS 0.071, |Δ log-sum-exp| 0.29, mean |Δ NLL| 0.011 and no top-1 flip
// against this file (the same pass without the roundings: 6e-5), so the limits leave about 2x room
// and still catch a wrong kernel. Rounding the Q/K/V and gate/up projection outputs to bf16 too
// (--numerics bf16-proj, what the runner does) gave max 0.34, RMS 0.076, 0.27, 0.012: no worse in
// the max, 7% in the RMS. (The H200 measured max 0.91, RMS 0.081 before that change.)
// Exit 77 without a GPU or without SAAP_MODEL_PATH, unless SAAP_REQUIRE_GPU=1.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_test_util.h"
#include "model/cuda_reference.h"
#include "saap/core/error.h"
#include "saap/model/cuda_generate.h"
#include "saap/model/cuda_llama.h"

using namespace saap;

namespace {

// No model file: skipped (77), or a failure under SAAP_REQUIRE_GPU=1 (the GPU run must test it).
void skip_without_model() {
  const char* r = std::getenv("SAAP_REQUIRE_GPU");
  const bool required = r && std::string(r) == "1";
  std::printf("SAAP_MODEL_PATH is not set: %s\n", required ? "FAIL (SAAP_REQUIRE_GPU=1)" : "skipped");
  std::exit(required ? 1 : 77);
}

// Accumulates the comparison of GPU logits with the CPU reference over positions.
struct Compare {
  // A flip of the top-1 token where the CPU's top two are closer than this is a near-tie that
  // bf16 noise may turn either way (the reference prompts hold 5 of 128 such positions): it is
  // printed and counted in the raw agreement, and the >= 99% rule applies to the other positions.
  static constexpr double kTieMargin = 0.2;
  int positions = 0, top1_same = 0, decisive = 0, decisive_same = 0;
  double max_top_diff = 0, sq_sum = 0, max_lse_diff = 0, nll_abs_sum = 0;
  int64_t count = 0, nll_count = 0;
  void add(const float* logits, int vocab, const testref::PositionRef& ref, int pos, const char* label) {
    const testref::PositionRef gpu = testref::summarize(logits, vocab, 1, -1);
    ++positions;
    const bool same = gpu.top_ids[0] == ref.top_ids[0];
    top1_same += same;
    if (double(ref.top_logits[0] - ref.top_logits[1]) > kTieMargin) {
      ++decisive;
      decisive_same += same;
    }
    if (!same) {
      std::printf("  %s position %d: top-1 %d (GPU) vs %d (CPU); CPU margin to its second %.4f\n", label, pos,
                  gpu.top_ids[0], ref.top_ids[0], double(ref.top_logits[0] - ref.top_logits[1]));
    }
    double worst = 0;
    for (size_t k = 0; k < ref.top_ids.size(); ++k) {
      const double d = double(logits[ref.top_ids[k]]) - ref.top_logits[k];
      worst = std::max(worst, std::fabs(d));
      sq_sum += d * d;
      ++count;
    }
    max_top_diff = std::max(max_top_diff, std::isnan(worst) ? INFINITY : worst);
    max_lse_diff = std::max(max_lse_diff, std::fabs(gpu.lse - ref.lse));
  }
  void add_nll(double gpu_nll, double cpu_nll) {
    nll_abs_sum += std::fabs(gpu_nll - cpu_nll);
    ++nll_count;
  }
  void report(cutest::Tally& tally, const std::string& what) const {
    const double rms = std::sqrt(sq_sum / double(std::max<int64_t>(count, 1)));
    const double agree = double(decisive_same) / std::max(decisive, 1);
    const double nll = nll_abs_sum / double(std::max<int64_t>(nll_count, 1));
    std::printf("%s: top-1 same at %d of %d positions (%d of %d with a CPU margin > %.2f)\n", what.c_str(),
                top1_same, positions, decisive_same, decisive, kTieMargin);
    tally.check(agree >= 0.99, (what + ": top-1 agreement, margin > 0.2").c_str(), agree, 0.99);
    tally.check(max_top_diff <= 1.0, (what + ": max |dlogit| over CPU top-32").c_str(), max_top_diff, 1.0);
    tally.check(rms <= 0.25, (what + ": RMS dlogit over CPU top-32").c_str(), rms, 0.25);
    tally.check(max_lse_diff <= 0.5, (what + ": max |d log-sum-exp|").c_str(), max_lse_diff, 0.5);
    tally.check(nll_count > 0 && nll <= 0.05, (what + ": mean |d NLL(next token)|").c_str(), nll, 0.05);
  }
};

}  // namespace

int main() {
  cutest::require_gpu();
  const char* model_path = std::getenv("SAAP_MODEL_PATH");
  if (!model_path || !*model_path) skip_without_model();
  cutest::Tally tally;
  const testref::LogitsRef ref = testref::read_reference(testref::reference_path(SAAP_SOURCE_DIR));
  const int n = int(ref.prompts[0].tokens.size());
  const std::vector<int> order = {0, 1, 0};  // the batch's prompts
  const int B = int(order.size());
  std::vector<int32_t> tokens;
  for (int p : order) tokens.insert(tokens.end(), ref.prompts[size_t(p)].tokens.begin(), ref.prompts[size_t(p)].tokens.end());
  std::printf("reference: %s, %zu prompts x %d tokens, top-%d\n", ref.model.c_str(), ref.prompts.size(), n, ref.topk);

  // Compares logits [B][positions][vocab] of positions p0 .. p0 + count - 1 with the reference.
  auto compare_all = [&](const std::vector<float>& logits, int vocab, int p0, int count, int stride, Compare& cmp,
                         const char* label) {
    for (int b = 0; b < B; ++b) {
      const testref::PromptRef& pr = ref.prompts[size_t(order[size_t(b)])];
      for (int i = 0; i < count; ++i) {
        const int pos = p0 + i;
        const float* l = &logits[(size_t(b) * stride + i) * vocab];
        cmp.add(l, vocab, pr.positions[size_t(pos)], pos, label);
        if (pos + 1 < n) {
          double mx = -INFINITY, sum = 0;
          for (int j = 0; j < vocab; ++j) mx = std::max(mx, double(l[j]));
          for (int j = 0; j < vocab; ++j) sum += std::exp(double(l[j]) - mx);
          const double gpu_nll = mx + std::log(sum) - l[pr.tokens[size_t(pos + 1)]];
          const double cpu_nll = pr.positions[size_t(pos)].lse - pr.positions[size_t(pos)].next_logit;
          cmp.add_nll(gpu_nll, cpu_nll);
        }
      }
    }
  };

  std::vector<float> tc_logits;
  struct Setup {
    const char* name;
    int64_t prefill_rows;
    cuda::PrefillKernel kernel;
    bool gemm_autotune = true;  // the runner's default
    int64_t mlp_rows = 0;
  };
  const Setup setups[] = {{"prefill, tensor-core attention, one chunk", 1 << 15, cuda::PrefillKernel::TensorCore},
                          {"prefill, tensor-core attention, chunks of 24", 24 * 3, cuda::PrefillKernel::TensorCore},
                          {"prefill, tensor-core-128 attention, one chunk", 1 << 15, cuda::PrefillKernel::TensorCore128},
                          {"prefill, tcw32 attention, chunks of 24", 24 * 3, cuda::PrefillKernel::TensorCoreWarp32},
                          {"prefill, auto attention (tcw32), one chunk", 1 << 15, cuda::PrefillKernel::Auto},
                          {"prefill, cuBLAS's GEMM choice, chunks of 24", 24 * 3, cuda::PrefillKernel::TensorCore, false},
                          {"prefill, MLP in slices of 40 rows", 1 << 15, cuda::PrefillKernel::TensorCore, true, 40},
                          {"prefill, CUDA-core attention, one chunk", 1 << 15, cuda::PrefillKernel::Simple}};
  for (const Setup& s : setups) {
    cuda::CudaLlamaOptions o;
    o.max_batch = B;
    o.max_context = 2 * n;
    o.max_prefill_rows = s.prefill_rows;
    o.prefill_kernel = s.kernel;
    o.gemm_autotune = s.gemm_autotune;
    o.mlp_rows = s.mlp_rows;
    auto model = cuda::CudaLlamaModel::load(model_path, o);
    const int V = model->config().vocab_size;
    std::vector<float> logits(size_t(B) * n * V), nll(size_t(B) * n);
    model->prefill(tokens.data(), B, n, logits.data(), nll.data());
    Compare cmp;
    compare_all(logits, V, 0, n, n, cmp, s.name);
    cmp.report(tally, s.name);
    // The device's next-token NLL (perplexity) is the float64 NLL of the logits it returned.
    double nll_diff = 0;
    bool last_nan = true;
    for (int b = 0; b < B; ++b) {
      last_nan = last_nan && std::isnan(nll[size_t(b) * n + n - 1]);
      for (int t = 0; t + 1 < n; ++t) {
        const float* l = &logits[(size_t(b) * n + t) * V];
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < V; ++j) mx = std::max(mx, double(l[j]));
        for (int j = 0; j < V; ++j) sum += std::exp(double(l[j]) - mx);
        const double host = mx + std::log(sum) - l[tokens[size_t(b) * n + t + 1]];
        const double d = std::fabs(nll[size_t(b) * n + t] - host);
        nll_diff = std::max(nll_diff, std::isnan(d) ? INFINITY : d);
      }
    }
    // fp32 log-sum-exp over 49k terms vs float64: a few ulps of values ~10-30.
    tally.check(nll_diff <= 1e-3 && last_nan, (std::string(s.name) + ": device NLL == host NLL of its logits").c_str(),
                nll_diff, 1e-3);
    // The last-position logits kept on the device are the same rows.
    std::vector<float> last(size_t(B) * V);
    model->last_logits(last.data());
    double d = 0;
    for (int b = 0; b < B; ++b)
      for (int j = 0; j < V; ++j)
        d = std::max(d, double(std::fabs(last[size_t(b) * V + j] - logits[(size_t(b) * n + n - 1) * V + j])));
    tally.check(d <= 1e-3, (std::string(s.name) + ": last_logits == last row of all logits").c_str(), d, 1e-3);
    if (s.kernel == cuda::PrefillKernel::TensorCore && s.prefill_rows == (1 << 15) && s.gemm_autotune &&
        s.mlp_rows == 0)
      tc_logits = logits;
  }

  {
    cuda::CudaLlamaOptions o;
    o.max_batch = B;
    o.max_context = 2 * n;
    auto model = cuda::CudaLlamaModel::load(model_path, o);
    const int V = model->config().vocab_size;
    const int half = n / 2;
    std::vector<int32_t> head;
    for (int b = 0; b < B; ++b) head.insert(head.end(), tokens.begin() + size_t(b) * n, tokens.begin() + size_t(b) * n + half);
    Compare cmp;
    std::vector<float> step(size_t(B) * V);
    double vs_prefill = 0;
    // Batch 1 first (prompt 1), so that the batch-3 run below must drop and recapture the graph.
    {
      const testref::PromptRef& pr = ref.prompts[1];
      model->prefill(pr.tokens.data(), 1, half);
      Compare one;
      for (int pos = half; pos < half + 4; ++pos) {
        model->decode_step(&pr.tokens[size_t(pos)]);
        model->last_logits(step.data());
        one.add(step.data(), V, pr.positions[size_t(pos)], pos, "batch-1 decode");
      }
      std::printf("batch-1 decode: top-1 same at %d of %d positions, max |dlogit| over CPU top-32 %.4g\n",
                  one.top1_same, one.positions, one.max_top_diff);
      tally.check(one.max_top_diff <= 1.0, "batch-1 decode steps: max |dlogit| over CPU top-32", one.max_top_diff, 1.0);
    }
    model->prefill(head.data(), B, half);
    for (int pos = half; pos < n; ++pos) {
      std::vector<int32_t> in(static_cast<size_t>(B));
      for (int b = 0; b < B; ++b) in[size_t(b)] = tokens[size_t(b) * n + pos];
      model->decode_step(in.data());
      model->last_logits(step.data());
      compare_all(step, V, pos, 1, 1, cmp, "decode");
      for (int b = 0; b < B && !tc_logits.empty(); ++b)
        for (int j = 0; j < V; ++j)
          vs_prefill = std::max(vs_prefill, double(std::fabs(step[size_t(b) * V + j] - tc_logits[(size_t(b) * n + pos) * V + j])));
    }
    cmp.report(tally, "decode steps (graph replay), teacher-forced");
    std::printf("decode vs tensor-core prefill logits, max |d| = %.4g\n", vs_prefill);
    tally.check(model->length() == n, "length after prefill + decode steps", double(model->length()), n);

    // Greedy steps: the device's argmax is the host's argmax of the logits it left.
    int same = 0;
    const int steps = 8;
    for (int i = 0; i < steps && model->length() < o.max_context; ++i) {
      model->decode_step();
      model->last_logits(step.data());
      const std::vector<int32_t> chosen = model->greedy_tokens();
      for (int b = 0; b < B; ++b) {
        const float* l = &step[size_t(b) * V];
        const int host = int(std::max_element(l, l + V) - l);
        same += host == chosen[size_t(b)];
      }
    }
    tally.check(same == steps * B, "greedy decode: device argmax == host argmax", same, steps * B);

    // generate(): greedy through the host Sampler equals the device's greedy chain; sampling at a
    // temperature is reproducible for a seed.
    {
      const std::vector<int32_t> prompt(ref.prompts[0].tokens.begin(), ref.prompts[0].tokens.begin() + half);
      Sampler greedy(SamplerConfig{});
      std::vector<int32_t> streamed;
      const std::vector<int32_t> gen =
          cuda::generate(*model, prompt, 12, greedy, [&](int32_t t) { return streamed.push_back(t), true; });
      model->prefill(prompt.data(), 1, half);
      std::vector<int32_t> chain = model->greedy_tokens();
      for (int i = 1; i < 12; ++i) {
        model->decode_step();
        chain.push_back(model->greedy_tokens()[0]);
      }
      tally.check(gen == chain && streamed == gen, "generate (greedy, host Sampler) == device greedy chain, streamed",
                  double(gen == chain), 1);
      SamplerConfig hot;
      hot.temperature = 0.8f;
      hot.top_p = 0.9f;
      hot.seed = 7;
      Sampler s1(hot), s2(hot);
      const auto a = cuda::generate(*model, prompt, 12, s1), b = cuda::generate(*model, prompt, 12, s2);
      tally.check(a == b && a.size() == 12, "generate (temperature 0.8, top-p 0.9, seed 7) is reproducible",
                  double(a == b), 1);
    }

    // Bad input: named errors, nothing run.
    auto refused = [&](const char* what, auto&& fn) {
      bool ok = false;
      try {
        fn();
      } catch (const Error& e) {
        ok = e.kind() == ErrorKind::InvalidArgument;
        std::printf("expected error: %s\n", e.what());
      }
      tally.check(ok, what, ok, 1);
    };
    std::vector<int32_t> bad = tokens;
    bad[5] = V;
    refused("token id = vocab is refused", [&] { model->prefill(bad.data(), B, n); });
    refused("batch > max_batch is refused", [&] { model->prefill(tokens.data(), B + 1, 1); });
    refused("prompt longer than max_context is refused", [&] {
      std::vector<int32_t> longer(size_t(2 * n + 1), tokens[0]);
      model->prefill(longer.data(), 1, 2 * n + 1);
    });
    std::vector<int32_t> fill(size_t(2 * n), tokens[0]);
    model->prefill(fill.data(), 1, 2 * n);
    refused("a decode step past max_context is refused", [&] { model->decode_step(); });
  }
  {
    // A cache larger than the GPU: a named OutOfMemory before any cache allocation (65535 x 8192
    // tokens x 30 layers x 2 x 3 heads x 64 dims x 2 bytes = 11.6 TB).
    cuda::CudaLlamaOptions o;
    o.max_batch = 65535;
    o.max_context = 8192;
    bool ok = false;
    try {
      cuda::CudaLlamaModel::load(model_path, o);
    } catch (const Error& e) {
      ok = e.kind() == ErrorKind::OutOfMemory;
      std::printf("expected error: %s\n", e.what());
    }
    tally.check(ok, "a KV cache larger than the free GPU memory is refused (OutOfMemory)", ok, 1);
  }
  return tally.finish();
}
