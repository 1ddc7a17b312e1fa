// Passkey retrieval (Mohtashami & Jaggi 2023) and its needle-in-a-haystack variant: a 5-digit
// number is hidden at a relative depth of a long filler text, and the model, prompted through its
// chat template, is asked for it; greedy decoding must reproduce the number.
//
// Where the method runs. By default the haystack is prefilled with exact attention (one chunk,
// as generation prefills), and every token after it — the question, the assistant header and the
// generated answer — is fed one at a time through the method. Retrieval happens exactly there:
// the question and answer tokens must find the needle among the cached keys, and the method
// decides which keys they see. With `method_prefill` the haystack goes through the method too
// (AttentionMode::MethodEverywhere), the stricter setting matching the perplexity harness, where
// the needle's own representation can be degraded before it is ever asked for.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "saap/eval/backend.h"
#include "saap/model/llama.h"

namespace saap {

enum class Haystack {
  Repeated,  // "The grass is green. The sky is blue. ..." repeated (the passkey task)
  RealText,  // consecutive text from a file, e.g. eval.txt (the needle task)
};

struct PasskeyOptions {
  std::vector<int64_t> lengths = {1024, 2048, 4096, 8192};  // prompt + answer tokens
  std::vector<double> depths = {0.0, 0.25, 0.5, 0.75, 1.0};
  int trials = 1;  // per (length, depth), each with its own number and filler offset
  Haystack haystack = Haystack::Repeated;
  std::string filler_path;  // RealText only
  bool method_prefill = false;
  int max_new_tokens = 8;
  uint64_t seed = 1;
  bool progress = true;
};

struct PasskeyTrial {
  int64_t length = 0;
  double depth = 0;
  int trial = 0;
  int64_t prompt_tokens = 0;
  int64_t needle_token = 0;  // where the needle starts in the prompt
  std::string passkey, answer;
  bool correct = false;
  LookupStats lookup;  // what the method read for this trial
};

struct PasskeyResult {
  std::vector<PasskeyTrial> trials;
  // Fraction correct over the trials of one (length, depth), or over all with length 0.
  double accuracy(int64_t length = 0, double depth = -1) const;
  LookupStats lookup() const;
  nlohmann::json to_json() const;
};

// The prompt of one trial, as token ids, with the needle's first token index. Exposed for tests.
struct PasskeyPrompt {
  std::vector<int32_t> haystack;  // template head + filler with the needle (prefilled together)
  std::vector<int32_t> question;  // question + template tail + answer lead-in (fed token by token)
  int64_t needle_token = 0;
  std::string passkey;
};
PasskeyPrompt build_passkey_prompt(const Tokenizer& tokenizer, int64_t length, double depth, int max_new_tokens,
                                   Haystack haystack, const std::string& filler_text, uint64_t seed);

// Every trial of one length runs as one greedy request; the backend takes max_batch() at a time.
PasskeyResult run_passkey(EvalBackend& backend, const PasskeyOptions& options);
PasskeyResult run_passkey(std::shared_ptr<const LlamaModel> model, const MethodFactory& factory,
                          const PasskeyOptions& options);

}  // namespace saap
