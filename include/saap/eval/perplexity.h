// Perplexity over a text in non-overlapping windows (as the Loki paper evaluates), each window a
// fresh sequence: the session is reset, so no window sees another's tokens.
//
// A window of W tokens yields W-1 predictions: the model reads the first W-1 tokens and is scored
// on each next token. When the model's vocabulary asks for a BOS token (tokenizer.ggml.add_bos_token;
// the Llama 2 family) each window is BOS + W-1 text tokens and all W-1 text tokens are scored;
// SmolLM2 does not add BOS (its GGUF and its Hugging Face tokenizer agree), so its windows are W
// text tokens. Windows advance by the text tokens they hold; a trailing partial window is dropped.
#pragma once
#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "saap/eval/backend.h"
#include "saap/model/llama.h"

namespace saap {

struct PerplexityOptions {
  int64_t window = 2048;     // tokens per window (W), >= 2
  int64_t first_window = 0;  // windows skipped from the start: shards one evaluation over processes
  int64_t max_windows = 0;   // 0: every full window of the text (after first_window)
  // The CPU runner's (the model overloads below build a CpuEvalBackend from them; the backend
  // overloads ignore them: the backend holds its method).
  int64_t chunk = 512;       // tokens per forward call: bounds the logits buffer (chunk x vocab floats)
  MethodFactory methods;     // null: dense
  AttentionMode mode = AttentionMode::MethodEverywhere;
  bool progress = true;
};

struct PerplexityResult {
  double perplexity = 0;             // exp(mean NLL over every scored token)
  double mean_nll = 0;               // nats per token
  int64_t windows = 0;
  int64_t scored_tokens = 0;         // predictions made (= tokens run through the model)
  double seconds = 0;
  double tokens_per_second = 0;      // scored tokens / seconds
  bool bos = false;                  // windows start with BOS
  std::vector<double> window_nll;    // mean NLL of each window
  LookupStats stats;                 // what the methods read, over all windows
  LookupStats global_stats;          // the same over the global layers only (Gemma-3's local layers
                                     // always read their window exactly); equals stats for Llama
  nlohmann::json to_json() const;
};

// Where evaluate_perplexity's windows lie: window i (counted from first_window) is BOS, when the
// vocabulary asks for it, + tokens[(first_window + i) * text_per_window, + text_per_window).
struct PerplexityWindows {
  int64_t window = 0;           // W: tokens per window, BOS included
  int64_t text_per_window = 0;  // W - 1 with BOS, else W
  int64_t first_window = 0;
  int64_t windows = 0;          // how many are scored (max_windows and the text's length bound it)
  bool bos = false;
  int32_t bos_token = 0;
  // Window i's W tokens into out[W] (tokens: the text without BOS).
  void fill(const std::vector<int32_t>& tokens, int64_t i, int32_t* out) const;
};
// InvalidArgument when the options are out of range or the text holds no full window after first_window.
PerplexityWindows perplexity_windows(const Tokenizer& tokenizer, size_t text_tokens, const PerplexityOptions& options);
// The windows as JSON Lines ({"window", "first_text_token", "tokens"}), no model run: an independent
// implementation scores the same token ids (scripts/niah_transformers.py). Returns how many.
int64_t write_perplexity_windows(const Tokenizer& tokenizer, const std::vector<int32_t>& tokens,
                                 const PerplexityOptions& options, std::ostream& out);

// tokens: the text, already tokenized without BOS. Windows run max_batch() at a time. Throws InvalidArgument when the options are out
// of range or the text holds no full window.
PerplexityResult evaluate_perplexity(EvalBackend& backend, const std::vector<int32_t>& tokens,
                                     const PerplexityOptions& options);
PerplexityResult evaluate_perplexity(const std::shared_ptr<const LlamaModel>& model, const std::vector<int32_t>& tokens,
                                     const PerplexityOptions& options);
// Reads and tokenizes the file first (NotFound / BadFile when it cannot be read).
PerplexityResult evaluate_perplexity_file(EvalBackend& backend, const std::string& path,
                                          const PerplexityOptions& options);
PerplexityResult evaluate_perplexity_file(const std::shared_ptr<const LlamaModel>& model, const std::string& path,
                                          const PerplexityOptions& options);

}  // namespace saap
