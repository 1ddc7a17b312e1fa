#include "saap/eval/niah.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <tuple>

#include "saap/core/error.h"
#include "saap/core/progress.h"

namespace saap {

namespace {

const char* const kPasskeyIntro =
    "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will ask you about the important information there.\n\n";
const char* const kMagicIntro =
    "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the numbers afterwards.\n\n";
const char* const kFillerUnit =
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
const char* const kSlot = "\x01\x02";  // where the haystack goes in the rendered chat template

// Keys are "<adjective>-<noun>" (RULER draws words); 24 x 24 = 576 distinct keys.
const char* const kAdjectives[] = {"amber",  "brave",  "calm",   "dusty",  "eager",  "fuzzy",  "gentle", "hollow",
                                   "icy",    "jolly",  "keen",   "lively", "mellow", "narrow", "olive",  "proud",
                                   "quiet",  "rapid",  "silent", "tidy",   "urban",  "vivid",  "wooden", "young"};
const char* const kNouns[] = {"anchor", "bridge", "candle", "desert", "engine", "forest", "garden", "harbor",
                              "island", "jacket", "kettle", "ladder", "meadow", "needle", "orchard", "pepper",
                              "quarry", "river",  "saddle", "temple", "valley", "wagon",  "window", "zebra"};
constexpr int kKeyWords = int(sizeof(kAdjectives) / sizeof(kAdjectives[0]));

struct Needle {
  std::string text;
  double depth = 0;
  bool asked = false;  // the needle at the trial's depth
};

// What one task asks: needles, question, answer lead-in, expected answers.
struct TaskText {
  std::string intro, question, lead_in, key;
  std::vector<Needle> needles;
  std::vector<std::string> expected, distractors;
};

std::string number(std::mt19937_64& rng, int digits, std::set<std::string>& used) {
  const uint64_t lo = uint64_t(std::pow(10.0, digits - 1)), span = 9 * lo;
  for (;;) {
    std::string s = std::to_string(lo + rng() % span);
    if (used.insert(s).second) return s;
  }
}

TaskText task_text(const NiahTaskOptions& o, double depth, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::set<std::string> used;
  TaskText t;
  if (o.task == NiahTask::Passkey) {
    const std::string v = number(rng, 5, used);
    t.intro = kPasskeyIntro;
    t.question = "What is the pass key? Answer with the number only.";
    t.lead_in = "The pass key is";
    t.needles.push_back({" The pass key is " + v + ". Remember it. " + v + " is the pass key.", depth, true});
    t.expected = {v};
    return t;
  }
  const int n = o.task == NiahTask::MultiKey ? o.keys : o.values;
  std::vector<std::string> keys;
  std::set<int> picked;
  while (int(keys.size()) < (o.task == NiahTask::MultiKey ? n : 1)) {
    const int k = int(rng() % uint64_t(kKeyWords * kKeyWords));
    if (picked.insert(k).second) keys.push_back(std::string(kAdjectives[k / kKeyWords]) + "-" + kNouns[k % kKeyWords]);
  }
  t.key = keys[0];
  t.intro = kMagicIntro;
  for (int i = 0; i < n; ++i) {
    const std::string& key = o.task == NiahTask::MultiKey ? keys[size_t(i)] : keys[0];
    const std::string v = number(rng, 7, used);
    // The first needle is the one asked for (multikey) or the first value (multivalue), at `depth`.
    t.needles.push_back({" One of the special magic numbers for " + key + " is: " + v + ".", i == 0 ? depth : uniform(rng),
                         i == 0});
    (o.task == NiahTask::MultiValue || i == 0 ? t.expected : t.distractors).push_back(v);
  }
  if (o.task == NiahTask::MultiKey) {
    t.question = "What is the special magic number for " + t.key + " mentioned in the provided text?";
    t.lead_in = "The special magic number for " + t.key + " mentioned in the provided text is";
  } else {
    t.question = "What are all the special magic numbers for " + t.key + " mentioned in the provided text?";
    t.lead_in = "The special magic numbers for " + t.key + " mentioned in the provided text are";
  }
  return t;
}

// Filler tokens of exactly `budget`, and the places (token offsets into it) where a needle may go
// for a relative depth: a repetition boundary, or the end of a sentence or line in the text.
struct Filler {
  std::vector<int32_t> tokens;
  std::vector<int32_t> unit;  // Repeated: one repetition
  int64_t place(const Tokenizer& tok, double depth) const {
    const int64_t budget = int64_t(tokens.size());
    if (!unit.empty()) {
      const int64_t u = int64_t(unit.size()), units = budget / u;
      return std::min<int64_t>(budget, std::llround(depth * double(units)) * u);
    }
    const int64_t at = int64_t(std::llround(depth * double(budget)));
    for (int64_t i = at; i < std::min<int64_t>(budget, at + 64); ++i) {
      if (i == 0) return 0;
      const std::string piece = tok.token_bytes(tokens[size_t(i - 1)]);
      if (piece.find('.') != std::string::npos || piece.find('\n') != std::string::npos) return i;
    }
    return std::min<int64_t>(at, budget);
  }
};

Filler make_filler(const Tokenizer& tok, NiahHaystack haystack, int64_t budget, const std::string& text,
                   std::mt19937_64& rng) {
  Filler f;
  if (haystack == NiahHaystack::Repeated) {
    f.unit = tok.encode(kFillerUnit);
    while (int64_t(f.tokens.size()) < budget) f.tokens.insert(f.tokens.end(), f.unit.begin(), f.unit.end());
    f.tokens.resize(size_t(budget));
    return f;
  }
  SAAP_CHECK_MSG(!text.empty(), InvalidArgument, "the text haystack needs a filler text (filler_text is empty)");
  // A seeded line boundary, far enough from the end to hold the budget (English: < 8 bytes a token).
  const size_t bytes = size_t(budget) * 8;
  const size_t span = text.size() > bytes ? text.size() - bytes : 1;
  size_t begin = size_t(rng() % span);
  const size_t nl = text.find('\n', begin);
  begin = nl == std::string::npos ? 0 : nl + 1;
  f.tokens = tok.encode(text.substr(begin, bytes));
  SAAP_CHECK_FMT(int64_t(f.tokens.size()) >= budget, BadFile,
                 "the filler text from byte %zu holds %zu tokens, fewer than the %lld needed", begin, f.tokens.size(),
                 (long long)budget);
  f.tokens.resize(size_t(budget));
  return f;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

nlohmann::json stats_json(const LookupStats& s) {
  return {{"queries", s.queries}, {"kv_bytes", s.kv_bytes}, {"index_bytes", s.index_bytes}, {"dense_bytes", s.dense_bytes}};
}

LookupStats stats_from_json(const nlohmann::json& j) {
  LookupStats s;
  s.queries = j.at("queries").get<int64_t>();
  s.kv_bytes = j.at("kv_bytes").get<int64_t>();
  s.index_bytes = j.at("index_bytes").get<int64_t>();
  s.dense_bytes = j.at("dense_bytes").get<int64_t>();
  return s;
}

}  // namespace

const char* niah_task_name(NiahTask task) {
  switch (task) {
    case NiahTask::Passkey: return "passkey";
    case NiahTask::MultiKey: return "multikey";
    case NiahTask::MultiValue: return "multivalue";
  }
  return "?";
}

const char* niah_haystack_name(NiahHaystack haystack) {
  return haystack == NiahHaystack::Repeated ? "repeated" : "text";
}

NiahTask parse_niah_task(const std::string& name) {
  for (NiahTask t : {NiahTask::Passkey, NiahTask::MultiKey, NiahTask::MultiValue})
    if (name == niah_task_name(t)) return t;
  SAAP_THROW_FMT(InvalidArgument, "task = '%s' is not one of passkey, multikey, multivalue", name.c_str());
}

NiahHaystack parse_niah_haystack(const std::string& name) {
  if (name == "repeated") return NiahHaystack::Repeated;
  if (name == "text") return NiahHaystack::Text;
  SAAP_THROW_FMT(InvalidArgument, "haystack = '%s' is not one of repeated, text", name.c_str());
}

int niah_answer_tokens(const NiahTaskOptions& o) {
  // A number is at most one token a digit (Gemma, SmolLM2 split digits); 4 more for ", and", ".".
  switch (o.task) {
    case NiahTask::Passkey: return 8;
    case NiahTask::MultiKey: return 12;
    case NiahTask::MultiValue: return 12 * o.values;
  }
  return 8;
}

NiahPrompt make_niah_prompt(const Tokenizer& tok, const NiahTaskOptions& o, int64_t length, double depth, uint64_t seed,
                            const std::string& filler_text) {
  SAAP_CHECK_FMT(depth >= 0.0 && depth <= 1.0, InvalidArgument, "depth = %g must be in [0, 1]", depth);
  SAAP_CHECK_FMT(o.task != NiahTask::MultiKey || (o.keys >= 2 && o.keys <= kKeyWords * kKeyWords), InvalidArgument,
                 "keys = %d must be in [2, %d] for the multikey task", o.keys, kKeyWords * kKeyWords);
  SAAP_CHECK_FMT(o.task != NiahTask::MultiValue || (o.values >= 2 && o.values <= 1000), InvalidArgument,
                 "values = %d must be in [2, 1000] for the multivalue task", o.values);
  std::mt19937_64 rng(seed);
  const TaskText t = task_text(o, depth, rng);

  NiahPrompt p;
  p.expected = t.expected;
  p.distractors = t.distractors;
  p.key = t.key;
  p.max_new_tokens = niah_answer_tokens(o);
  std::vector<int32_t> head;
  if (o.chat) {
    const std::string rendered =
        tok.apply_chat_template({{"user", t.intro + kSlot + "\n\n" + t.question}}, true) + t.lead_in;
    const size_t slot = rendered.find(kSlot);
    head = tok.encode(rendered.substr(0, slot), true, true);
    p.query = tok.encode(rendered.substr(slot + 2), false, true);
  } else {
    // Plain text for a base model: BOS, the instructions, the haystack, a question and its answer's start.
    head = tok.encode(t.intro, true);
    p.query = tok.encode("\n\nQuestion: " + t.question + "\nAnswer: " + t.lead_in);
  }
  std::vector<std::vector<int32_t>> needles;
  int64_t fixed = int64_t(head.size() + p.query.size()) + p.max_new_tokens;
  for (const Needle& n : t.needles) {
    needles.push_back(tok.encode(n.text));
    fixed += int64_t(needles.back().size());
  }
  const int64_t budget = length - fixed;
  SAAP_CHECK_FMT(budget > 0, InvalidArgument,
                 "length = %lld leaves no room for filler beside %lld tokens of instructions, needles, question and "
                 "answer", (long long)length, (long long)fixed);
  const Filler filler = make_filler(tok, o.haystack, budget, filler_text, rng);

  // Needles in the order of their place in the filler (ties: in the order drawn).
  std::vector<std::tuple<int64_t, size_t>> order;
  for (size_t i = 0; i < t.needles.size(); ++i) order.emplace_back(filler.place(tok, t.needles[i].depth), i);
  std::stable_sort(order.begin(), order.end());
  p.context = head;
  p.haystack_begin = int64_t(head.size());
  int64_t from = 0;
  for (const auto& [at, i] : order) {
    p.context.insert(p.context.end(), filler.tokens.begin() + from, filler.tokens.begin() + at);
    from = at;
    p.needle_tokens.push_back(int64_t(p.context.size()));
    p.needle_lengths.push_back(int64_t(needles[i].size()));
    if (t.needles[i].asked) p.asked_needle_token = int64_t(p.context.size());
    p.context.insert(p.context.end(), needles[i].begin(), needles[i].end());
  }
  p.context.insert(p.context.end(), filler.tokens.begin() + from, filler.tokens.end());
  return p;
}

NiahScore score_niah(const std::vector<std::string>& expected, const std::string& answer) {
  NiahScore s;
  s.total = int(expected.size());
  for (const std::string& v : expected) {
    if (v.empty()) continue;
    for (size_t at = answer.find(v); at != std::string::npos; at = answer.find(v, at + 1)) {
      const bool digit_before = at > 0 && std::isdigit(static_cast<unsigned char>(answer[at - 1]));
      const bool digit_after =
          at + v.size() < answer.size() && std::isdigit(static_cast<unsigned char>(answer[at + v.size()]));
      if (!digit_before && !digit_after) {
        ++s.found;
        break;
      }
    }
  }
  return s;
}

uint64_t niah_trial_seed(uint64_t seed, int64_t length, double depth, int trial) {
  uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ uint64_t(length));
  h = splitmix64(h ^ uint64_t(std::llround(depth * 1e6)));
  return splitmix64(h ^ uint64_t(trial));
}

std::vector<NiahTrialPlace> niah_trial_places(const NiahOptions& o) {
  SAAP_CHECK_FMT(o.trials > 0, InvalidArgument, "trials = %d must be positive", o.trials);
  SAAP_CHECK_MSG(!o.lengths.empty() && !o.depths.empty(), InvalidArgument, "lengths and depths must not be empty");
  std::vector<NiahTrialPlace> places;
  for (int64_t length : o.lengths)
    for (double depth : o.depths)
      for (int trial = 0; trial < o.trials; ++trial)
        places.push_back({length, depth, trial, niah_trial_seed(o.seed, length, depth, trial)});
  return places;
}

nlohmann::json niah_prompt_json(const NiahTaskOptions& task, const NiahTrialPlace& place, const NiahPrompt& p) {
  return {{"task", niah_task_name(task.task)},
          {"haystack", niah_haystack_name(task.haystack)},
          {"keys", task.keys},
          {"values", task.values},
          {"chat", task.chat},
          {"length", place.length},
          {"depth", place.depth},
          {"trial", place.trial},
          {"seed", place.seed},
          {"context", p.context},
          {"query", p.query},
          {"max_new_tokens", p.max_new_tokens},
          {"expected", p.expected},
          {"distractors", p.distractors},
          {"key", p.key},
          {"haystack_begin", p.haystack_begin},
          {"needle_tokens", p.needle_tokens},
          {"needle_lengths", p.needle_lengths},
          {"asked_needle_token", p.asked_needle_token}};
}

int64_t write_niah_prompts(const Tokenizer& tok, const NiahOptions& o, const std::string& filler_text,
                           std::ostream& out) {
  int64_t lines = 0;
  for (const NiahTrialPlace& place : niah_trial_places(o)) {
    out << niah_prompt_json(o.task, place, make_niah_prompt(tok, o.task, place.length, place.depth, place.seed,
                                                            filler_text)).dump()
        << '\n';
    ++lines;
  }
  out.flush();
  SAAP_CHECK_MSG(out.good(), BadFile, "the niah prompts could not be written (the output stream failed)");
  return lines;
}

NiahResult run_niah(const Tokenizer& tok, const NiahOptions& o, const std::string& filler_text,
                    const GreedyContinuation& continuation) {
  SAAP_CHECK_FMT(o.batch > 0, InvalidArgument, "batch = %d must be positive", o.batch);
  SAAP_CHECK_MSG(bool(continuation), InvalidArgument, "the continuation callback is empty");
  const std::vector<NiahTrialPlace> places = niah_trial_places(o);
  NiahResult result;
  result.task = o.task;
  struct Pending {
    NiahTrial trial;
    NiahPrompt prompt;
  };
  int64_t total = 0, done = 0;
  for (const NiahTrialPlace& place : places) total += place.length;
  ProgressBar bar(std::string("eval niah ") + niah_task_name(o.task.task), total, o.progress);
  std::vector<Pending> pending;
  auto flush = [&] {
    std::vector<ContinuationRequest> requests;
    for (const Pending& p : pending) requests.push_back({&p.prompt.context, &p.prompt.query, p.prompt.max_new_tokens});
    const std::vector<Continuation> out = continuation(requests);
    SAAP_CHECK_FMT(out.size() == requests.size(), InvalidArgument,
                   "the continuation returned %zu results for %zu requests", out.size(), requests.size());
    for (size_t i = 0; i < pending.size(); ++i) {
      NiahTrial& t = pending[i].trial;
      t.answer = tok.decode(out[i].tokens);
      t.score = score_niah(t.expected, t.answer);
      t.distractor_answer = !t.score.correct() && score_niah(t.distractors, t.answer).found > 0;
      t.lookup = out[i].lookup;
      t.global_lookup = out[i].global_lookup;
      done += t.length;
      result.trials.push_back(std::move(t));
    }
    pending.clear();
    bar.update(done);
  };
  for (const NiahTrialPlace& place : places) {
    Pending p;
    p.trial.length = place.length;
    p.trial.depth = place.depth;
    p.trial.trial = place.trial;
    p.trial.seed = place.seed;
    p.prompt = make_niah_prompt(tok, o.task, place.length, place.depth, place.seed, filler_text);
    p.trial.prompt_tokens = int64_t(p.prompt.context.size() + p.prompt.query.size());
    p.trial.needle_token = p.prompt.asked_needle_token;
    p.trial.expected = p.prompt.expected;
    p.trial.distractors = p.prompt.distractors;
    pending.push_back(std::move(p));
    if (int(pending.size()) == o.batch) flush();
  }
  if (!pending.empty()) flush();
  bar.finish();
  return result;
}

nlohmann::json NiahResult::to_json() const {
  nlohmann::json j = {{"task", niah_task_name(task.task)},
                      {"haystack", niah_haystack_name(task.haystack)},
                      {"keys", task.keys},
                      {"values", task.values},
                      {"chat", task.chat},
                      {"trials", nlohmann::json::array()}};
  for (const NiahTrial& t : trials)
    j["trials"].push_back({{"length", t.length},
                           {"depth", t.depth},
                           {"trial", t.trial},
                           {"seed", t.seed},
                           {"prompt_tokens", t.prompt_tokens},
                           {"needle_token", t.needle_token},
                           {"expected", t.expected},
                           {"distractors", t.distractors},
                           {"answer", t.answer},
                           {"found", t.score.found},
                           {"total", t.score.total},
                           {"correct", t.score.correct()},
                           {"lookup", stats_json(t.lookup)},
                           {"global_lookup", stats_json(t.global_lookup)},
                           {"lookup_fraction", t.lookup.fraction()},
                           {"global_lookup_fraction", t.global_lookup.fraction()}});
  return j;
}

NiahResult NiahResult::from_json(const nlohmann::json& j) {
  NiahResult r;
  const char* field = "task";
  try {
    r.task.task = parse_niah_task(j.at("task").get<std::string>());
    field = "haystack";
    r.task.haystack = parse_niah_haystack(j.at("haystack").get<std::string>());
    field = "keys";
    r.task.keys = j.at("keys").get<int>();
    field = "values";
    r.task.values = j.at("values").get<int>();
    field = "chat";
    r.task.chat = j.at("chat").get<bool>();
    field = "trials";
    for (const auto& t : j.at("trials")) {
      NiahTrial x;
      x.length = t.at("length").get<int64_t>();
      x.depth = t.at("depth").get<double>();
      x.trial = t.at("trial").get<int>();
      x.seed = t.at("seed").get<uint64_t>();
      x.prompt_tokens = t.at("prompt_tokens").get<int64_t>();
      x.needle_token = t.at("needle_token").get<int64_t>();
      x.expected = t.at("expected").get<std::vector<std::string>>();
      x.answer = t.at("answer").get<std::string>();
      x.score = score_niah(x.expected, x.answer);
      x.distractors = t.value("distractors", std::vector<std::string>());
      x.distractor_answer = !x.score.correct() && score_niah(x.distractors, x.answer).found > 0;
      x.lookup = stats_from_json(t.at("lookup"));
      x.global_lookup = stats_from_json(t.at("global_lookup"));
      r.trials.push_back(std::move(x));
    }
  } catch (const nlohmann::json::exception& e) {
    SAAP_THROW_FMT(BadFile, "niah result: field '%s' is missing or malformed (%s)", field, e.what());
  }
  return r;
}

Proportion wilson_interval(int64_t k, int64_t n, double z) {
  SAAP_CHECK_FMT(k >= 0 && n >= 0 && k <= n, InvalidArgument, "k = %lld successes of n = %lld trials", (long long)k,
                 (long long)n);
  Proportion p;
  p.k = k;
  p.n = n;
  if (n == 0) return p;
  const double nn = double(n), rate = double(k) / nn, z2 = z * z;
  const double center = (rate + z2 / (2 * nn)) / (1 + z2 / nn);
  const double half = z / (1 + z2 / nn) * std::sqrt(rate * (1 - rate) / nn + z2 / (4 * nn * nn));
  p.rate = rate;
  p.lo = std::max(0.0, center - half);
  p.hi = std::min(1.0, center + half);
  return p;
}

std::vector<NiahLengthSummary> niah_summary(const NiahResult& r, const NiahResult* dense) {
  using Key = std::tuple<int64_t, int64_t, int>;
  auto key = [](const NiahTrial& t) { return Key{t.length, std::llround(t.depth * 1e6), t.trial}; };
  std::map<Key, const NiahTrial*> ref;
  if (dense) {
    SAAP_CHECK_FMT(dense->task.task == r.task.task && dense->task.haystack == r.task.haystack, InvalidArgument,
                   "the dense reference ran %s/%s, this result %s/%s", niah_task_name(dense->task.task),
                   niah_haystack_name(dense->task.haystack), niah_task_name(r.task.task),
                   niah_haystack_name(r.task.haystack));
    for (const NiahTrial& t : dense->trials) ref[key(t)] = &t;
  }
  std::vector<int64_t> lengths;
  for (const NiahTrial& t : r.trials)
    if (std::find(lengths.begin(), lengths.end(), t.length) == lengths.end()) lengths.push_back(t.length);
  lengths.push_back(0);
  std::vector<NiahLengthSummary> out;
  for (int64_t length : lengths) {
    NiahLengthSummary s;
    s.length = length;
    int64_t n = 0, ok = 0, dense_ok = 0, both = 0;
    double found = 0;
    LookupStats lookup, global;
    for (const NiahTrial& t : r.trials) {
      if (length != 0 && t.length != length) continue;
      ++n;
      ok += t.score.correct();
      s.distractor_answers += t.distractor_answer;
      found += t.score.total ? double(t.score.found) / t.score.total : 0.0;
      lookup += t.lookup;
      global += t.global_lookup;
      if (!dense) continue;
      const auto it = ref.find(key(t));
      SAAP_CHECK_FMT(it != ref.end(), InvalidArgument,
                     "the dense reference has no trial at length %lld, depth %g, trial %d", (long long)t.length,
                     t.depth, t.trial);
      SAAP_CHECK_FMT(it->second->expected == t.expected, InvalidArgument,
                     "the dense reference's trial at length %lld, depth %g, trial %d asked for other numbers (%s vs "
                     "%s): not the same prompts", (long long)t.length, t.depth, t.trial,
                     it->second->expected.empty() ? "" : it->second->expected[0].c_str(),
                     t.expected.empty() ? "" : t.expected[0].c_str());
      if (it->second->score.correct()) {
        ++dense_ok;
        both += t.score.correct();
      } else {
        s.only_method_right += t.score.correct();
      }
    }
    s.accuracy = wilson_interval(ok, n);
    if (dense) s.agreement = wilson_interval(both, dense_ok);
    s.mean_found = n ? found / double(n) : 0.0;
    s.lookup_fraction = lookup.fraction();
    s.global_lookup_fraction = global.fraction();
    out.push_back(s);
  }
  return out;
}

}  // namespace saap
