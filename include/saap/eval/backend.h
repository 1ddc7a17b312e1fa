// The model runner behind the evaluation harness (perplexity, passkey, generation, the end-to-end
// bench): one interface, two devices. CpuEvalBackend (below) runs the fp32 CPU runner with any
// method of the registry; the CUDA runner's backend (saap/eval/cuda_backend.h, library
// saap_eval_cuda) runs the bf16 GPU runner. The harness is written once against this interface,
// so both devices produce the same result files; they differ in the "device" field.
//
// A backend is one model running one attention method (the factory, or the CUDA runner's method):
// the method is fixed when the backend is made, as the GPU runner builds its indexes at load.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "saap/model/llama.h"
#include "saap/model/sampler.h"

namespace saap {

// Called with the number of positions (tokens run through the model) done so far in the call.
using PositionProgress = std::function<void(int64_t)>;

// One greedy continuation: `prompt` is run as a prefill (exact attention, or through the method
// when the call asks for it), then every token of `feed` one at a time through the method, then up
// to max_new_tokens greedy tokens (the first chosen from the logits after the last fed token).
struct GreedyRequest {
  std::vector<int32_t> prompt;  // >= 1 token
  std::vector<int32_t> feed;    // may be empty
};
struct GreedyResult {
  std::vector<int32_t> tokens;  // generated, up to (not including) an end-of-generation token
  LookupStats stats;            // what the method read for this sequence
  LookupStats global_stats;     // the same over the global layers (Gemma-3's; all layers for Llama)
};

// One sampled generation (saap generate).
struct GenerateResult {
  std::vector<int32_t> tokens;   // generated, without an end-of-generation token
  std::string stop;              // "max-tokens", "end-of-generation" or "context-full"
  double prefill_seconds = 0;
  double decode_seconds = 0;
  int64_t decode_steps = 0;      // forward passes after the prefill
  LookupStats stats;             // what the method read per decode step
};

// End-to-end speed at one (batch, prompt length): prefill of `batch` prompts, then decode steps.
struct EndToEndTiming {
  int batch = 0;
  int64_t prompt_tokens = 0;
  int decode_steps = 0;
  double prefill_ms = 0;       // median over the reps, all sequences of the batch
  double decode_tok_s = 0;     // batch * decode_steps / decode time
};

class EvalBackend {
 public:
  virtual ~EvalBackend() = default;
  // "cpu" or "cuda", and what the device is ("NVIDIA H200", the CPU's model name).
  virtual std::string device() const = 0;
  virtual std::string device_name() const = 0;
  virtual const LlamaConfig& config() const = 0;
  virtual const Tokenizer& tokenizer() const = 0;
  virtual const std::string& identity() const = 0;  // the model's (LlamaModel::identity)
  // The method as MethodSpec::describe() or "dense".
  virtual std::string method() const = 0;
  // Sequences one call takes at once (the harness groups its work by this) and the longest
  // sequence (prompt + fed + generated tokens) it can hold.
  virtual int max_batch() const = 0;
  virtual int64_t max_context() const = 0;

  // windows: `batch` sequences of W tokens each, [batch][W]. nll [batch][W - 1] receives the
  // negative log-likelihood (nats) of token t + 1 after reading tokens 0..t. Exact prefill
  // (AttentionMode::DensePrefill) or every position through the method (MethodEverywhere).
  // stats/global_stats accumulate what the method read (global: Gemma-3's global layers only).
  virtual void window_nll(const int32_t* windows, int batch, int64_t W, AttentionMode mode, double* nll,
                          LookupStats* stats, LookupStats* global_stats, const PositionProgress& progress) = 0;

  // Greedy continuations of up to max_batch() requests. method_prefill: the prompts go through the
  // method too (MethodEverywhere) instead of exact prefill.
  virtual std::vector<GreedyResult> greedy(const std::vector<GreedyRequest>& requests, int max_new_tokens,
                                           bool method_prefill, const PositionProgress& progress) = 0;

  // Exact prefill of `prompt`, then sampling until end of generation, max_new_tokens or a full
  // context (max_context()). on_token sees each token as it is chosen; prefill_progress the
  // prefill's positions.
  virtual GenerateResult generate(const std::vector<int32_t>& prompt, int64_t max_new_tokens, Sampler& sampler,
                                  const std::function<void(int32_t)>& on_token,
                                  const PositionProgress& prefill_progress) = 0;

  // Speed: `batch` prompts of prompt_tokens fixed pseudo-random tokens, prefilled `reps` times
  // after a warm-up, then decode_steps greedy steps.
  virtual EndToEndTiming time_end_to_end(int batch, int64_t prompt_tokens, int decode_steps, int reps) = 0;

  // {"device": ..., "device_name": ...}: what every result document of the harness carries.
  nlohmann::json device_json() const { return {{"device", device()}, {"device_name", device_name()}}; }
};

// The fp32 CPU runner (LlamaSession) with `methods` (null: dense). One sequence at a time;
// chunk: tokens per forward call of a perplexity window (bounds the chunk x vocab logits buffer).
class CpuEvalBackend : public EvalBackend {
 public:
  CpuEvalBackend(std::shared_ptr<const LlamaModel> model, MethodFactory methods, std::string method_name,
                 int64_t chunk = 512);
  std::string device() const override { return "cpu"; }
  std::string device_name() const override;
  const LlamaConfig& config() const override { return model_->config(); }
  const Tokenizer& tokenizer() const override { return model_->tokenizer(); }
  const std::string& identity() const override { return model_->identity(); }
  std::string method() const override { return method_name_; }
  int max_batch() const override { return 1; }
  int64_t max_context() const override { return model_->config().context_length; }
  void window_nll(const int32_t* windows, int batch, int64_t W, AttentionMode mode, double* nll, LookupStats* stats,
                  LookupStats* global_stats, const PositionProgress& progress) override;
  std::vector<GreedyResult> greedy(const std::vector<GreedyRequest>& requests, int max_new_tokens,
                                   bool method_prefill, const PositionProgress& progress) override;
  GenerateResult generate(const std::vector<int32_t>& prompt, int64_t max_new_tokens, Sampler& sampler,
                          const std::function<void(int32_t)>& on_token,
                          const PositionProgress& prefill_progress) override;
  EndToEndTiming time_end_to_end(int batch, int64_t prompt_tokens, int decode_steps, int reps) override;
  const std::shared_ptr<const LlamaModel>& model() const { return model_; }

 private:
  // A session of at least `capacity` positions in `mode`, reset (kept between calls).
  LlamaSession& session(int64_t capacity, AttentionMode mode);
  std::shared_ptr<const LlamaModel> model_;
  MethodFactory methods_;
  std::string method_name_;
  int64_t chunk_;
  std::unique_ptr<LlamaSession> session_;
};

// The fixed pseudo-random prompt of the end-to-end bench: n token ids in [0, vocab), the same on
// every device (speed does not depend on the text).
std::vector<int32_t> bench_prompt_tokens(int64_t n, int32_t vocab);

}  // namespace saap
