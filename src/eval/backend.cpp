// The CPU runner as an evaluation backend (saap/eval/backend.h).
#include "saap/eval/backend.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>

#include "saap/core/error.h"

namespace saap {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// -log softmax(logits)[target], in double.
double token_nll(const float* logits, int32_t vocab, int32_t target) {
  const float top = *std::max_element(logits, logits + vocab);
  double sum = 0;
  for (int32_t j = 0; j < vocab; ++j) sum += std::exp(double(logits[j]) - double(top));
  return std::log(sum) + double(top) - double(logits[target]);
}

int32_t argmax(const std::vector<float>& v) { return int32_t(std::max_element(v.begin(), v.end()) - v.begin()); }

// Runs tokens through the session in chunks (bounding the activations and moving the progress).
void run_chunks(LlamaSession& s, const int32_t* tokens, int64_t n, float* logits, int64_t chunk, int64_t done_before,
                const PositionProgress& progress) {
  for (int64_t t = 0; t < n; t += chunk) {
    const int64_t m = std::min(chunk, n - t);
    s.forward(tokens + t, m, logits);
    if (progress) progress(done_before + t + m);
  }
}

}  // namespace

std::vector<int32_t> bench_prompt_tokens(int64_t n, int32_t vocab) {
  std::vector<int32_t> tokens(size_t(std::max<int64_t>(n, 0)));
  uint32_t x = 12345;  // a linear congruential sequence: the same prompt on every device and run
  for (auto& t : tokens) {
    x = x * 1664525u + 1013904223u;
    t = int32_t((x >> 8) % uint32_t(vocab));
  }
  return tokens;
}

CpuEvalBackend::CpuEvalBackend(std::shared_ptr<const LlamaModel> model, MethodFactory methods, std::string method_name,
                               int64_t chunk)
    : model_(std::move(model)), methods_(std::move(methods)), method_name_(std::move(method_name)), chunk_(chunk) {
  SAAP_CHECK_MSG(model_ != nullptr, InvalidArgument, "CpuEvalBackend needs a model");
  SAAP_CHECK_FMT(chunk_ >= 2, InvalidArgument, "chunk = %lld must be >= 2", (long long)chunk_);
}

std::string CpuEvalBackend::device_name() const {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) {
      std::string name = line.substr(line.find(':') + 1);
      name.erase(0, name.find_first_not_of(' '));
      return name;
    }
  return "cpu";
}

LlamaSession& CpuEvalBackend::session(int64_t capacity, AttentionMode mode) {
  // The methods are built for the session's capacity: a session is remade, never stretched, so a
  // run sees the sessions it would have made on its own.
  if (!session_ || session_->cache().shape().capacity != capacity || session_->mode() != mode)
    session_ = std::make_unique<LlamaSession>(model_, capacity, methods_, mode);
  else
    session_->reset();
  return *session_;
}

void CpuEvalBackend::window_nll(const int32_t* windows, int batch, int64_t W, AttentionMode mode, double* nll,
                                LookupStats* stats, LookupStats* global_stats, const PositionProgress& progress) {
  SAAP_CHECK_FMT(W >= 2 && W <= max_context(), InvalidArgument, "window = %lld must be in [2, context length %lld]",
                 (long long)W, (long long)max_context());
  const int32_t vocab = config().vocab_size;
  std::vector<float> logits(size_t(std::min(chunk_ + 1, W)) * size_t(vocab));  // + the folded token
  const int64_t inputs = W - 1;
  for (int b = 0; b < batch; ++b) {
    const int32_t* window = windows + int64_t(b) * W;
    LlamaSession& s = session(W, mode);
    for (int64_t begin = 0; begin < inputs;) {
      int64_t end = std::min(inputs, begin + chunk_);
      // A lone final token would be a decode step, which DensePrefill runs through the method:
      // fold it into this chunk so that every chunk is an exact prefill there.
      if (inputs - end == 1) end = inputs;
      s.forward(window + begin, end - begin, logits.data(), /*all_logits=*/true);
      for (int64_t i = begin; i < end; ++i)
        nll[int64_t(b) * inputs + i] = token_nll(&logits[size_t(i - begin) * size_t(vocab)], vocab, window[i + 1]);
      begin = end;
      if (progress) progress(int64_t(b) * inputs + end);
    }
    if (stats) *stats += s.stats();
    if (global_stats) *global_stats += s.global_stats();
  }
}

