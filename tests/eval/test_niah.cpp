// Long-context retrieval tasks (niah.h): each prompt is exactly its length, holds its needles where
// it says and the numbers it expects, and is the same for the same seed; the scorer matches whole
// numbers only; the Wilson interval matches published values; agreement with dense counts the
// right trials; run_niah hands every trial to the continuation and scores what comes back.
// Uses the real SmolLM2 tokenizer (and Gemma-3's when its GGUF is installed).
#include <gtest/gtest.h>

#include <fstream>
#include <optional>
#include <regex>
#include <sstream>

#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/eval/niah.h"
#include "saap/model/llama.h"

namespace saap {
namespace {

// The error's kind, or nullopt when nothing was thrown.
template <class F>
std::optional<ErrorKind> thrown(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.kind();
  }
  return std::nullopt;
}
#define EXPECT_KIND(expr, kind) EXPECT_EQ(thrown([&] { (void)(expr); }), std::optional<ErrorKind>(ErrorKind::kind))

const Tokenizer& smollm2() {
  static std::shared_ptr<const LlamaModel> model = LlamaModel::load(default_model_path(), false);
  return model->tokenizer();
}

std::string eval_text() {
  std::ifstream in(default_text_path("eval.txt"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

std::vector<NiahTaskOptions> every_task() {
  std::vector<NiahTaskOptions> out;
  for (NiahTask task : {NiahTask::Passkey, NiahTask::MultiKey, NiahTask::MultiValue})
    for (NiahHaystack h : {NiahHaystack::Repeated, NiahHaystack::Text})
      for (bool chat : {false, true}) {
        NiahTaskOptions o;
        o.task = task;
        o.haystack = h;
        o.chat = chat;
        o.keys = 3;
        o.values = 5;
        out.push_back(o);
      }
  return out;
}

// bos_first: the vocabulary asks for BOS (Gemma does; SmolLM2 does not).
void check_prompt(const Tokenizer& tok, const NiahTaskOptions& o, int64_t length, const std::string& text,
                  bool bos_first) {
  SCOPED_TRACE(std::string(niah_task_name(o.task)) + "/" + niah_haystack_name(o.haystack) + (o.chat ? "/chat" : "/plain"));
  int64_t previous = -1;
  for (double depth : {0.0, 0.3, 0.6, 1.0}) {
    SCOPED_TRACE("depth " + std::to_string(depth));
    const NiahPrompt p = make_niah_prompt(tok, o, length, depth, 7, text);
    EXPECT_EQ(int64_t(p.context.size() + p.query.size()) + p.max_new_tokens, length);
    if (bos_first) EXPECT_EQ(p.context[0], tok.bos());
    const std::string context = tok.decode(p.context), query = tok.decode(p.query);
    // How many numbers are asked, and how many needles there are.
    const size_t want_expected = o.task == NiahTask::MultiValue ? size_t(o.values) : 1;
    ASSERT_EQ(p.expected.size(), want_expected);
    const size_t needles = o.task == NiahTask::Passkey ? 1 : size_t(o.task == NiahTask::MultiKey ? o.keys : o.values);
    ASSERT_EQ(p.needle_tokens.size(), needles);
    EXPECT_TRUE(std::is_sorted(p.needle_tokens.begin(), p.needle_tokens.end()));
    // Multikey's other needles hold other numbers: the distractors, each once in the context.
    ASSERT_EQ(p.distractors.size(), o.task == NiahTask::MultiKey ? size_t(o.keys - 1) : 0u);
    for (const std::string& v : p.distractors) {
      EXPECT_EQ(count(context, v), 1) << v;
      EXPECT_EQ(std::find(p.expected.begin(), p.expected.end(), v), p.expected.end()) << v;
    }
    for (const std::string& v : p.expected) {
      EXPECT_EQ(v.size(), o.task == NiahTask::Passkey ? 5u : 7u) << v;
      // Passkey's needle says its number twice; a magic number appears once.
      EXPECT_EQ(count(context, v), o.task == NiahTask::Passkey ? 2 : 1) << v;
    }
    // The needle asked for starts where the prompt says, and holds the (first) expected number.
    const std::vector<int32_t> at(p.context.begin() + p.asked_needle_token,
                                  p.context.begin() + std::min<int64_t>(p.asked_needle_token + 40, p.context.size()));
    const std::string needle = tok.decode(at);
    if (o.task == NiahTask::Passkey) {
      EXPECT_EQ(needle.find(" The pass key is " + p.expected[0]), 0u) << needle;
      EXPECT_NE(query.find("What is the pass key?"), std::string::npos) << query;
      EXPECT_EQ(query.substr(query.size() - 15), "The pass key is");
    } else {
      EXPECT_EQ(needle.find(" One of the special magic numbers for " + p.key + " is: " + p.expected[0] + "."), 0u)
          << needle;
      EXPECT_EQ(count(context, "special magic numbers for "), int(needles));
      EXPECT_EQ(count(context, "special magic numbers for " + p.key + " is"),
                o.task == NiahTask::MultiKey ? 1 : o.values);
      EXPECT_NE(query.find(p.key), std::string::npos) << query;
      const std::string lead = " mentioned in the provided text " + std::string(o.task == NiahTask::MultiKey ? "is" : "are");
      EXPECT_EQ(query.substr(query.size() - lead.size()), lead);
    }
    // Deeper needles sit later, near the depth asked (a text needle waits for a sentence end).
    EXPECT_GE(p.asked_needle_token, previous);
    previous = p.asked_needle_token;
    EXPECT_NEAR(double(p.asked_needle_token) / double(p.context.size()), depth, 0.12);
    // Chat template or plain text.
    EXPECT_EQ(query.find("Question: ") != std::string::npos, !o.chat) << query;
  }
}

TEST(Niah, PromptsHoldTheirNeedlesAtTheirDepths) {
  const std::string text = eval_text();
  for (const NiahTaskOptions& o : every_task()) check_prompt(smollm2(), o, 1500, text, false);
}

TEST(Niah, GemmaPromptsStartWithBos) {
  const std::string path = gemma3_model_path();
  if (!std::ifstream(path).good()) GTEST_SKIP() << "no Gemma-3 GGUF at " << path;
  static std::shared_ptr<const LlamaModel> gemma = LlamaModel::load(path, false);
  const std::string text = eval_text();
  for (const NiahTaskOptions& o : every_task()) check_prompt(gemma->tokenizer(), o, 1500, text, true);
}

TEST(Niah, SameSeedSamePromptOtherSeedOther) {
  const std::string text = eval_text();
  for (const NiahTaskOptions& o : every_task()) {
    const NiahPrompt a = make_niah_prompt(smollm2(), o, 1200, 0.5, 11, text);
    const NiahPrompt b = make_niah_prompt(smollm2(), o, 1200, 0.5, 11, text);
    const NiahPrompt c = make_niah_prompt(smollm2(), o, 1200, 0.5, 12, text);
    EXPECT_EQ(a.context, b.context);
    EXPECT_EQ(a.query, b.query);
    EXPECT_EQ(a.expected, b.expected);
    EXPECT_NE(a.expected, c.expected);
  }
  EXPECT_EQ(niah_trial_seed(1, 4096, 0.5, 3), niah_trial_seed(1, 4096, 0.5, 3));
  EXPECT_NE(niah_trial_seed(1, 4096, 0.5, 3), niah_trial_seed(1, 4096, 0.5, 4));
  EXPECT_NE(niah_trial_seed(1, 4096, 0.5, 3), niah_trial_seed(1, 8192, 0.5, 3));
  EXPECT_NE(niah_trial_seed(1, 4096, 0.5, 3), niah_trial_seed(1, 4096, 0.3, 3));
  EXPECT_NE(niah_trial_seed(1, 4096, 0.5, 3), niah_trial_seed(2, 4096, 0.5, 3));
}

TEST(Niah, BadRequestsAreRefused) {
  const Tokenizer& tok = smollm2();
  NiahTaskOptions o;
  EXPECT_KIND(make_niah_prompt(tok, o, 1000, 1.5, 1, ""), InvalidArgument);
  EXPECT_KIND(make_niah_prompt(tok, o, 1000, -0.1, 1, ""), InvalidArgument);
  EXPECT_KIND(make_niah_prompt(tok, o, 60, 0.5, 1, ""), InvalidArgument);  // no room for filler
  o.task = NiahTask::MultiKey;
  o.keys = 1;
  EXPECT_KIND(make_niah_prompt(tok, o, 1000, 0.5, 1, ""), InvalidArgument);
  o.task = NiahTask::MultiValue;
  o.values = 1;
  EXPECT_KIND(make_niah_prompt(tok, o, 1000, 0.5, 1, ""), InvalidArgument);
  o = NiahTaskOptions();
  o.haystack = NiahHaystack::Text;
  EXPECT_KIND(make_niah_prompt(tok, o, 1000, 0.5, 1, ""), InvalidArgument);  // no text
  EXPECT_KIND(make_niah_prompt(tok, o, 1000, 0.5, 1, "Too short a text.\n"), BadFile);
  EXPECT_KIND(parse_niah_task("needle"), InvalidArgument);
  EXPECT_KIND(parse_niah_haystack("essay"), InvalidArgument);
}

TEST(Niah, ScorerMatchesWholeNumbersOnly) {
  EXPECT_TRUE(score_niah({"12345"}, " 12345. Remember").correct());
  EXPECT_TRUE(score_niah({"12345"}, "12345").correct());
  EXPECT_FALSE(score_niah({"12345"}, " 123456.").correct());   // a longer number
  EXPECT_FALSE(score_niah({"12345"}, " 912345").correct());
  EXPECT_FALSE(score_niah({"12345"}, " 1234").correct());
  EXPECT_FALSE(score_niah({"12345"}, "").correct());
  EXPECT_TRUE(score_niah({"12345"}, "123456 or 12345?").correct());  // a later whole match counts
  const NiahScore partial = score_niah({"1111111", "2222222", "3333333", "4444444"}, " 2222222, 4444444 and 5555555.");
  EXPECT_EQ(partial.found, 2);
  EXPECT_EQ(partial.total, 4);
  EXPECT_FALSE(partial.correct());
  EXPECT_TRUE(score_niah({"1111111", "2222222"}, "2222222, 1111111").correct());  // any order
  EXPECT_FALSE(NiahScore().correct());  // nothing expected is not a success
}

TEST(Niah, WilsonIntervalMatchesPublishedValues) {
  // Wilson score intervals at z = 1.96 (e.g. Newcombe 1998, Table I; statsmodels proportion_confint
  // method='wilson'), to the 4 decimals they are quoted with.
  const struct {
    int k, n;
    double lo, hi;
  } cases[] = {{10, 20, 0.2993, 0.7007}, {0, 20, 0.0, 0.1611}, {20, 20, 0.8389, 1.0}, {81, 263, 0.2553, 0.3662},
               {15, 148, 0.0624, 0.1605}};
  for (const auto& c : cases) {
    const Proportion p = wilson_interval(c.k, c.n);
    EXPECT_NEAR(p.lo, c.lo, 1e-4) << c.k << "/" << c.n;
    EXPECT_NEAR(p.hi, c.hi, 1e-4) << c.k << "/" << c.n;
    EXPECT_DOUBLE_EQ(p.rate, double(c.k) / c.n);
  }
  const Proportion none = wilson_interval(0, 0);
  EXPECT_EQ(none.lo, 0.0);
  EXPECT_EQ(none.hi, 1.0);
  EXPECT_KIND(wilson_interval(3, 2), InvalidArgument);
}

NiahTrial trial(int64_t length, double depth, int index, const std::string& expected, bool right) {
  NiahTrial t;
  t.length = length;
  t.depth = depth;
  t.trial = index;
  t.expected = {expected};
  t.answer = right ? " " + expected + "." : " 0.";
  t.score = score_niah(t.expected, t.answer);
  t.lookup.dense_bytes = 100;
  t.lookup.kv_bytes = 10;
  return t;
}

TEST(Niah, AgreementCountsTheTrialsDenseGotRight) {
  NiahResult dense, method;
  //                     dense right?  method right?
  const bool rows[][2] = {{true, true}, {true, false}, {true, true}, {false, true}, {false, false}};
  for (int i = 0; i < 5; ++i) {
    const std::string v = std::to_string(10000 + i);
    dense.trials.push_back(trial(i < 3 ? 4096 : 8192, 0.5, i, v, rows[i][0]));
    method.trials.push_back(trial(i < 3 ? 4096 : 8192, 0.5, i, v, rows[i][1]));
  }
  const auto s = niah_summary(method, &dense);
  ASSERT_EQ(s.size(), 3u);  // 4096, 8192, all
  EXPECT_EQ(s[0].length, 4096);
  EXPECT_EQ(s[0].accuracy.k, 2);
  EXPECT_EQ(s[0].accuracy.n, 3);
  EXPECT_EQ(s[0].agreement.k, 2);
  EXPECT_EQ(s[0].agreement.n, 3);
  EXPECT_EQ(s[1].agreement.n, 0);  // dense got none right at 8192
  EXPECT_EQ(s[1].only_method_right, 1);
  EXPECT_EQ(s[2].length, 0);
  EXPECT_EQ(s[2].accuracy.k, 3);
  EXPECT_EQ(s[2].accuracy.n, 5);
  EXPECT_EQ(s[2].agreement.k, 2);
  EXPECT_EQ(s[2].agreement.n, 3);
  EXPECT_DOUBLE_EQ(s[2].lookup_fraction, 0.1);
  // Without a reference there is no agreement.
  EXPECT_EQ(niah_summary(method, nullptr)[2].agreement.n, 0);
  // Other prompts, or a trial the reference lacks, are refused.
  NiahResult other = dense;
  other.trials[1].expected = {"99999"};
  EXPECT_KIND(niah_summary(method, &other), InvalidArgument);
  other = dense;
  other.trials.pop_back();
  EXPECT_KIND(niah_summary(method, &other), InvalidArgument);
  other = dense;
  other.task.task = NiahTask::MultiKey;
  EXPECT_KIND(niah_summary(method, &other), InvalidArgument);
  // The JSON round trip keeps what agreement needs.
  const NiahResult back = NiahResult::from_json(method.to_json());
  ASSERT_EQ(back.trials.size(), method.trials.size());
  for (size_t i = 0; i < back.trials.size(); ++i) {
    EXPECT_EQ(back.trials[i].expected, method.trials[i].expected);
    EXPECT_EQ(back.trials[i].score.correct(), method.trials[i].score.correct());
    EXPECT_EQ(back.trials[i].lookup.kv_bytes, method.trials[i].lookup.kv_bytes);
  }
  EXPECT_KIND(NiahResult::from_json({{"task", "passkey"}}), BadFile);
}

TEST(Niah, RunHandsEveryTrialToTheContinuationAndScoresIt) {
  const Tokenizer& tok = smollm2();
  NiahOptions o;
  o.task.task = NiahTask::MultiKey;
  o.task.keys = 3;
  o.lengths = {700, 900};
  o.depths = {0.2, 0.8};
  o.trials = 3;
  o.batch = 5;
  o.progress = false;
  std::vector<size_t> batches;
  // An oracle continuation: reads the asked key's number out of the context text; it is wrong on
  // every second request, so the scores must follow what it returns.
  int calls = 0;
  const GreedyContinuation oracle = [&](const std::vector<ContinuationRequest>& requests) {
    batches.push_back(requests.size());
    std::vector<Continuation> out;
    for (const ContinuationRequest& r : requests) {
      const std::string query = tok.decode(*r.query), context = tok.decode(*r.context);
      std::smatch key;
      EXPECT_TRUE(std::regex_search(query, key, std::regex("number for ([a-z]+-[a-z]+) mentioned")));
      std::smatch value;
      const std::string needle = "numbers for " + key[1].str() + " is: ([0-9]+)";
      EXPECT_TRUE(std::regex_search(context, value, std::regex(needle)));
      Continuation c;
      // Wrong answers give another key's number (a distractor).
      std::smatch other;
      const std::string others = "numbers for (?!" + key[1].str() + " )[a-z]+-[a-z]+ is: ([0-9]+)";
      EXPECT_TRUE(std::regex_search(context, other, std::regex(others)));
      c.tokens = tok.encode(" " + (calls++ % 2 == 0 ? value[1].str() : other[1].str()) + ".");
      EXPECT_LE(int(c.tokens.size()), r.max_new_tokens);
      out.push_back(c);
    }
    return out;
  };
  const NiahResult r = run_niah(tok, o, "", oracle);
  ASSERT_EQ(r.trials.size(), 12u);
  EXPECT_EQ(batches, (std::vector<size_t>{5, 5, 2}));
  for (size_t i = 0; i < r.trials.size(); ++i) {
    EXPECT_EQ(r.trials[i].score.correct(), i % 2 == 0) << r.trials[i].answer;
    EXPECT_EQ(r.trials[i].seed, niah_trial_seed(o.seed, r.trials[i].length, r.trials[i].depth, r.trials[i].trial));
  }
  for (size_t i = 0; i < r.trials.size(); ++i) EXPECT_EQ(r.trials[i].distractor_answer, i % 2 == 1);
  EXPECT_EQ(niah_summary(r, nullptr).back().distractor_answers, 6);
  EXPECT_EQ(r.trials[0].length, 700);
  EXPECT_EQ(r.trials[11].length, 900);
  // A backend that loses a request is refused.
  const GreedyContinuation lossy = [](const std::vector<ContinuationRequest>&) { return std::vector<Continuation>(); };
  EXPECT_KIND(run_niah(tok, o, "", lossy), InvalidArgument);
}

}  // namespace
}  // namespace saap

namespace saap {
namespace {

// --dump-prompts' lines are what run_niah hands the backend, trial by trial: an independent
// implementation that reads them (scripts/niah_transformers.py) runs the same prompts.
TEST(Niah, DumpedPromptsAreWhatTheBackendGets) {
  const Tokenizer& tok = smollm2();
  for (NiahTask task : {NiahTask::Passkey, NiahTask::MultiKey}) {
    NiahOptions o;
    o.task.task = task;
    o.task.keys = 3;
    o.lengths = {700, 900};
    o.depths = {0.2, 0.8};
    o.trials = 2;
    o.batch = 3;
    o.progress = false;
    std::vector<std::vector<int32_t>> contexts, queries;
    std::vector<int> max_new;
    const GreedyContinuation record = [&](const std::vector<ContinuationRequest>& requests) {
      for (const ContinuationRequest& r : requests) {
        contexts.push_back(*r.context);
        queries.push_back(*r.query);
        max_new.push_back(r.max_new_tokens);
      }
      return std::vector<Continuation>(requests.size());
    };
    const NiahResult run = run_niah(tok, o, "", record);
    std::stringstream out;
    ASSERT_EQ(write_niah_prompts(tok, o, "", out), 8);
    std::string line;
    size_t i = 0;
    for (; std::getline(out, line); ++i) {
      ASSERT_LT(i, run.trials.size());
      const nlohmann::json j = nlohmann::json::parse(line);
      const NiahTrial& t = run.trials[i];
      EXPECT_EQ(j["task"], niah_task_name(task));
      EXPECT_EQ(j["length"].get<int64_t>(), t.length);
      EXPECT_EQ(j["depth"].get<double>(), t.depth);
      EXPECT_EQ(j["trial"].get<int>(), t.trial);
      EXPECT_EQ(j["seed"].get<uint64_t>(), t.seed);
      EXPECT_EQ(j["context"].get<std::vector<int32_t>>(), contexts[i]);
      EXPECT_EQ(j["query"].get<std::vector<int32_t>>(), queries[i]);
      EXPECT_EQ(j["max_new_tokens"].get<int>(), max_new[i]);
      EXPECT_EQ(j["expected"].get<std::vector<std::string>>(), t.expected);
      EXPECT_EQ(j["distractors"].get<std::vector<std::string>>(), t.distractors);
      EXPECT_EQ(j["asked_needle_token"].get<int64_t>(), t.needle_token);
      // Each needle's span holds one of the numbers; the haystack starts after the instructions.
      const auto starts = j["needle_tokens"].get<std::vector<int64_t>>();
      const auto lengths = j["needle_lengths"].get<std::vector<int64_t>>();
      ASSERT_EQ(starts.size(), lengths.size());
      ASSERT_EQ(starts.size(), task == NiahTask::Passkey ? 1u : 3u);
      const int64_t begin = j["haystack_begin"].get<int64_t>();
      EXPECT_GT(begin, 10);
      const std::string head = tok.decode({contexts[i].begin(), contexts[i].begin() + begin});
      EXPECT_NE(head.find(task == NiahTask::Passkey ? "irrelevant text" : "magic numbers are hidden"), std::string::npos)
          << head;
      int numbers = 0;
      for (size_t k = 0; k < starts.size(); ++k) {
        EXPECT_GE(starts[k], begin);
        const std::string needle =
            tok.decode({contexts[i].begin() + starts[k], contexts[i].begin() + starts[k] + lengths[k]});
        numbers += score_niah(t.expected, needle).found + score_niah(t.distractors, needle).found;
        EXPECT_NE(needle.find(task == NiahTask::Passkey ? " The pass key is " : " One of the special magic numbers"),
                  std::string::npos) << needle;
      }
      EXPECT_EQ(numbers, int(starts.size()));
    }
    EXPECT_EQ(i, run.trials.size());
  }
}

}  // namespace
}  // namespace saap
