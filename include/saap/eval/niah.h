// Long-context retrieval tasks (issue 14), in the spirit of RULER's needle-in-a-haystack variants
// (Hsieh et al. 2024): a haystack of L tokens hides one or more needles, and the model is asked
// for what they hold; greedy decoding must reproduce it.
//
//   passkey     one 5-digit pass key (Mohtashami & Jaggi 2023); ask for it.
//   multikey    K needles "One of the special magic numbers for <key> is: <7 digits>." with
//               distinct keys; ask for one key's number (the others are distractors).
//   multivalue  V needles of that form with ONE key and V different numbers; ask for all of them.
//
// Haystacks: a repeated filler ("The grass is green. ..."), or consecutive natural text (eval.txt,
// which holds numbers of its own that distract). Every trial is fixed by its seed: the same
// (options, length, depth, trial) gives the same tokens on every machine.
//
// Three pieces, so that the CPU runner and a GPU backend drive the same trials:
//   make_niah_prompt   a pure generator: tokens (context + query), expected answers, needle spots;
//   score_niah         a pure scorer: which expected numbers the answer holds (as whole numbers);
//   run_niah           the trials, through a GreedyContinuation callback that maps (context, query)
//                      to generated tokens. The context is prefilled; the query's tokens and the
//                      answer go through the method one token at a time (retrieval happens there:
//                      with the query prefilled densely the first answer token would be dense).
// Sparse methods are judged against dense on the same trials (niah_summary: agreement = the share
// of the trials dense got right that the method also gets right), with Wilson 95% intervals.
#pragma once
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "saap/methods/method.h"
#include "saap/model/tokenizer.h"

