// Passkey prompts: exact token budget, the needle where the depth says, the number recoverable
// from the tokens, and both haystacks; bad requests refused. Uses the real tokenizer only.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/eval/passkey.h"

namespace saap {
namespace {

std::shared_ptr<const LlamaModel> real_model() {
  static std::shared_ptr<const LlamaModel> model = LlamaModel::load(default_model_path(), false);
  return model;
}

std::string eval_text() {
  std::ifstream in(default_text_path("eval.txt"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(Passkey, PromptHoldsTheNeedleAtItsDepth) {
  const Tokenizer& tok = real_model()->tokenizer();
  const std::string text = eval_text();
  for (Haystack h : {Haystack::Repeated, Haystack::RealText}) {
    int64_t previous = -1;
    for (double depth : {0.0, 0.25, 0.5, 0.75, 1.0}) {
      const int64_t length = 600;
      const int new_tokens = 6;
      const PasskeyPrompt p = build_passkey_prompt(tok, length, depth, new_tokens, h, text, 42 + uint64_t(depth * 8));
      EXPECT_EQ(int64_t(p.haystack.size() + p.question.size()), length - new_tokens);
      ASSERT_EQ(p.passkey.size(), 5u);
      // The needle's tokens spell the number, where the prompt says.
      const std::vector<int32_t> needle(p.haystack.begin() + p.needle_token,
                                        p.haystack.begin() + std::min<int64_t>(p.needle_token + 24, p.haystack.size()));
      EXPECT_NE(tok.decode(needle).find("pass key is " + p.passkey), std::string::npos) << tok.decode(needle);
      // Deeper needles sit later, and the relative position is near the depth asked.
      EXPECT_GT(p.needle_token, previous);
      previous = p.needle_token;
      const double rel = double(p.needle_token) / double(p.haystack.size());
      EXPECT_NEAR(rel, depth, 0.2) << "depth " << depth;
      // The question ends with the answer's lead-in, after the assistant header.
      const std::string q = tok.decode(p.question);
      EXPECT_NE(q.find("What is the pass key?"), std::string::npos) << q;
      EXPECT_EQ(q.substr(q.size() - 15), "The pass key is");
    }
  }
}

TEST(Passkey, BadRequestsAreRefused) {
  const Tokenizer& tok = real_model()->tokenizer();
  EXPECT_THROW(build_passkey_prompt(tok, 600, 1.5, 6, Haystack::Repeated, "", 1), Error);
  EXPECT_THROW(build_passkey_prompt(tok, 30, 0.5, 6, Haystack::Repeated, "", 1), Error);  // no room for filler
  EXPECT_THROW(build_passkey_prompt(tok, 600, 0.5, 6, Haystack::RealText, "", 1), Error);  // no filler text
  PasskeyOptions o;
  o.lengths = {real_model()->config().context_length + 1};
  EXPECT_THROW(run_passkey(real_model(), nullptr, o), Error);
}

// The result file gives what was read two ways: K/V and index together (lookup_fraction) and the
// K/V alone (kv_fraction), summed over the trials, and both per trial.
TEST(Passkey, ResultSeparatesKvFromIndexBytes) {
  PasskeyResult r;
  PasskeyTrial a;
  a.length = 1024;
  a.correct = true;
  a.lookup = {1, 100, 300, 1000};  // queries, kv, index, dense
  PasskeyTrial b = a;
  b.correct = false;
  b.lookup = {1, 50, 0, 1000};
  r.trials = {a, b};
  const nlohmann::json j = r.to_json();
  EXPECT_DOUBLE_EQ(j["lookup_fraction"].get<double>(), 450.0 / 2000.0);
  EXPECT_DOUBLE_EQ(j["kv_fraction"].get<double>(), 150.0 / 2000.0);
  EXPECT_DOUBLE_EQ(j["trials"][0]["kv_fraction"].get<double>(), 0.1);
  EXPECT_DOUBLE_EQ(j["trials"][0]["lookup_fraction"].get<double>(), 0.4);
  EXPECT_DOUBLE_EQ(j["trials"][1]["kv_fraction"].get<double>(), 0.05);
  EXPECT_DOUBLE_EQ(j["accuracy"].get<double>(), 0.5);
}

}  // namespace
}  // namespace saap
