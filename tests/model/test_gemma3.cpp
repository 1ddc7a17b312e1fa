// The runner on Gemma-3-270M against an independent reference: scripts/reference_gemma3.py runs
// the published architecture in NumPy float64 over tensors dequantized by the `gguf` Python
// package. The prompt (BOS + 640 tokens of eval.txt) crosses the 512-token sliding window, so
// the local layers' window, the two RoPE bases and the global layers are all exercised.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "fuzz/tiny_gguf.h"
#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/core/safetensors.h"
#include "saap/model/llama.h"

namespace saap {
namespace {

constexpr int64_t kPromptTokens = 641;  // BOS + 640: 129 positions past the 512 window

std::shared_ptr<const LlamaModel> gemma() {
  static std::shared_ptr<const LlamaModel> model = LlamaModel::load(gemma3_model_path(), false);
  return model;
}

std::vector<int32_t> eval_prompt(int64_t n) {
  std::ifstream in(default_text_path("eval.txt"));
  std::string text(size_t(16000), '\0');
  in.read(&text[0], std::streamsize(text.size()));
  text.resize(size_t(in.gcount()));
  std::vector<int32_t> ids = gemma()->tokenizer().encode(text, /*add_bos=*/true);
  EXPECT_GE(int64_t(ids.size()), n);
  ids.resize(size_t(n));
  return ids;
}

std::string join(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

template <class T>
std::vector<T> read_all(const std::string& path, size_t count) {
  std::vector<T> data(count);
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(data.data()), std::streamsize(count * sizeof(T)));
  EXPECT_TRUE(bool(in)) << path << " is short";
  std::remove(path.c_str());
  return data;
}

std::vector<float> run(const std::vector<int32_t>& tokens, AttentionMode mode = AttentionMode::DensePrefill) {
  LlamaSession session(gemma(), int64_t(tokens.size()), nullptr, mode);
  std::vector<float> logits(tokens.size() * size_t(gemma()->config().vocab_size));
  session.forward(tokens.data(), int64_t(tokens.size()), logits.data(), true);
  return logits;
}

TEST(Gemma3, LoadsTheConfig) {
  const LlamaConfig& c = gemma()->config();
  EXPECT_EQ(c.architecture, "gemma3");
  EXPECT_EQ(c.n_layers, 18);
  EXPECT_EQ(c.n_embd, 640);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 256);
  EXPECT_EQ(c.n_ff, 2048);
  EXPECT_EQ(c.vocab_size, 262144);
  EXPECT_EQ(c.context_length, 32768);
  EXPECT_TRUE(c.tied_output);
  EXPECT_EQ(c.n_global_layers(), 3);
  for (int l = 0; l < c.n_layers; ++l) EXPECT_EQ(c.layer_window[size_t(l)], l % 6 == 5 ? 0 : 512) << "layer " << l;
  EXPECT_FLOAT_EQ(c.rope.base, 1e6f);
  EXPECT_FLOAT_EQ(c.rope_local.base, 1e4f);
  EXPECT_FLOAT_EQ(c.embed_scale, std::sqrt(640.0f));
  EXPECT_EQ(c.final_logit_softcap, 0.0f);
  EXPECT_NE(gemma()->identity().find("gemma3 L18"), std::string::npos) << gemma()->identity();
}

// Top-1 at every position and the full logits of 12 positions (before, at and past the window
// edge) against the float64 reference. Tolerance 1e-4 relative (max |diff| over max |logit| of
// the row): the runner is fp32 end to end, through 18 blocks of sums up to 2048 terms, four
// RMSNorms with gains near 10 and a 262,144-way unembedding; measured 3.0e-6 (see the printout).
TEST(Gemma3, LogitsMatchTheNumPyReference) {
  const std::vector<int32_t> tokens = eval_prompt(kPromptTokens);
  const std::vector<int64_t> rows = {0, 1, 2, 100, 400, 510, 511, 512, 513, 600, 639, 640};
  std::string rows_arg;
  for (size_t i = 0; i < rows.size(); ++i) rows_arg += (i ? "," : "") + std::to_string(rows[i]);
  const std::string base = testing::TempDir() + "saap_gemma3_ref_" + std::to_string(::getpid());
  const std::string cmd = python_interpreter() + " " + SAAP_SOURCE_DIR + "/scripts/reference_gemma3.py --model '" +
                          gemma3_model_path() + "' --tokens " + join(tokens) + " --rows " + rows_arg +
                          " --out-top1 '" + base + ".i64' --out-logits '" + base + ".f64'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const int64_t vocab = gemma()->config().vocab_size;
  const std::vector<int64_t> ref_top1 = read_all<int64_t>(base + ".i64", tokens.size());
  const std::vector<double> ref_rows = read_all<double>(base + ".f64", rows.size() * size_t(vocab));

  const std::vector<float> ours = run(tokens);
  int64_t same = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const float* o = &ours[i * size_t(vocab)];
    same += (std::max_element(o, o + vocab) - o) == ref_top1[i];
  }
  const double agreement = double(same) / double(tokens.size());
  double worst = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    const float* o = &ours[size_t(rows[r]) * size_t(vocab)];
    const double* ref = &ref_rows[r * size_t(vocab)];
    double diff = 0, scale = 0;
    for (int64_t j = 0; j < vocab; ++j) {
      diff = std::max(diff, std::abs(double(o[j]) - ref[j]));
      scale = std::max(scale, std::abs(ref[j]));
    }
    worst = std::max(worst, diff / scale);
  }
  std::printf("gemma3 vs float64 reference over %zu positions: top-1 identical at %.4f, max relative logit error "
              "%.3g (%zu rows)\n", tokens.size(), agreement, worst, rows.size());
  EXPECT_GE(agreement, 0.99);
  EXPECT_LE(worst, 1e-4);
}