std::vector<GreedyResult> CpuEvalBackend::greedy(const std::vector<GreedyRequest>& requests, int max_new_tokens,
                                                 bool method_prefill, const PositionProgress& progress) {
  SAAP_CHECK_FMT(max_new_tokens >= 1, InvalidArgument, "max_new_tokens = %d must be >= 1", max_new_tokens);
  const AttentionMode mode = method_prefill ? AttentionMode::MethodEverywhere : AttentionMode::DensePrefill;
  std::vector<float> logits(size_t(config().vocab_size));
  std::vector<GreedyResult> out;
  int64_t done = 0;
  for (const GreedyRequest& r : requests) {
    SAAP_CHECK_MSG(!r.prompt.empty(), InvalidArgument, "a greedy request needs a prompt of at least one token");
    const int64_t length = int64_t(r.prompt.size() + r.feed.size()) + max_new_tokens;
    LlamaSession& s = session(length, mode);
    // Chunks of 512 bound the activation memory and keep the progress moving; in DensePrefill
    // mode each chunk is exact causal attention over everything cached before it.
    run_chunks(s, r.prompt.data(), int64_t(r.prompt.size()), logits.data(), 512, done, progress);
    for (int32_t id : r.feed) s.forward(&id, 1, logits.data());
    GreedyResult g;
    for (int i = 0; i < max_new_tokens; ++i) {
      const int32_t next = argmax(logits);
      if (tokenizer().is_end_of_generation(next)) break;
      g.tokens.push_back(next);
      if (i + 1 < max_new_tokens) s.forward(&next, 1, logits.data());
    }
    g.stats = s.stats();
    g.global_stats = s.global_stats();
    out.push_back(std::move(g));
    done += length;
    if (progress) progress(done);
  }
  return out;
}

GenerateResult CpuEvalBackend::generate(const std::vector<int32_t>& prompt, int64_t max_new_tokens, Sampler& sampler,
                                        const std::function<void(int32_t)>& on_token,
                                        const PositionProgress& prefill_progress) {
  const int64_t capacity = std::min<int64_t>(max_context(), int64_t(prompt.size()) + max_new_tokens);
  SAAP_CHECK_FMT(!prompt.empty() && int64_t(prompt.size()) < capacity, InvalidArgument,
                 "the prompt has %zu tokens, leaving no room in the context length of %lld", prompt.size(),
                 (long long)max_context());
  LlamaSession& s = session(capacity, AttentionMode::DensePrefill);
  const int32_t vocab = config().vocab_size;
  std::vector<float> logits(static_cast<size_t>(vocab));
  GenerateResult g;
  auto start = Clock::now();
  // Every layer runs over all the prompt's tokens, so the share of layers done is the share of the work.
  const int64_t n = int64_t(prompt.size());
  if (prefill_progress) s.set_progress([&](int done, int layers) { prefill_progress(n * done / layers); });
  try {
    s.forward(prompt.data(), n, logits.data());
  } catch (...) {
    s.set_progress(nullptr);
    throw;
  }
  s.set_progress(nullptr);
  g.prefill_seconds = seconds_since(start);
  g.stop = "max-tokens";
  start = Clock::now();
  while (true) {
    const int32_t next = sampler.sample(logits.data(), vocab);
    if (tokenizer().is_end_of_generation(next)) {
      g.stop = "end-of-generation";
      break;
    }
    g.tokens.push_back(next);
    if (on_token) on_token(next);
    if (int64_t(g.tokens.size()) == max_new_tokens) break;
    if (s.length() == capacity) {
      g.stop = "context-full";
      break;
    }
    s.forward(&next, 1, logits.data());
    ++g.decode_steps;
  }
  g.decode_seconds = seconds_since(start);
  g.stats = s.stats();
  return g;
}

EndToEndTiming CpuEvalBackend::time_end_to_end(int batch, int64_t prompt_tokens, int decode_steps, int reps) {
  SAAP_CHECK_FMT(batch >= 1 && prompt_tokens >= 1 && decode_steps >= 1 && reps >= 1, InvalidArgument,
                 "batch = %d, prompt = %lld, decode steps = %d, reps = %d must each be >= 1", batch,
                 (long long)prompt_tokens, decode_steps, reps);
  SAAP_CHECK_FMT(prompt_tokens + decode_steps <= max_context(), InvalidArgument,
                 "prompt %lld + %d decode steps exceed the context length %lld", (long long)prompt_tokens,
                 decode_steps, (long long)max_context());
  const std::vector<int32_t> prompt = bench_prompt_tokens(prompt_tokens, config().vocab_size);
  std::vector<float> logits(size_t(config().vocab_size));
  // One sequence at a time: a batch of B costs B sequences' time.
  std::vector<double> prefill_ms;
  double decode_s = 0;
  for (int r = 0; r <= reps; ++r) {  // r = 0 is the warm-up
    double ms = 0;
    for (int b = 0; b < batch; ++b) {
      LlamaSession& s = session(prompt_tokens + decode_steps, AttentionMode::DensePrefill);
      const auto t0 = Clock::now();
      s.forward(prompt.data(), prompt_tokens, logits.data());
      ms += 1e3 * seconds_since(t0);
      if (r != reps) continue;  // the decode is timed once, after the last prefill rep
      const auto t1 = Clock::now();
      for (int i = 0; i < decode_steps; ++i) {
        const int32_t next = argmax(logits);
        s.forward(&next, 1, logits.data());
      }
      decode_s += seconds_since(t1);
    }
    if (r > 0) prefill_ms.push_back(ms);
  }
  std::sort(prefill_ms.begin(), prefill_ms.end());
  EndToEndTiming t;
  t.batch = batch;
  t.prompt_tokens = prompt_tokens;
  t.decode_steps = decode_steps;
  t.prefill_ms = prefill_ms[prefill_ms.size() / 2];
  t.decode_tok_s = double(batch) * decode_steps / std::max(decode_s, 1e-9);
  return t;
}

}  // namespace saap
