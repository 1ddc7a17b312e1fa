// The registry: one rule for budgets at the edges. Every method refuses the same bad fractions in
// the same words, an option given to a method it does not apply to is refused naming both, and the
// registry knows which method needs which artifact.
#include "saap/methods/registry.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "saap/core/error.h"

namespace saap {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(int(e.kind()), int(ErrorKind::InvalidArgument)) << e.what();
    return e.what();
  }
  return "";
}

ArtifactIdentity any_model() {
  ArtifactIdentity id;
  id.model_identity = "synthetic";
  id.n_layers = 1;
  id.n_heads = 2;
  id.n_kv_heads = 1;
  id.head_dim = 8;
  return id;
}

TEST(Registry, EveryLookupMethodRefusesZeroAndAboveOneInTheSameWords) {
  for (const std::string name : {"oracle", "h2o", "saap", "kmeans", "partition-oracle"})
    for (double bad : {0.0, -0.5, 1.5}) {
      MethodSpec spec;
      spec.name = name;
      spec.lookup = bad;
      spec.artifact = "/nonexistent/never-read.safetensors";  // the budget is refused before any file is read
      const std::string msg = error_of([&] { make_method_factory(spec, any_model()); });
      char want[96];
      std::snprintf(want, sizeof want, "lookup = %g must be in (0, 1]", bad);
      EXPECT_NE(msg.find(want), std::string::npos) << name << ": " << msg;
    }
  MethodSpec loki;
  loki.name = "loki";
  loki.artifact = "/nonexistent/never-read.safetensors";
  loki.k_f = 0.0;
  EXPECT_NE(error_of([&] { make_method_factory(loki, any_model()); }).find("k_f = 0 must be in (0, 1]"), std::string::npos);
  loki.k_f = 0.25;
  loki.d_f = 0.0;
  EXPECT_NE(error_of([&] { make_method_factory(loki, any_model()); }).find("d_f = 0 must be in (0, 1]"), std::string::npos);
}

TEST(Registry, ABudgetOptionGivenToAMethodItDoesNotApplyToIsRefusedNamingBoth) {
  struct Case {
    const char* method;
    const char* option;
  };
  for (const Case c : {Case{"dense", kOptLookup}, Case{"streaming", kOptLookup}, Case{"saap", kOptKf},
                       Case{"kmeans", kOptDf}, Case{"loki", kOptLookup}, Case{"loki", kOptSinks},
                       Case{"oracle", kOptWindow}, Case{"h2o", kOptArtifact}, Case{"dense", kOptArtifact}}) {
    const std::string msg = error_of([&] { check_options_apply(c.method, {c.option}); });
    EXPECT_NE(msg.find(c.option), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::string("method ") + c.method), std::string::npos) << msg;
  }
  // What applies passes.
  check_options_apply("saap", {kOptLookup, kOptSinks, kOptWindow, kOptArtifact});
  check_options_apply("loki", {kOptKf, kOptDf, kOptArtifact});
  check_options_apply("streaming", {kOptSinks, kOptWindow});
  check_options_apply("oracle", {kOptLookup});
  check_options_apply("dense", {});
  EXPECT_NE(error_of([] { check_options_apply("flash", {}); }).find("not one of"), std::string::npos);
}

TEST(Registry, KnowsWhichMethodNeedsWhichArtifact) {
  for (const std::string name : {"loki", "saap", "kmeans", "partition-oracle"}) {
    EXPECT_TRUE(method_needs_artifact(name)) << name;
    MethodSpec spec;
    spec.name = name;
    const std::string msg = error_of([&] { make_method_factory(spec, any_model()); });
    EXPECT_NE(msg.find("needs an artifact"), std::string::npos) << msg;
    EXPECT_NE(msg.find("saap train"), std::string::npos) << msg;
  }
  for (const std::string name : {"dense", "oracle", "streaming", "h2o"}) EXPECT_FALSE(method_needs_artifact(name)) << name;
  MethodSpec loki;
  loki.name = "loki";
  EXPECT_NE(error_of([&] { make_method_factory(loki, any_model()); }).find("`saap train loki`"), std::string::npos);
  EXPECT_EQ(method_names().size(), method_table().size());
}

