#include "saap/eval/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>

#include "saap/core/error.h"
#include "saap/core/progress.h"

namespace saap {

namespace {

// -log softmax(logits)[target], in double.
double token_nll(const float* logits, int32_t vocab, int32_t target) {
  const float top = *std::max_element(logits, logits + vocab);
  double sum = 0;
  for (int32_t j = 0; j < vocab; ++j) sum += std::exp(double(logits[j]) - double(top));
  return std::log(sum) + double(top) - double(logits[target]);
}

}  // namespace

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

PerplexityResult evaluate_perplexity(const std::shared_ptr<const LlamaModel>& model, const std::vector<int32_t>& tokens,
                                     const PerplexityOptions& options) {
  SAAP_CHECK_MSG(model != nullptr, InvalidArgument, "evaluate_perplexity needs a model");
  SAAP_CHECK_FMT(options.window >= 2 && options.window <= model->config().context_length, InvalidArgument,
                 "window = %lld must be in [2, context length %lld]", (long long)options.window,
                 (long long)model->config().context_length);
  SAAP_CHECK_FMT(options.max_windows >= 0, InvalidArgument, "max_windows = %lld must be >= 0",
                 (long long)options.max_windows);
  SAAP_CHECK_FMT(options.first_window >= 0, InvalidArgument, "first_window = %lld must be >= 0",
                 (long long)options.first_window);
  SAAP_CHECK_FMT(options.chunk >= 2, InvalidArgument, "chunk = %lld must be >= 2", (long long)options.chunk);

  PerplexityResult result;
  const std::vector<int32_t> bos = model->tokenizer().encode("", /*add_bos=*/true);
  result.bos = !bos.empty();
  const int64_t W = options.window;
  const int64_t text_per_window = result.bos ? W - 1 : W;
  const int64_t in_text = int64_t(tokens.size()) / text_per_window;
  int64_t windows = in_text - options.first_window;
  if (options.max_windows > 0) windows = std::min(windows, options.max_windows);
  SAAP_CHECK_FMT(windows >= 1, InvalidArgument,
                 "the text has %zu tokens: %lld windows of %lld, none left after first_window = %lld", tokens.size(),
                 (long long)in_text, (long long)text_per_window, (long long)options.first_window);

  const int32_t vocab = model->config().vocab_size;
  LlamaSession session(model, W, options.methods, options.mode);
  std::vector<float> logits(size_t(std::min(options.chunk + 1, W)) * size_t(vocab));  // + the folded token
  std::vector<int32_t> window(static_cast<size_t>(W));
  ProgressBar bar("perplexity", windows * (W - 1), options.progress);
  double total_nll = 0;
  const auto start = std::chrono::steady_clock::now();

  for (int64_t w = 0; w < windows; ++w) {
    // window[0 .. W): the sequence; the model reads window[0 .. W-1) and is scored on window[1 .. W).
    const auto text = tokens.begin() + (options.first_window + w) * text_per_window;
    if (result.bos) window[0] = bos[0];
    std::copy(text, text + text_per_window, window.begin() + (result.bos ? 1 : 0));
    session.reset();
    double window_nll = 0;
    const int64_t inputs = W - 1;
    for (int64_t begin = 0; begin < inputs;) {
      int64_t end = std::min(inputs, begin + options.chunk);
      // A lone final token would be a decode step, which DensePrefill runs through the method:
      // fold it into this chunk so that every chunk is an exact prefill there.
      if (inputs - end == 1) end = inputs;
      session.forward(&window[size_t(begin)], end - begin, logits.data(), /*all_logits=*/true);
      for (int64_t i = begin; i < end; ++i)
        window_nll += token_nll(&logits[size_t(i - begin) * size_t(vocab)], vocab, window[size_t(i + 1)]);
      begin = end;
      bar.update(w * (W - 1) + end, format("nll %.3f", window_nll / double(end)));
    }
    result.stats += session.stats();
    result.global_stats += session.global_stats();
    result.window_nll.push_back(window_nll / double(inputs));
    total_nll += window_nll;
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.windows = windows;
  result.scored_tokens = windows * (W - 1);
  result.mean_nll = total_nll / double(result.scored_tokens);
  result.perplexity = std::exp(result.mean_nll);
  result.tokens_per_second = double(result.scored_tokens) / std::max(result.seconds, 1e-9);
  bar.finish(format("ppl %.4f", result.perplexity));
  return result;
}

PerplexityResult evaluate_perplexity_file(const std::shared_ptr<const LlamaModel>& model, const std::string& path,
                                          const PerplexityOptions& options) {
  std::ifstream in(path, std::ios::binary);
  SAAP_CHECK_FMT(in.good(), NotFound, "text file %s cannot be opened", path.c_str());
  std::ostringstream text;
  text << in.rdbuf();
  SAAP_CHECK_FMT(!in.bad(), BadFile, "text file %s could not be read", path.c_str());
  SAAP_CHECK_MSG(model != nullptr, InvalidArgument, "evaluate_perplexity_file needs a model");
  return evaluate_perplexity(model, model->tokenizer().encode(text.str()), options);
}

}  // namespace saap
