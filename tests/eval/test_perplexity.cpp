// Perplexity windows and NLL against the NumPy float64 reference forward pass
// (scripts/reference_forward.py), which knows nothing of saap's windowing or chunking.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/eval/perplexity.h"

namespace saap {
namespace {

std::shared_ptr<const LlamaModel> real_model() {
  static std::shared_ptr<const LlamaModel> model = LlamaModel::load(default_model_path(), false);
  return model;
}

std::vector<int32_t> text_tokens(size_t n, unsigned seed) {
  std::vector<int32_t> t = real_model()->tokenizer().encode(
      "Debian is a free operating system. The installer copies the base system to the disk, and then "
      "the package manager installs the rest of the software that the administrator selects.");
  std::mt19937 rng(seed);  // fresh random continuation, so the test is not tuned to one text
  std::uniform_int_distribution<int32_t> id(0, real_model()->config().vocab_size - 1);
  while (t.size() < n) t.push_back(id(rng));
  t.resize(n);
  return t;
}

std::string join(const int32_t* ids, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

// Mean NLL of each window computed from the reference's float64 logits.
std::vector<double> reference_window_nll(const std::vector<int32_t>& tokens, int64_t W, int windows) {
  const std::string out = testing::TempDir() + "saap_reference_ppl_" + std::to_string(::getpid()) + ".f64";
  std::string cmd = python_interpreter() + " " + SAAP_SOURCE_DIR + "/scripts/reference_forward.py --model '" +
                    default_model_path() + "' --out '" + out + "'";
  for (int w = 0; w < windows; ++w) cmd += " --tokens " + join(&tokens[size_t(w * W)], size_t(W - 1));
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const int64_t vocab = real_model()->config().vocab_size;
  std::vector<double> logits(size_t(windows * (W - 1) * vocab));
  std::ifstream in(out, std::ios::binary);
  in.read(reinterpret_cast<char*>(logits.data()), std::streamsize(logits.size() * sizeof(double)));
  EXPECT_TRUE(bool(in)) << "reference output " << out << " is short";
  std::remove(out.c_str());
  std::vector<double> nll;
  for (int w = 0; w < windows; ++w) {
    double sum = 0;
    for (int64_t i = 0; i < W - 1; ++i) {
      const double* row = &logits[size_t((w * (W - 1) + i) * vocab)];
      double top = row[0];
      for (int64_t j = 0; j < vocab; ++j) top = std::max(top, row[j]);
      double z = 0;
      for (int64_t j = 0; j < vocab; ++j) z += std::exp(row[j] - top);
      sum += std::log(z) + top - row[tokens[size_t(w * W + i + 1)]];
    }
    nll.push_back(sum / double(W - 1));
  }
  return nll;
}

PerplexityOptions small(int64_t window, int64_t chunk, int64_t max_windows) {
  PerplexityOptions o;
  o.window = window;
  o.chunk = chunk;
  o.max_windows = max_windows;
  o.progress = false;
  return o;
}

TEST(Perplexity, MatchesTheNumPyReferenceOverWindows) {
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int64_t W = 12;
  const auto tokens = text_tokens(2 * W + 5, seed);  // two full windows and a dropped partial one
  // chunk 5: windows of 11 inputs run as 5 + 6 (the lone last token folds into the second chunk).
  const PerplexityResult r = evaluate_perplexity(real_model(), tokens, small(W, 5, 0));
  ASSERT_FALSE(r.bos);  // SmolLM2 adds no BOS
  ASSERT_EQ(r.windows, 2);
  EXPECT_EQ(r.scored_tokens, 2 * (W - 1));
  const std::vector<double> ref = reference_window_nll(tokens, W, 2);
  ASSERT_EQ(r.window_nll.size(), 2u);
  for (int w = 0; w < 2; ++w) EXPECT_NEAR(r.window_nll[size_t(w)], ref[size_t(w)], 1e-3) << "window " << w;
  const double ref_ppl = std::exp((ref[0] + ref[1]) / 2);
  EXPECT_NEAR(r.perplexity / ref_ppl, 1.0, 1e-3);
  EXPECT_GT(r.tokens_per_second, 0);
}

TEST(Perplexity, ChunkingAndModeDoNotChangeDenseResults) {
  const auto tokens = text_tokens(40, std::random_device{}());
  PerplexityOptions a = small(14, 3, 0), b = small(14, 64, 0);  // 13 inputs: chunks 3+3+3+4
  b.mode = AttentionMode::DensePrefill;
  const PerplexityResult ra = evaluate_perplexity(real_model(), tokens, a);
  const PerplexityResult rb = evaluate_perplexity(real_model(), tokens, b);
  ASSERT_EQ(ra.windows, 2);
  EXPECT_NEAR(ra.mean_nll, rb.mean_nll, 1e-4);
  // MethodEverywhere sends every position through the (dense) method; DensePrefill none.
  EXPECT_EQ(ra.stats.queries, 2 * 13 * real_model()->config().n_layers);
  EXPECT_EQ(rb.stats.queries, 0);
  EXPECT_DOUBLE_EQ(ra.stats.fraction(), 1.0);
}

TEST(Perplexity, MaxWindowsLimitsTheRun) {
  const auto tokens = text_tokens(40, 1);
  const PerplexityResult r = evaluate_perplexity(real_model(), tokens, small(8, 8, 2));
  EXPECT_EQ(r.windows, 2);
  EXPECT_EQ(r.window_nll.size(), 2u);
}

// Shards: windows [1, 3) alone give the same per-window NLL as the same windows of a full run.
TEST(Perplexity, FirstWindowShardsTheRun) {
  const auto tokens = text_tokens(50, 2);
  const PerplexityResult all = evaluate_perplexity(real_model(), tokens, small(8, 8, 0));
  PerplexityOptions o = small(8, 8, 2);
  o.first_window = 1;
  const PerplexityResult shard = evaluate_perplexity(real_model(), tokens, o);
  ASSERT_EQ(shard.windows, 2);
  ASSERT_GE(all.window_nll.size(), 3u);
  EXPECT_DOUBLE_EQ(shard.window_nll[0], all.window_nll[1]);
  EXPECT_DOUBLE_EQ(shard.window_nll[1], all.window_nll[2]);
  o.first_window = int64_t(all.window_nll.size());
  EXPECT_THROW(evaluate_perplexity(real_model(), tokens, o), Error);
}

// The dumped windows (--dump-windows) are the text cut as the header says: W text tokens a window
// without BOS (SmolLM2), BOS + W - 1 with it (Gemma-3), from first_window on; and what
// evaluate_perplexity scores: the same NLL as a run over the text.
TEST(Perplexity, DumpedWindowsAreTheTextCutAsScored) {
  const auto tokens = text_tokens(50, 3);
  PerplexityOptions o = small(8, 8, 2);
  o.first_window = 1;
  std::stringstream out;
  ASSERT_EQ(write_perplexity_windows(real_model()->tokenizer(), tokens, o, out), 2);
  std::string line;
  std::vector<int32_t> dumped;
  for (int64_t w = 1; std::getline(out, line); ++w) {
    const nlohmann::json j = nlohmann::json::parse(line);
    EXPECT_EQ(j["window"].get<int64_t>(), w);
    EXPECT_EQ(j["tokens"].get<std::vector<int32_t>>(), std::vector<int32_t>(tokens.begin() + w * 8, tokens.begin() + w * 8 + 8));
    for (int32_t t : j["tokens"].get<std::vector<int32_t>>()) dumped.push_back(t);
  }
  ASSERT_EQ(dumped.size(), 16u);
  // Scored as a text of their own (first_window 0), they give the shard's NLL.
  const PerplexityResult shard = evaluate_perplexity(real_model(), tokens, o);
  const PerplexityResult again = evaluate_perplexity(real_model(), dumped, small(8, 8, 0));
  ASSERT_EQ(again.window_nll.size(), 2u);
  EXPECT_DOUBLE_EQ(again.window_nll[0], shard.window_nll[0]);
  EXPECT_DOUBLE_EQ(again.window_nll[1], shard.window_nll[1]);

  const std::string gemma_path = gemma3_model_path();
  if (!std::ifstream(gemma_path).good()) GTEST_SKIP() << "no Gemma-3 GGUF at " << gemma_path;
  static std::shared_ptr<const LlamaModel> gemma = LlamaModel::load(gemma_path, false);
  std::stringstream with_bos;
  ASSERT_EQ(write_perplexity_windows(gemma->tokenizer(), tokens, small(8, 8, 3), with_bos), 3);
  for (int64_t w = 0; std::getline(with_bos, line); ++w) {
    std::vector<int32_t> want = {gemma->tokenizer().bos()};
    want.insert(want.end(), tokens.begin() + w * 7, tokens.begin() + w * 7 + 7);
    EXPECT_EQ(nlohmann::json::parse(line)["tokens"].get<std::vector<int32_t>>(), want);
  }
}

TEST(Perplexity, BadOptionsAreClearErrors) {
  const auto tokens = text_tokens(10, 1);
  auto expect_invalid = [&](PerplexityOptions o, const char* needle) {
    try {
      evaluate_perplexity(real_model(), tokens, o);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_invalid(small(1, 8, 0), "window = 1");
  expect_invalid(small(16, 8, 0), "0 windows of 16");
  expect_invalid(small(4, 1, 0), "chunk = 1");
  expect_invalid(small(4, 4, -1), "max_windows = -1");
  PerplexityOptions negative = small(4, 4, 0);
  negative.first_window = -1;
  expect_invalid(negative, "first_window = -1");
  EXPECT_THROW(evaluate_perplexity_file(real_model(), "/nonexistent/text.txt", small(4, 4, 0)), Error);
}

}  // namespace
}  // namespace saap