TEST(Registry, StreamingWindowAtAnEqualBudget) {
  // B = L (1 - sqrt(1 - f)) tokens in all, sinks included: L = 1024, f = 0.125 gives 66.14 -> 66.
  EXPECT_EQ(equal_budget_streaming_window(0.125, 1024, 4), 62);
  EXPECT_EQ(equal_budget_streaming_window(0.5, 1000, 0), 293);  // 1000 (1 - 0.7071) = 292.9
  EXPECT_EQ(equal_budget_streaming_window(1e-4, 100, 4), 0);     // at least one token, all sinks
  // Its measured fraction: sum_t min(t, B) over t = 1..L against sum_t t is f, to O(1/L).
  const int64_t L = 4096;
  for (double f : {0.05, 0.25, 0.5}) {
    const int64_t B = equal_budget_streaming_window(f, L, 0);
    double read = 0, dense = 0;
    for (int64_t t = 1; t <= L; ++t) read += double(std::min(t, B)), dense += double(t);
    EXPECT_NEAR(read / dense, f, 2.0 / double(L)) << f;
  }
  EXPECT_THROW(equal_budget_streaming_window(0.0, 100, 4), Error);
}

TEST(Registry, MethodOptionsSetTheirFieldFromText) {
  MethodSpec s;
  EXPECT_TRUE(set_method_option(s, "--method", "quest"));
  EXPECT_TRUE(set_method_option(s, kOptLookup, "0.02"));
  EXPECT_TRUE(set_method_option(s, kOptSinks, "8"));
  EXPECT_TRUE(set_method_option(s, kOptWindow, "16"));
  EXPECT_TRUE(set_method_option(s, kOptBudgetTokens, "512"));
  EXPECT_TRUE(set_method_option(s, kOptPageSize, "32"));
  EXPECT_TRUE(set_method_option(s, kOptKf, "0.5"));
  EXPECT_TRUE(set_method_option(s, kOptDf, "0.125"));
  EXPECT_TRUE(set_method_option(s, kOptArtifact, "a.safetensors"));
  EXPECT_EQ(s.name, "quest");
  EXPECT_EQ(s.lookup, 0.02);
  EXPECT_EQ(s.sinks, 8);
  EXPECT_EQ(s.window, 16);
  EXPECT_EQ(s.budget_tokens, 512);
  EXPECT_EQ(s.page_size, 32);
  EXPECT_EQ(s.k_f, 0.5);
  EXPECT_EQ(s.d_f, 0.125);
  EXPECT_EQ(s.artifact, "a.safetensors");
  EXPECT_FALSE(set_method_option(s, "--window-len", "2048"));  // not a method option: the caller's
  // A value that is not a number of the field's type is refused naming the option, and kept out.
  for (const auto& [opt, text] : std::vector<std::pair<std::string, std::string>>{
           {kOptLookup, "0.x5"}, {kOptLookup, ""}, {kOptSinks, "4.5"}, {kOptWindow, "16k"}, {kOptKf, "nan"}}) {
    const std::string msg = error_of([&] { set_method_option(s, opt, text); });
    EXPECT_NE(msg.find(opt), std::string::npos) << opt << " " << text << ": " << msg;
  }
  EXPECT_EQ(s.lookup, 0.02);
  EXPECT_EQ(s.sinks, 8);
}

TEST(Registry, BudgetLabelsNameTheMethodAndItsBudget) {
  MethodSpec s;
  EXPECT_EQ(method_budget_label(s), "dense");
  s.name = "saap";
  s.lookup = 0.05;
  EXPECT_EQ(method_budget_label(s), "saap@0.05");
  s.name = "quest";
  s.budget_tokens = 512;
  EXPECT_EQ(method_budget_label(s), "quest@512t");  // a token budget wins over the fraction
  s.name = "loki";
  s.k_f = 0.25;
  EXPECT_EQ(method_budget_label(s), "loki@0.25");  // Loki's budget is k_f
}

}  // namespace
}  // namespace saap
