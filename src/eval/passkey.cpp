#include "saap/eval/passkey.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>
#include <sstream>

#include "saap/core/error.h"
#include "saap/core/progress.h"

namespace saap {

namespace {

const char* const kIntro =
    "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will ask you about the important information there.\n\n";
const char* const kQuestion = "\n\nWhat is the pass key? Answer with the number only.";
const char* const kLeadIn = "The pass key is";
const char* const kFillerUnit =
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
const char* const kSlot = "\x01\x02";  // where the haystack goes in the rendered template

}  // namespace

PasskeyPrompt build_passkey_prompt(const Tokenizer& tokenizer, int64_t length, double depth, int max_new_tokens,
                                   Haystack haystack, const std::string& filler_text, uint64_t seed) {
  SAAP_CHECK_FMT(depth >= 0.0 && depth <= 1.0, InvalidArgument, "depth = %g must be in [0, 1]", depth);
  SAAP_CHECK_FMT(max_new_tokens > 0, InvalidArgument, "max_new_tokens = %d must be positive", max_new_tokens);
  std::mt19937_64 rng(seed);
  PasskeyPrompt p;
  p.passkey = std::to_string(10000 + int(rng() % 90000));

  const std::string rendered =
      tokenizer.apply_chat_template({{"user", std::string(kIntro) + kSlot + kQuestion}}, true) + kLeadIn;
  const size_t slot = rendered.find(kSlot);
  const std::vector<int32_t> head = tokenizer.encode(rendered.substr(0, slot), true, true);
  p.question = tokenizer.encode(rendered.substr(slot + 2), false, true);
  const std::vector<int32_t> needle =
      tokenizer.encode(" The pass key is " + p.passkey + ". Remember it. " + p.passkey + " is the pass key.");

  const int64_t budget = length - max_new_tokens - int64_t(head.size() + p.question.size() + needle.size());
  SAAP_CHECK_FMT(budget > 0, InvalidArgument, "length = %lld leaves no room for filler around a %zu-token prompt",
                 (long long)length, head.size() + p.question.size() + needle.size());

  std::vector<int32_t> filler;
  int64_t insert = 0;
  if (haystack == Haystack::Repeated) {
    const std::vector<int32_t> unit = tokenizer.encode(kFillerUnit);
    while (int64_t(filler.size()) < budget) filler.insert(filler.end(), unit.begin(), unit.end());
    filler.resize(size_t(budget));
    // The needle goes between two repetitions, at the boundary nearest the depth.
    const int64_t units = budget / int64_t(unit.size());
    insert = std::llround(depth * double(units)) * int64_t(unit.size());
  } else {
    SAAP_CHECK_MSG(!filler_text.empty(), InvalidArgument, "the real-text haystack needs a filler text");
    // A seeded line boundary in the text, far enough from the end to hold the budget.
    const size_t bytes = size_t(budget) * 8;
    const size_t span = filler_text.size() > bytes ? filler_text.size() - bytes : 1;
    size_t begin = size_t(rng() % span);
    const size_t nl = filler_text.find('\n', begin);
    begin = nl == std::string::npos ? 0 : nl + 1;
    filler = tokenizer.encode(filler_text.substr(begin, bytes));
    SAAP_CHECK_FMT(int64_t(filler.size()) >= budget, BadFile,
                   "the filler text from byte %zu holds %zu tokens, fewer than the %lld needed", begin,
                   filler.size(), (long long)budget);
    filler.resize(size_t(budget));
    // After the end of a sentence or line near the depth, so the needle does not split a word.
    insert = std::llround(depth * double(budget));
    for (int64_t i = insert; i < std::min<int64_t>(budget, insert + 64); ++i) {
      const std::string piece = tokenizer.token_bytes(filler[size_t(i - (i > 0))]);
      if (i == 0 || piece.find('.') != std::string::npos || piece.find('\n') != std::string::npos) {
        insert = i;
        break;
      }
    }
  }
  insert = std::clamp<int64_t>(insert, 0, budget);
  p.haystack = head;
  p.haystack.insert(p.haystack.end(), filler.begin(), filler.begin() + insert);
  p.needle_token = int64_t(p.haystack.size());
  p.haystack.insert(p.haystack.end(), needle.begin(), needle.end());
  p.haystack.insert(p.haystack.end(), filler.begin() + insert, filler.end());
  return p;
}

double PasskeyResult::accuracy(int64_t length, double depth) const {
  int64_t n = 0, ok = 0;
  for (const auto& t : trials)
    if ((length == 0 || t.length == length) && (depth < 0 || std::abs(t.depth - depth) < 1e-9)) {
      ++n;
      ok += t.correct;
    }
  return n ? double(ok) / double(n) : 0.0;
}

LookupStats PasskeyResult::lookup() const {
  LookupStats s;
  for (const auto& t : trials) s += t.lookup;
  return s;
}

nlohmann::json PasskeyResult::to_json() const {
  nlohmann::json j;
  j["accuracy"] = accuracy();
  j["lookup_fraction"] = lookup().fraction();  // K/V and index read over dense K/V
  j["kv_fraction"] = lookup().kv_fraction();    // the K/V part alone: what a budget buys
  std::vector<int64_t> lengths;
  std::vector<double> depths;
  for (const auto& t : trials) {
    if (std::find(lengths.begin(), lengths.end(), t.length) == lengths.end()) lengths.push_back(t.length);
    if (std::find(depths.begin(), depths.end(), t.depth) == depths.end()) depths.push_back(t.depth);
  }
  j["by_length_depth"] = nlohmann::json::array();
  for (int64_t l : lengths)
    for (double d : depths) j["by_length_depth"].push_back({{"length", l}, {"depth", d}, {"accuracy", accuracy(l, d)}});
  j["trials"] = nlohmann::json::array();
  for (const auto& t : trials)
    j["trials"].push_back({{"length", t.length},
                           {"depth", t.depth},
                           {"trial", t.trial},
                           {"prompt_tokens", t.prompt_tokens},
                           {"needle_token", t.needle_token},
                           {"passkey", t.passkey},
                           {"answer", t.answer},
                           {"correct", t.correct},
                           {"lookup_fraction", t.lookup.fraction()},
                           {"kv_fraction", t.lookup.kv_fraction()}});
  return j;
}

PasskeyResult run_passkey(EvalBackend& backend, const PasskeyOptions& options) {
  const Tokenizer& tok = backend.tokenizer();
  SAAP_CHECK_FMT(options.trials > 0, InvalidArgument, "trials = %d must be positive", options.trials);
  for (int64_t l : options.lengths)
    SAAP_CHECK_FMT(l > 0 && l <= backend.max_context(), InvalidArgument, "length = %lld must be in [1, %lld]",
                   (long long)l, (long long)backend.max_context());
  std::string filler_text;
  if (options.haystack == Haystack::RealText) {
    std::ifstream in(options.filler_path, std::ios::binary);
    SAAP_CHECK_FMT(in.good(), NotFound, "filler text %s cannot be opened", options.filler_path.c_str());
    std::stringstream ss;
    ss << in.rdbuf();
    filler_text = ss.str();
  }
  PasskeyResult result;
  int64_t total = 0, done = 0;
  for (int64_t l : options.lengths) total += l * int64_t(options.depths.size()) * options.trials;
  ProgressBar bar("eval passkey", total, options.progress);
  for (int64_t length : options.lengths) {
    std::vector<PasskeyTrial> trials;
    std::vector<GreedyRequest> requests;
    for (double depth : options.depths)
      for (int trial = 0; trial < options.trials; ++trial) {
        const uint64_t seed = options.seed * 7919u + uint64_t(length) * 31u + uint64_t(depth * 1000) * 17u + trial;
        PasskeyPrompt p =
            build_passkey_prompt(tok, length, depth, options.max_new_tokens, options.haystack, filler_text, seed);
        PasskeyTrial t;
        t.length = length;
        t.depth = depth;
        t.trial = trial;
        t.prompt_tokens = int64_t(p.haystack.size() + p.question.size());
        t.needle_token = p.needle_token;
        t.passkey = p.passkey;
        trials.push_back(std::move(t));
        requests.push_back({std::move(p.haystack), std::move(p.question)});
      }
    // The haystack is prefilled (exact, or through the method with method_prefill); the question
    // and the answer go token by token through the method.
    for (size_t i0 = 0; i0 < requests.size(); i0 += size_t(backend.max_batch())) {
      const size_t n = std::min(requests.size() - i0, size_t(backend.max_batch()));
      const std::vector<GreedyRequest> group(requests.begin() + long(i0), requests.begin() + long(i0 + n));
      const int64_t before = done;
      const std::vector<GreedyResult> answers =
          backend.greedy(group, options.max_new_tokens, options.method_prefill,
                         [&](int64_t positions) { bar.update(before + std::min(positions, int64_t(n) * length)); });
      for (size_t j = 0; j < n; ++j) {
        PasskeyTrial& t = trials[i0 + j];
        t.answer = tok.decode(answers[j].tokens);
        t.correct = t.answer.find(t.passkey) != std::string::npos;
        t.lookup = answers[j].stats;
      }
      done += int64_t(n) * length;
      bar.update(done);
    }
    for (PasskeyTrial& t : trials) result.trials.push_back(std::move(t));
  }
  bar.finish();
  return result;
}

PasskeyResult run_passkey(std::shared_ptr<const LlamaModel> model, const MethodFactory& factory,
                          const PasskeyOptions& options) {
  CpuEvalBackend backend(std::move(model), factory, "method");
  return run_passkey(backend, options);
}

}  // namespace saap
