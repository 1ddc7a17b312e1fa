// The CUDA runner as an evaluation backend (saap/eval/cuda_backend.h).
#include "saap/eval/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <utility>

#include "saap/core/error.h"
#include "saap/kernels/cuda/check.h"
#include "saap/model/cuda_llama.h"
#include "saap/model/gguf.h"
#include "saap/model/tokenizer.h"

namespace saap {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The runner's K/V reads (CudaLlamaModel::kv_reads: tokens per query and KV head, against the
// whole causal prefix) as LookupStats of bf16 bytes, split evenly over `sequences`: K/V, and as
// index bytes the K rows the oracle scores to decide plus the other indexes' bytes (router
// weights, centroids, page metadata, low-rank keys: KvReads::index_bytes). queries: the steps
// (each through every layer). The runner counts Gemma-3's global layers only, so there stats and
// global stats are both the global layers'.
LookupStats lookup_from_reads(const cuda::KvReads& r, const LlamaConfig& c, int64_t steps, int sequences) {
  LookupStats s;
  const double row_bytes = double(c.head_dim) * 2;  // one bf16 row of K or of V
  s.queries = steps * c.n_layers;
  s.kv_bytes = int64_t(r.kv_tokens * 2 * row_bytes / sequences);
  s.index_bytes = int64_t((r.index_tokens * row_bytes + r.index_bytes) / sequences);
  s.dense_bytes = int64_t(r.dense_tokens * 2 * row_bytes / sequences);
  return s;
}

class CudaEvalBackend : public EvalBackend {
 public:
  CudaEvalBackend(std::unique_ptr<cuda::CudaLlamaModel> model, Tokenizer tokenizer, std::string device_name)
      : model_(std::move(model)),
        tokenizer_(std::move(tokenizer)),
        device_name_(std::move(device_name)),
        method_(model_->options().method.describe()),
        dense_(model_->options().method.name == "dense") {}

  std::string device() const override { return "cuda"; }
  std::string device_name() const override { return device_name_; }
  const LlamaConfig& config() const override { return model_->config(); }
  const Tokenizer& tokenizer() const override { return tokenizer_; }
  const std::string& identity() const override { return model_->identity(); }
  std::string method() const override { return method_; }
  int max_batch() const override { return model_->options().max_batch; }
  int64_t max_context() const override { return model_->options().max_context; }

  void window_nll(const int32_t* windows, int batch, int64_t W, AttentionMode mode, double* nll, LookupStats* stats,
                  LookupStats* global_stats, const PositionProgress& progress) override {
    SAAP_CHECK_FMT(batch >= 1 && batch <= max_batch(), InvalidArgument, "batch = %d must be in [1, %d]", batch,
                   max_batch());
    SAAP_CHECK_FMT(W >= 2 && W <= max_context(), InvalidArgument, "window = %lld must be in [2, %lld]", (long long)W,
                   (long long)max_context());
    // The NLL of token t + 1 at position t, [batch][W] (NaN at W - 1), from the GPU's fp32 logits:
    // exact prefill, or every position through the method (teacher-forced decode).
    std::vector<float> per_position(size_t(batch) * size_t(W));
    if (mode == AttentionMode::MethodEverywhere && !dense_) {
      model_->reset_kv_reads();
      model_->method_nll(windows, batch, W, per_position.data());
      const LookupStats s = lookup_from_reads(model_->kv_reads(), config(), int64_t(batch) * (W - 1), 1);
      if (stats) *stats += s;
      if (global_stats) *global_stats += s;
    } else {
      model_->prefill(windows, batch, W, nullptr, per_position.data());
    }
    for (int b = 0; b < batch; ++b)
      for (int64_t t = 0; t + 1 < W; ++t) nll[int64_t(b) * (W - 1) + t] = per_position[size_t(b * W + t)];
    if (progress) progress(int64_t(batch) * (W - 1));
  }

