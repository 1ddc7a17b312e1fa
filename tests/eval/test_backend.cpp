// The harness over a backend that takes several sequences per call, as the CUDA backend does:
// windows and passkey trials are grouped by max_batch() and their results come back in order.
// A backend that batches the CPU runner's calls must give exactly the CPU's numbers (same runner,
// same inputs, only the grouping differs), so any mix-up of the grouping shows as a difference.
#include <gtest/gtest.h>

#include <random>
#include <set>

#include "saap/core/paths.h"
#include "saap/eval/passkey.h"
#include "saap/eval/perplexity.h"

namespace saap {
namespace {

std::shared_ptr<const LlamaModel> real_model() {
  static std::shared_ptr<const LlamaModel> model = LlamaModel::load(default_model_path(), false);
  return model;
}

// The CPU backend, reporting max_batch 3 and recording the batch of every call.
class BatchOfThree : public EvalBackend {
 public:
  explicit BatchOfThree(std::shared_ptr<const LlamaModel> m) : cpu_(std::move(m), nullptr, "dense") {}
  std::string device() const override { return "test"; }
  std::string device_name() const override { return "the CPU, three at a time"; }
  const LlamaConfig& config() const override { return cpu_.config(); }
  const Tokenizer& tokenizer() const override { return cpu_.tokenizer(); }
  const std::string& identity() const override { return cpu_.identity(); }
  std::string method() const override { return "dense"; }
  int max_batch() const override { return 3; }
  int64_t max_context() const override { return cpu_.max_context(); }
  void window_nll(const int32_t* windows, int batch, int64_t W, AttentionMode mode, double* nll, LookupStats* stats,
                  LookupStats* global_stats, const PositionProgress& progress) override {
    batches.push_back(batch);
    EXPECT_LE(batch, 3);
    cpu_.window_nll(windows, batch, W, mode, nll, stats, global_stats, progress);
  }
  // Without running the model: each answer is the pass key its own prompt holds, so a trial that
  // gets another trial's answer (a different key) is wrong.
  std::vector<GreedyResult> greedy(const std::vector<GreedyRequest>& requests, int max_new_tokens, bool,
                                   const PositionProgress&) override {
    batches.push_back(int(requests.size()));
    EXPECT_LE(requests.size(), 3u);
    std::vector<GreedyResult> out;
    for (const GreedyRequest& r : requests) {
      const std::string prompt = tokenizer().decode(r.prompt);
      const size_t at = prompt.find("The pass key is ");
      EXPECT_NE(at, std::string::npos);
      std::vector<int32_t> answer = tokenizer().encode(" " + prompt.substr(at + 16, 5));
      answer.resize(std::min(answer.size(), size_t(max_new_tokens)));
      out.push_back({answer, {}});
    }
    return out;
  }
  GenerateResult generate(const std::vector<int32_t>& prompt, int64_t max_new_tokens, Sampler& sampler,
                          const std::function<void(int32_t)>& on_token, const PositionProgress& progress) override {
    return cpu_.generate(prompt, max_new_tokens, sampler, on_token, progress);
  }
  EndToEndTiming time_end_to_end(int batch, int64_t prompt, int steps, int reps) override {
    return cpu_.time_end_to_end(batch, prompt, steps, reps);
  }
  std::vector<int> batches;

 private:
  CpuEvalBackend cpu_;
};

TEST(Backend, BatchedPerplexityWindowsComeBackInOrder) {
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int32_t> id(0, real_model()->config().vocab_size - 1);
  std::vector<int32_t> tokens(7 * 12 + 5);  // 7 windows of 12 and a partial one, dropped
  for (auto& t : tokens) t = id(rng);
  PerplexityOptions o;
  o.window = 12;
  o.progress = false;
  BatchOfThree batched(real_model());
  const PerplexityResult a = evaluate_perplexity(batched, tokens, o);
  const PerplexityResult b = evaluate_perplexity(real_model(), tokens, o);
  EXPECT_EQ(batched.batches, (std::vector<int>{3, 3, 1}));
  ASSERT_EQ(a.window_nll.size(), 7u);
  EXPECT_EQ(a.window_nll, b.window_nll);  // the same runner on the same windows: bit for bit
  EXPECT_EQ(a.perplexity, b.perplexity);
  EXPECT_EQ(a.scored_tokens, b.scored_tokens);
}

TEST(Backend, BatchedPasskeyTrialsComeBackInOrder) {
  PasskeyOptions o;
  o.lengths = {160, 200};
  o.depths = {0.0, 1.0};
  o.trials = 2;  // 4 trials per length: groups of 3 and 1
  o.max_new_tokens = 8;
  o.progress = false;
  BatchOfThree batched(real_model());
  const PasskeyResult r = run_passkey(batched, o);
  EXPECT_EQ(batched.batches, (std::vector<int>{3, 1, 3, 1}));
  ASSERT_EQ(r.trials.size(), 8u);
  for (size_t i = 0; i < r.trials.size(); ++i) {
    const PasskeyTrial& t = r.trials[i];
    EXPECT_EQ(t.length, o.lengths[i / 4]) << i;
    EXPECT_EQ(t.depth, o.depths[(i / 2) % 2]) << i;
    EXPECT_EQ(t.trial, int(i % 2)) << i;
    EXPECT_TRUE(t.correct) << "trial " << i << " key " << t.passkey << " got '" << t.answer << "'";
  }
  std::set<std::string> keys;
  for (const PasskeyTrial& t : r.trials) keys.insert(t.passkey);
  EXPECT_GE(keys.size(), 7u) << "the trials' keys must differ, or a swap would go unseen";
}

}  // namespace
}  // namespace saap
