// The attention harness on the real model: dense attention is perfect by every metric, and
// evaluating several methods on one dense pass gives each the result it gets alone.
#include <gtest/gtest.h>

#include <fstream>

#include "saap/core/paths.h"
#include "saap/eval/attention_eval.h"
#include "saap/methods/registry.h"
#include "saap/train/capture.h"

namespace saap {
namespace {

std::shared_ptr<const LlamaModel> real_model() {
  static std::shared_ptr<const LlamaModel> model = LlamaModel::load(default_model_path(), false);
  return model;
}

MethodFactory factory(const std::string& name, double lookup) {
  MethodSpec s;
  s.name = name;
  s.lookup = lookup;
  s.sinks = 2;
  s.window = 4;
  return make_method_factory(s, ArtifactIdentity{});
}

TEST(AttentionEval, DenseIsPerfectAndMethodsShareOnePass) {
  auto model = real_model();
  const auto windows = text_windows(model->tokenizer(), default_text_path("eval.txt"), 2, 48);
  AttentionEvalOptions o;
  o.queries_per_window = 8;
  o.top_k = 4;
  o.progress = false;
  const auto together = evaluate_attention(model, {factory("dense", 1), factory("streaming", 0), factory("oracle", 0.2)},
                                           windows, o);
  ASSERT_EQ(together.size(), 3u);
  const AttentionMetrics d = together[0].overall();
  const int n_layers = model->config().n_layers, n_heads = model->config().n_heads;
  EXPECT_EQ(d.samples, int64_t(2) * 8 * n_layers * n_heads);
  EXPECT_DOUBLE_EQ(d.mean_recall(), 1.0);
  EXPECT_NEAR(d.mean_mass(), 1.0, 1e-9);
  EXPECT_LT(d.mean_rel_error(), 1e-5);
  EXPECT_DOUBLE_EQ(together[0].overall_lookup().fraction(), 1.0);
  // Each query of a 48-token window is replayed in every layer.
  EXPECT_EQ(together[0].overall_lookup().queries, int64_t(2) * 48 * n_layers);

  const AttentionMetrics s = together[1].overall();
  EXPECT_LT(s.mean_mass(), 0.999);
  EXPECT_LT(together[1].overall_lookup().fraction(), 0.5);
  // Oracle top-k selects the true top-|S| keys (up to fp32 near-ties): Jaccard ~1 by definition.
  EXPECT_GT(together[2].overall().mean_jaccard(), 0.99);
  EXPECT_LT(together[2].overall().mean_selected(), 0.5);
  const auto alone = evaluate_attention(model, factory("streaming", 0), windows, o).overall();
  EXPECT_EQ(alone.samples, s.samples);
  EXPECT_DOUBLE_EQ(alone.mass, s.mass);
  EXPECT_DOUBLE_EQ(alone.recall, s.recall);
  EXPECT_DOUBLE_EQ(alone.rel_error, s.rel_error);
}

TEST(AttentionEval, GemmaReplaysItsGlobalLayersOnly) {
  const std::string path = gemma3_model_path();
  if (!std::ifstream(path).good()) GTEST_SKIP() << "no Gemma-3 GGUF at " << path;
  auto model = LlamaModel::load(path, false);
  const auto windows = text_windows(model->tokenizer(), default_text_path("eval.txt"), 1, 40);
  AttentionEvalOptions o;
  o.queries_per_window = 6;
  o.top_k = 4;
  o.progress = false;
  // A Saap-style artifact covers layers 5, 11 and 17 only: the local layers must not build a method.
  const AttentionEvalResult r = evaluate_attention(model, factory("dense", 1), windows, o);
  const int n_heads = model->config().n_heads;
  for (int l = 0; l < model->config().n_layers; ++l)
    EXPECT_EQ(r.layer(l).samples, model->config().is_global(l) ? int64_t(6) * n_heads : 0) << "layer " << l;
  EXPECT_EQ(r.overall().samples, int64_t(3) * 6 * n_heads);
  EXPECT_DOUBLE_EQ(r.overall().mean_recall(), 1.0);
  EXPECT_NEAR(r.overall().mean_mass(), 1.0, 1e-6);  // dense reads everything (float sums of probabilities)
}

}  // namespace
}  // namespace saap
