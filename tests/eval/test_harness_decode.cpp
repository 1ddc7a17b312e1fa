// The quality harness computes "every position attends through the method" in one
// MethodEverywhere pass. These tests show that this is what decoding does: the same tokens fed one
// at a time through the KV cache (LlamaSession::forward with n = 1, the same method) give the
// same logits and so the same perplexity; and that `dense` through the harness is the plain
// runner's perplexity. Real model, 40-token windows.
#include <gtest/gtest.h>

#include <cmath>

#include "saap/core/paths.h"
#include "saap/eval/perplexity.h"
#include "saap/methods/registry.h"
#include "saap/train/capture.h"

namespace saap {
namespace {

std::shared_ptr<const LlamaModel> real_model() {
  static std::shared_ptr<const LlamaModel> model = LlamaModel::load(default_model_path(), false);
  return model;
}

ArtifactIdentity identity_of(const LlamaModel& m) {
  ArtifactIdentity id;
  id.model_identity = m.identity();
  id.n_layers = m.config().n_layers;
  id.n_heads = m.config().n_heads;
  id.n_kv_heads = m.config().n_kv_heads;
  id.head_dim = m.config().head_dim;
  return id;
}

std::vector<int32_t> eval_tokens(int n) {
  return text_windows(real_model()->tokenizer(), default_text_path("eval.txt"), 3, n)[1];
}

double log_softmax_at(const float* logits, int vocab, int32_t token) {
  double mx = -INFINITY, sum = 0;
  for (int i = 0; i < vocab; ++i) mx = std::max(mx, double(logits[i]));
  for (int i = 0; i < vocab; ++i) sum += std::exp(double(logits[i]) - mx);
  return double(logits[token]) - mx - std::log(sum);
}

// StreamingLLM with a window far shorter than the sequence, so that most positions attend to a
// strict subset of their prefix and any disagreement between the two paths would show.
MethodSpec sparse_spec() {
  MethodSpec s;
  s.name = "streaming";
  s.sinks = 2;
  s.window = 6;
  return s;
}

TEST(HarnessDecode, MethodEverywhereEqualsTokenByTokenDecode) {
  auto model = real_model();
  const int n = 40, V = model->config().vocab_size;
  const std::vector<int32_t> tokens = eval_tokens(n);
  const MethodFactory factory = make_method_factory(sparse_spec(), identity_of(*model));

  LlamaSession everywhere(model, n, factory, AttentionMode::MethodEverywhere);
  std::vector<float> all(size_t(n) * V);
  everywhere.forward(tokens.data(), n, all.data(), /*all_logits=*/true);

  // Decoding: one token per call; in DensePrefill mode a single-token step runs the method.
  LlamaSession decode(model, n, factory, AttentionMode::DensePrefill);
  std::vector<float> step(static_cast<size_t>(V));
  double nll_decode = 0, max_diff = 0, max_logit = 0;
  for (int t = 0; t < n; ++t) {
    decode.forward(&tokens[size_t(t)], 1, step.data());
    for (int i = 0; i < V; ++i) {
      max_diff = std::max(max_diff, double(std::abs(step[size_t(i)] - all[size_t(t) * V + i])));
      max_logit = std::max(max_logit, double(std::abs(step[size_t(i)])));
    }
    if (t + 1 < n) nll_decode -= log_softmax_at(step.data(), V, tokens[size_t(t) + 1]);
  }
  nll_decode /= n - 1;
  EXPECT_LT(max_diff, 1e-4 * max_logit + 1e-4) << "largest logit " << max_logit;
  // Both paths read the same positions.
  EXPECT_EQ(everywhere.stats().kv_bytes, decode.stats().kv_bytes);
  EXPECT_LT(everywhere.stats().fraction(), 0.5);

  // The harness's perplexity under the method is the decode's.
  PerplexityOptions po;
  po.window = n;
  po.max_windows = 1;
  po.methods = factory;
  po.mode = AttentionMode::MethodEverywhere;
  po.progress = false;
  const PerplexityResult harness = evaluate_perplexity(model, tokens, po);
  ASSERT_EQ(harness.scored_tokens, n - 1);
  EXPECT_NEAR(harness.mean_nll, nll_decode, 1e-4 * nll_decode);

  // And the method matters: dense attention gives a different perplexity on this window.
  po.methods = nullptr;
  po.mode = AttentionMode::DensePrefill;
  const PerplexityResult plain = evaluate_perplexity(model, tokens, po);
  EXPECT_GT(std::abs(plain.mean_nll - harness.mean_nll), 1e-3);
}

TEST(HarnessDecode, DenseThroughTheHarnessIsThePlainPerplexity) {
  auto model = real_model();
  const int n = 40;
  const std::vector<int32_t> tokens = eval_tokens(n);
  PerplexityOptions po;
  po.window = n;
  po.max_windows = 1;
  po.progress = false;
  po.mode = AttentionMode::DensePrefill;
  const PerplexityResult plain = evaluate_perplexity(model, tokens, po);
  MethodSpec dense;
  dense.name = "dense";
  po.methods = make_method_factory(dense, identity_of(*model));
  po.mode = AttentionMode::MethodEverywhere;
  const PerplexityResult harness = evaluate_perplexity(model, tokens, po);
  EXPECT_NEAR(harness.perplexity, plain.perplexity, 1e-5 * plain.perplexity);
  EXPECT_DOUBLE_EQ(harness.stats.fraction(), 1.0);
}

}  // namespace
}  // namespace saap
