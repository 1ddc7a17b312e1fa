#include "saap/eval/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>

#include "saap/core/error.h"
#include "saap/core/progress.h"

namespace saap {

nlohmann::json PerplexityResult::to_json() const {
  return {{"perplexity", perplexity},
          {"mean_nll", mean_nll},
          {"windows", windows},
          {"scored_tokens", scored_tokens},
          {"seconds", seconds},
          {"tokens_per_second", tokens_per_second},
          {"bos", bos},
          {"window_nll", window_nll},
          // null when no query went through a method (exact prefill everywhere): nothing to report.
          {"lookup_fraction", stats.queries ? nlohmann::json(stats.fraction()) : nlohmann::json()},
          {"kv_fraction", stats.queries ? nlohmann::json(stats.kv_fraction()) : nlohmann::json()},
          {"global_lookup_fraction", global_stats.queries ? nlohmann::json(global_stats.fraction()) : nlohmann::json()},
          {"global_kv_fraction", global_stats.queries ? nlohmann::json(global_stats.kv_fraction()) : nlohmann::json()},
          {"method_queries", stats.queries}};
}

void PerplexityWindows::fill(const std::vector<int32_t>& tokens, int64_t i, int32_t* out) const {
  SAAP_CHECK_FMT(i >= 0 && i < windows, InvalidArgument, "window %lld of %lld", (long long)i, (long long)windows);
  const size_t from = size_t((first_window + i) * text_per_window);
  SAAP_CHECK_FMT(from + size_t(text_per_window) <= tokens.size(), InvalidArgument,
                 "window %lld needs text tokens up to %lld; the text has %zu", (long long)i,
                 (long long)(from + size_t(text_per_window)), tokens.size());
  if (bos) out[0] = bos_token;
  std::copy(tokens.begin() + int64_t(from), tokens.begin() + int64_t(from) + text_per_window, out + (bos ? 1 : 0));
}

PerplexityWindows perplexity_windows(const Tokenizer& tokenizer, size_t text_tokens, const PerplexityOptions& options) {
  SAAP_CHECK_FMT(options.window >= 2, InvalidArgument, "window = %lld must be >= 2", (long long)options.window);
  SAAP_CHECK_FMT(options.max_windows >= 0, InvalidArgument, "max_windows = %lld must be >= 0",
                 (long long)options.max_windows);
  SAAP_CHECK_FMT(options.first_window >= 0, InvalidArgument, "first_window = %lld must be >= 0",
                 (long long)options.first_window);
  PerplexityWindows w;
  const std::vector<int32_t> bos = tokenizer.encode("", /*add_bos=*/true);
  w.bos = !bos.empty();
  w.bos_token = w.bos ? bos[0] : 0;
  w.window = options.window;
  w.text_per_window = w.bos ? w.window - 1 : w.window;
  w.first_window = options.first_window;
  const int64_t in_text = int64_t(text_tokens) / w.text_per_window;
  w.windows = in_text - options.first_window;
  if (options.max_windows > 0) w.windows = std::min(w.windows, options.max_windows);
  SAAP_CHECK_FMT(w.windows >= 1, InvalidArgument,
                 "the text has %zu tokens: %lld windows of %lld, none left after first_window = %lld", text_tokens,
                 (long long)in_text, (long long)w.text_per_window, (long long)options.first_window);
  return w;
}

int64_t write_perplexity_windows(const Tokenizer& tokenizer, const std::vector<int32_t>& tokens,
                                 const PerplexityOptions& options, std::ostream& out) {
  const PerplexityWindows plan = perplexity_windows(tokenizer, tokens.size(), options);
  std::vector<int32_t> window(size_t(plan.window));
  for (int64_t i = 0; i < plan.windows; ++i) {
    plan.fill(tokens, i, window.data());
    out << nlohmann::json{{"window", plan.first_window + i},
                          {"first_text_token", (plan.first_window + i) * plan.text_per_window},
                          {"tokens", window}}.dump()
        << '\n';
  }
  out.flush();
  SAAP_CHECK_MSG(out.good(), BadFile, "the perplexity windows could not be written (the output stream failed)");
  return plan.windows;
}

PerplexityResult evaluate_perplexity(EvalBackend& backend, const std::vector<int32_t>& tokens,
                                     const PerplexityOptions& options) {
  SAAP_CHECK_FMT(options.window >= 2 && options.window <= backend.max_context(), InvalidArgument,
                 "window = %lld must be in [2, context length %lld]", (long long)options.window,
                 (long long)backend.max_context());
  const PerplexityWindows plan = perplexity_windows(backend.tokenizer(), tokens.size(), options);
  PerplexityResult result;
  result.bos = plan.bos;
  const int64_t W = plan.window, windows = plan.windows;

  const int64_t inputs = W - 1;  // the model reads window[0 .. W-1) and is scored on window[1 .. W)
  const int group = int(std::min<int64_t>(backend.max_batch(), windows));
  std::vector<int32_t> batch(size_t(group) * size_t(W));
  std::vector<double> nll(size_t(group) * size_t(inputs));
  ProgressBar bar("perplexity", windows * inputs, options.progress);
  double total_nll = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t w0 = 0; w0 < windows; w0 += group) {
    const int n = int(std::min<int64_t>(group, windows - w0));
    for (int b = 0; b < n; ++b) plan.fill(tokens, w0 + b, &batch[size_t(b) * size_t(W)]);
    backend.window_nll(batch.data(), n, W, options.mode, nll.data(), &result.stats, &result.global_stats,
                       [&](int64_t positions) {
                         bar.update(w0 * inputs + positions, format("windows %lld-%lld", (long long)w0 + 1,
                                                                    (long long)(w0 + n)));
                       });
    for (int b = 0; b < n; ++b) {
      double window_nll = 0;
      for (int64_t i = 0; i < inputs; ++i) window_nll += nll[size_t(b) * size_t(inputs) + size_t(i)];
      result.window_nll.push_back(window_nll / double(inputs));
      total_nll += window_nll;
    }
    bar.update((w0 + n) * inputs, format("nll %.3f", total_nll / double((w0 + n) * inputs)));
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.windows = windows;
  result.scored_tokens = windows * inputs;
  result.mean_nll = total_nll / double(result.scored_tokens);
  result.perplexity = std::exp(result.mean_nll);
  result.tokens_per_second = double(result.scored_tokens) / std::max(result.seconds, 1e-9);
  bar.finish(format("ppl %.4f", result.perplexity));
  return result;
}

PerplexityResult evaluate_perplexity(const std::shared_ptr<const LlamaModel>& model, const std::vector<int32_t>& tokens,
                                     const PerplexityOptions& options) {
  SAAP_CHECK_MSG(model != nullptr, InvalidArgument, "evaluate_perplexity needs a model");
  CpuEvalBackend backend(model, options.methods, "method", options.chunk);
  return evaluate_perplexity(backend, tokens, options);
}

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SAAP_CHECK_FMT(in.good(), NotFound, "text file %s cannot be opened", path.c_str());
  std::ostringstream text;
  text << in.rdbuf();
  SAAP_CHECK_FMT(!in.bad(), BadFile, "text file %s could not be read", path.c_str());
  return text.str();
}

}  // namespace

PerplexityResult evaluate_perplexity_file(EvalBackend& backend, const std::string& path,
                                          const PerplexityOptions& options) {
  return evaluate_perplexity(backend, backend.tokenizer().encode(read_text(path)), options);
}

PerplexityResult evaluate_perplexity_file(const std::shared_ptr<const LlamaModel>& model, const std::string& path,
                                          const PerplexityOptions& options) {
  const std::string text = read_text(path);
  SAAP_CHECK_MSG(model != nullptr, InvalidArgument, "evaluate_perplexity_file needs a model");
  return evaluate_perplexity(model, model->tokenizer().encode(text), options);
}

}  // namespace saap