namespace saap {

enum class NiahTask { Passkey, MultiKey, MultiValue };
enum class NiahHaystack { Repeated, Text };
const char* niah_task_name(NiahTask task);          // "passkey", "multikey", "multivalue"
const char* niah_haystack_name(NiahHaystack haystack);  // "repeated", "text"
NiahTask parse_niah_task(const std::string& name);           // InvalidArgument naming the value
NiahHaystack parse_niah_haystack(const std::string& name);

struct NiahTaskOptions {
  NiahTask task = NiahTask::Passkey;
  NiahHaystack haystack = NiahHaystack::Repeated;
  int keys = 4;        // multikey: needles, each with its own key (one is asked for); >= 2
  int values = 4;      // multivalue: numbers of the one key (all are asked for); >= 2
  bool chat = false;   // render through the tokenizer's chat template; otherwise plain text after BOS
                       // (a base model such as Gemma-3-270M is not chat-tuned)
};

// Tokens generated for the answer: the numbers asked for and their separators, with some slack.
int niah_answer_tokens(const NiahTaskOptions& options);

struct NiahPrompt {
  std::vector<int32_t> context;        // BOS, instructions, haystack with the needles (prefilled)
  std::vector<int32_t> query;          // question and answer lead-in (fed token by token)
  std::vector<std::string> expected;   // what the answer must hold, every one of them
  std::vector<std::string> distractors;  // multikey: the other keys' numbers (a wrong answer may be one)
  std::vector<int64_t> needle_tokens;  // [needles] first token of each needle in context, ascending
  std::vector<int64_t> needle_lengths; // [needles] tokens of each needle, in the order of needle_tokens
  int64_t haystack_begin = 0;          // first haystack token in context (after BOS and the instructions)
  int64_t asked_needle_token = 0;      // the needle at `depth` (multikey: the one asked for)
  int max_new_tokens = 0;              // context + query + max_new_tokens == length
  std::string key;                     // multikey / multivalue: the key asked for
};

// One trial's prompt of exactly `length` tokens (with the answer). The needle asked for (multikey)
// or the first value (multivalue, passkey: the only needle) sits at relative depth `depth` of the
// haystack, the others at seeded depths. filler_text: the Text haystack's source (ignored for
// Repeated). Throws InvalidArgument for a depth outside [0, 1], a length with no room for filler,
// keys/values < 2 or too many to be distinct; BadFile when filler_text is too short.
NiahPrompt make_niah_prompt(const Tokenizer& tokenizer, const NiahTaskOptions& options, int64_t length, double depth,
                            uint64_t seed, const std::string& filler_text);

struct NiahScore {
  int found = 0;  // expected numbers the answer holds as whole numbers (no digit right before or after)
  int total = 0;
  bool correct() const { return total > 0 && found == total; }
};
NiahScore score_niah(const std::vector<std::string>& expected, const std::string& answer);

// The backend: continuations of a batch of requests. Each prefills `context`, feeds `query` one token
// at a time, then decodes greedily until max_new_tokens or an end-of-generation token (not
// returned). lookup: what the method read over the trial (global: the global layers only).
struct ContinuationRequest {
  const std::vector<int32_t>* context = nullptr;
  const std::vector<int32_t>* query = nullptr;
  int max_new_tokens = 0;
};
struct Continuation {
  std::vector<int32_t> tokens;
  LookupStats lookup, global_lookup;
};
using GreedyContinuation = std::function<std::vector<Continuation>(const std::vector<ContinuationRequest>&)>;

struct NiahOptions {
  NiahTaskOptions task;
  std::vector<int64_t> lengths = {4096, 8192, 16384, 32768};
  std::vector<double> depths = {0.1, 0.3, 0.5, 0.7, 0.9};
  int trials = 4;  // per (length, depth): 5 depths x 4 = 20 trials per length
  uint64_t seed = 1;
  int batch = 1;   // requests handed to the continuation at once (a GPU backend batches them)
  bool progress = true;
};

struct NiahTrial {
  int64_t length = 0;
  double depth = 0;
  int trial = 0;
  uint64_t seed = 0;
  int64_t prompt_tokens = 0;
  int64_t needle_token = 0;
  std::vector<std::string> expected, distractors;
  std::string answer;
  NiahScore score;
  bool distractor_answer = false;  // wrong, and holds another needle's number (retrieved the wrong key)
  LookupStats lookup, global_lookup;
};

struct NiahResult {
  NiahTaskOptions task;
  std::vector<NiahTrial> trials;
  nlohmann::json to_json() const;
  // Reads what to_json wrote (a dense reference run); BadFile naming the field when malformed.
  static NiahResult from_json(const nlohmann::json& j);
};

// The seed of one trial, from the run's seed and the trial's place (stable across runs and backends).
uint64_t niah_trial_seed(uint64_t seed, int64_t length, double depth, int trial);

// One trial's place in a run and its seed.
struct NiahTrialPlace {
  int64_t length = 0;
  double depth = 0;
  int trial = 0;
  uint64_t seed = 0;
};
// Every (length, depth, trial) of a run, in the order run_niah runs them. InvalidArgument for
// trials < 1 or empty lengths or depths.
std::vector<NiahTrialPlace> niah_trial_places(const NiahOptions& options);

// One trial as a JSON object: what a backend is handed (context, query, max_new_tokens) and what
// scoring needs (expected, distractors), with the needles' spans, so that an independent
// implementation (scripts/niah_transformers.py: Hugging Face transformers) runs the same trials.
nlohmann::json niah_prompt_json(const NiahTaskOptions& task, const NiahTrialPlace& place, const NiahPrompt& prompt);

// Writes every trial of `options` as one niah_prompt_json line (JSON Lines), in run order, without
// running a model. Returns the number of lines.
int64_t write_niah_prompts(const Tokenizer& tokenizer, const NiahOptions& options, const std::string& filler_text,
                           std::ostream& out);

// Every (length, depth, trial) in order, `batch` at a time through `continuation`.
NiahResult run_niah(const Tokenizer& tokenizer, const NiahOptions& options, const std::string& filler_text,
                    const GreedyContinuation& continuation);

// k successes of n with its Wilson score interval at z (95%: 1.96); n = 0 gives rate 0, [0, 1].
struct Proportion {
  int64_t k = 0, n = 0;
  double rate = 0, lo = 0, hi = 1;
};
Proportion wilson_interval(int64_t k, int64_t n, double z = 1.96);

// Per length (and over all, length 0): accuracy; with a dense reference, agreement (correct among
// the trials dense got right) and the trials where only the method is right. The reference must
// hold the same trials (same task, length, depth, trial and expected answer): InvalidArgument
// naming the first that differs or is missing.
struct NiahLengthSummary {
  int64_t length = 0;  // 0: all lengths
  Proportion accuracy;
  Proportion agreement;          // n = trials dense got right; empty without a reference
  int64_t only_method_right = 0; // trials dense got wrong and the method right
  double mean_found = 0;         // mean share of the expected numbers found (multivalue's partial credit)
  int64_t distractor_answers = 0;  // wrong trials whose answer holds another key's number (multikey)
  double lookup_fraction = 0, global_lookup_fraction = 0;
};
std::vector<NiahLengthSummary> niah_summary(const NiahResult& result, const NiahResult* dense_reference);

}  // namespace saap