// Every position through the layers' methods (decode path: SlidingWindowAttention on local
// layers, DenseAttention on global ones) equals the prefill path (windowed prefill kernel).
TEST(Gemma3, MethodPathEqualsPrefillPathAcrossTheWindow) {
  const std::vector<int32_t> tokens = eval_prompt(560);
  const int64_t vocab = gemma()->config().vocab_size;
  const std::vector<float> prefill = run(tokens, AttentionMode::DensePrefill);
  LlamaSession session(gemma(), int64_t(tokens.size()), nullptr, AttentionMode::MethodEverywhere);
  std::vector<float> stepped(prefill.size());
  session.forward(tokens.data(), int64_t(tokens.size()), stepped.data(), true);
  double worst = 0;
  for (size_t i = 0; i < prefill.size(); ++i) worst = std::max(worst, double(std::abs(prefill[i] - stepped[i])));
  EXPECT_LT(worst, 1e-3) << "max |logit difference| (fp32, logits of magnitude ~30)";
  (void)vocab;

  // Local layers read their window and count it as their dense read; global layers read the
  // whole prefix. Dense reads fraction 1 either way, and the global stats count 3 of 18 layers.
  const LookupStats& all = session.stats();
  const LookupStats& global = session.global_stats();
  EXPECT_EQ(all.queries, 18 * int64_t(tokens.size()));
  EXPECT_EQ(global.queries, 3 * int64_t(tokens.size()));
  EXPECT_DOUBLE_EQ(all.fraction(), 1.0);
  EXPECT_DOUBLE_EQ(global.fraction(), 1.0);
  const int64_t token_bytes = 2 * 256 * 4, n = int64_t(tokens.size());
  const int64_t prefix_sum = n * (n + 1) / 2;                           // sum over queries of n_ctx
  const int64_t window_sum = 512 * 513 / 2 + (n - 512) * 512;           // sum of min(n_ctx, 512)
  EXPECT_EQ(global.kv_bytes, 3 * prefix_sum * token_bytes);
  EXPECT_EQ(all.kv_bytes, (3 * prefix_sum + 15 * window_sum) * token_bytes);
}

TEST(Gemma3, ContextOverTheModelsLengthIsANamedError) {
  try {
    LlamaSession session(gemma(), 32769);
    FAIL() << "a 32769-position session was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("context length 32768"), std::string::npos) << e.what();
  }
}

TEST(Gemma3, UnsupportedArchitectureIsANamedError) {
  test_data::TinyGGUF gguf;
  gguf.add_string("general.architecture", "gpt2");
  const std::vector<uint8_t> bytes = gguf.bytes();
  const std::string path = testing::TempDir() + "saap_gpt2_arch_" + std::to_string(::getpid()) + ".gguf";
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  try {
    LlamaModel::load(path, false);
    FAIL() << "a gpt2 GGUF loaded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Unsupported);
    EXPECT_NE(std::string(e.what()).find("general.architecture = \"gpt2\""), std::string::npos) << e.what();
  }
  std::remove(path.c_str());
}

// Artifacts (Loki, k-means, Saap) carry the identity of the model they were trained on, and every
// method factory checks it with check_artifact: one trained on SmolLM2 is refused for Gemma.
TEST(Gemma3, SmolLM2ArtifactIsRefused) {
  auto identity = [](const LlamaModel& m) {
    ArtifactIdentity id;
    id.method = "loki";
    id.model_identity = m.identity();
    id.n_layers = m.config().n_layers;
    id.n_heads = m.config().n_heads;
    id.n_kv_heads = m.config().n_kv_heads;
    id.head_dim = m.config().head_dim;
    return id;
  };
  const ArtifactIdentity smollm2 = identity(*LlamaModel::load(default_model_path(), false));
  try {
    check_artifact(to_json(smollm2), identity(*gemma()), "smollm2_loki.safetensors");
    FAIL() << "a SmolLM2 artifact passed for Gemma-3";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::BadFile);
    EXPECT_NE(std::string(e.what()).find("trained for another model"), std::string::npos) << e.what();
  }
}

TEST(Gemma3, ModelNamesResolve) {
  EXPECT_EQ(model_path("gemma3"), gemma3_model_path());
  EXPECT_EQ(model_path(""), default_model_path());
  EXPECT_EQ(model_path("smollm2"), default_model_path());
  try {
    model_path("no-such-model");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::NotFound);
  }
}

}  // namespace
}  // namespace saap