  std::vector<GreedyResult> greedy(const std::vector<GreedyRequest>& requests, int max_new_tokens,
                                   bool method_prefill, const PositionProgress& progress) override {
    SAAP_CHECK_FMT(max_new_tokens >= 1, InvalidArgument, "max_new_tokens = %d must be >= 1", max_new_tokens);
    std::vector<GreedyResult> out(requests.size());
    // A batched prefill needs prompts of one length and feeds of one length: group them so.
    std::map<std::pair<size_t, size_t>, std::vector<size_t>> groups;
    for (size_t i = 0; i < requests.size(); ++i) {
      SAAP_CHECK_MSG(!requests[i].prompt.empty(), InvalidArgument, "a greedy request needs a prompt");
      const int64_t length = int64_t(requests[i].prompt.size() + requests[i].feed.size()) + max_new_tokens;
      SAAP_CHECK_FMT(length <= max_context(), InvalidArgument,
                     "request %zu needs %lld positions; the GPU cache holds %lld", i, (long long)length,
                     (long long)max_context());
      groups[{requests[i].prompt.size(), requests[i].feed.size()}].push_back(i);
    }
    int64_t done = 0;
    for (const auto& [shape, members] : groups) {
      const auto [P, F] = shape;
      for (size_t g0 = 0; g0 < members.size(); g0 += size_t(max_batch())) {
        const int B = int(std::min(members.size() - g0, size_t(max_batch())));
        std::vector<int32_t> tokens;
        for (int b = 0; b < B; ++b) {
          const auto& p = requests[members[g0 + size_t(b)]].prompt;
          tokens.insert(tokens.end(), p.begin(), p.end());
        }
        // method_prefill: every prompt position through the method (teacher-forced decode steps),
        // whose reads count as the CPU's MethodEverywhere counts them.
        model_->reset_kv_reads();
        if (method_prefill)
          model_->method_prefill(tokens.data(), B, int64_t(P));
        else
          model_->prefill(tokens.data(), B, int64_t(P));
        std::vector<int32_t> step(static_cast<size_t>(B));
        for (size_t f = 0; f < F; ++f) {
          for (int b = 0; b < B; ++b) step[size_t(b)] = requests[members[g0 + size_t(b)]].feed[f];
          model_->decode_step(step.data());
        }
        std::vector<bool> ended(static_cast<size_t>(B), false);
        for (int i = 0; i < max_new_tokens; ++i) {
          const std::vector<int32_t> next = model_->greedy_tokens();
          for (int b = 0; b < B; ++b) {
            if (ended[size_t(b)] || tokenizer_.is_end_of_generation(next[size_t(b)])) {
              ended[size_t(b)] = true;
              continue;
            }
            out[members[g0 + size_t(b)]].tokens.push_back(next[size_t(b)]);
          }
          if (i + 1 < max_new_tokens) model_->decode_step();  // each sequence's greedy token, on the device
        }
        const cuda::KvReads reads = model_->kv_reads();
        const int64_t steps = (method_prefill ? int64_t(P) : 0) + int64_t(F) + max_new_tokens - 1;
        for (int b = 0; b < B; ++b) {
          GreedyResult& r = out[members[g0 + size_t(b)]];
          r.stats = lookup_from_reads(reads, config(), steps, B);
          r.global_stats = r.stats;
        }
        done += int64_t(B) * int64_t(P + F + size_t(max_new_tokens));
        if (progress) progress(done);
      }
    }
    return out;
  }

  GenerateResult generate(const std::vector<int32_t>& prompt, int64_t max_new_tokens, Sampler& sampler,
                          const std::function<void(int32_t)>& on_token,
                          const PositionProgress& prefill_progress) override {
    const int64_t capacity = std::min<int64_t>(max_context(), int64_t(prompt.size()) + max_new_tokens);
    SAAP_CHECK_FMT(!prompt.empty() && int64_t(prompt.size()) < capacity, InvalidArgument,
                   "the prompt has %zu tokens, leaving no room in the context length of %lld", prompt.size(),
                   (long long)max_context());
    const int vocab = config().vocab_size;
    std::vector<float> logits(static_cast<size_t>(vocab));
    GenerateResult g;
    auto start = Clock::now();
    model_->prefill(prompt.data(), 1, int64_t(prompt.size()));  // waits for the GPU
    g.prefill_seconds = seconds_since(start);
    model_->reset_kv_reads();
    if (prefill_progress) prefill_progress(int64_t(prompt.size()));
    g.stop = "max-tokens";
    start = Clock::now();
    while (true) {
      model_->last_logits(logits.data());
      const int32_t next = sampler.sample(logits.data(), vocab);
      if (tokenizer_.is_end_of_generation(next)) {
        g.stop = "end-of-generation";
        break;
      }
      g.tokens.push_back(next);
      if (on_token) on_token(next);
      if (int64_t(g.tokens.size()) == max_new_tokens) break;
      if (model_->length() == capacity) {
        g.stop = "context-full";
        break;
      }
      model_->decode_step(&next);
      ++g.decode_steps;
    }
    model_->synchronize();
    g.decode_seconds = seconds_since(start);
    g.stats = lookup_from_reads(model_->kv_reads(), config(), g.decode_steps, 1);
    return g;
  }

  EndToEndTiming time_end_to_end(int batch, int64_t prompt_tokens, int decode_steps, int reps) override {
    SAAP_CHECK_FMT(batch >= 1 && batch <= max_batch() && prompt_tokens >= 1 && decode_steps >= 1 && reps >= 1,
                   InvalidArgument, "batch = %d (at most %d), prompt = %lld, decode steps = %d, reps = %d must be >= 1",
                   batch, max_batch(), (long long)prompt_tokens, decode_steps, reps);
    // + 1: the eager step that captures the decode graph comes before the timed steps.
    SAAP_CHECK_FMT(prompt_tokens + decode_steps + 1 <= max_context(), InvalidArgument,
                   "prompt %lld + %d decode steps + 1 exceed the GPU cache of %lld positions", (long long)prompt_tokens,
                   decode_steps, (long long)max_context());
    const std::vector<int32_t> one = bench_prompt_tokens(prompt_tokens, config().vocab_size);
    std::vector<int32_t> tokens;
    for (int b = 0; b < batch; ++b) tokens.insert(tokens.end(), one.begin(), one.end());
    // Prefill: host wall clock around the synchronised call (upload, every layer, logits), the
    // median of `reps` after a warm-up, as bench/cuda/e2e_bench does.
    std::vector<double> prefill_ms;
    for (int r = 0; r <= reps; ++r) {
      const auto t0 = Clock::now();
      model_->prefill(tokens.data(), batch, prompt_tokens);
      if (r > 0) prefill_ms.push_back(1e3 * seconds_since(t0));
    }
    std::sort(prefill_ms.begin(), prefill_ms.end());
    // Decode: one eager step captures the graph; then decode_steps graph launches timed by events.
    model_->decode_step();
    model_->synchronize();
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    SAAP_CU(cudaEventCreate(&e0));
    SAAP_CU(cudaEventCreate(&e1));
    float ms = 0;
    try {
      SAAP_CU(cudaEventRecord(e0, model_->stream()));
      for (int i = 0; i < decode_steps; ++i) model_->decode_step();
      SAAP_CU(cudaEventRecord(e1, model_->stream()));
      SAAP_CU(cudaEventSynchronize(e1));
      SAAP_CU(cudaEventElapsedTime(&ms, e0, e1));
    } catch (...) {
      cudaEventDestroy(e0);
      cudaEventDestroy(e1);
      throw;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    EndToEndTiming t;
    t.batch = batch;
    t.prompt_tokens = prompt_tokens;
    t.decode_steps = decode_steps;
    t.prefill_ms = prefill_ms[prefill_ms.size() / 2];
    t.decode_tok_s = double(batch) * decode_steps / (double(ms) / 1e3);
    return t;
  }

 private:
  std::unique_ptr<cuda::CudaLlamaModel> model_;
  Tokenizer tokenizer_;
  std::string device_name_, method_;
  bool dense_;
};

}  // namespace

CudaDeviceStatus cuda_device_status() {
  CudaDeviceStatus s;
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    cudaGetLastError();  // clear the sticky error
    s.reason = std::string("no CUDA device (") + (e == cudaSuccess ? "0 devices" : cudaGetErrorString(e)) + ")";
    return s;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    cudaGetLastError();
    s.reason = "no CUDA device (device 0 cannot be queried)";
    return s;
  }
  s.name = prop.name;
  s.major = prop.major;
  s.minor = prop.minor;
  if (prop.major < 9) {
    s.reason = format("GPU %s has compute capability %d.%d; saap's CUDA kernels are built for sm_90 (Hopper) and newer",
                      prop.name, prop.major, prop.minor);
    return s;
  }
  s.usable = true;
  return s;
}

std::unique_ptr<EvalBackend> make_cuda_eval_backend(const std::string& gguf_path, const CudaBackendOptions& options) {
  // The method's spec is checked before the machine (the same answer on every machine); the
  // runner checks the rest at load (a method without a GPU path: Unsupported, by name).
  check_method_spec(options.method);
  const CudaDeviceStatus status = cuda_device_status();
  SAAP_CHECK_FMT(status.usable, Unsupported, "--device cuda: %s", status.reason.c_str());
  const GGUFFile file = GGUFFile::open(gguf_path);
  Tokenizer tokenizer = Tokenizer::from_gguf(file);
  cuda::CudaLlamaOptions o;
  o.max_batch = options.max_batch;
  o.max_context = options.max_context;
  o.method = options.method;
  if (o.max_context == 0) {  // the model's context, read from the file the runner will read
    const std::string arch = file.get_string("general.architecture");
    o.max_context = file.get_int(arch + ".context_length");
  }
  auto model = cuda::CudaLlamaModel::load(gguf_path, o);
  return std::make_unique<CudaEvalBackend>(std::move(model), std::move(tokenizer), status.name);
}

}  // namespace saap
