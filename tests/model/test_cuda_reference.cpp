// The CUDA runner's reference logits (tests/model/data/cuda_reference_logits.txt) must be what the
// fp32 CPU runner computes today: this test recomputes them and compares, so a change to the CPU
// forward pass that leaves the file stale fails here, on the CPU CI. With
// SAAP_WRITE_CUDA_REFERENCE=1 it rewrites the file instead.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "model/cuda_reference.h"
#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/model/llama.h"

namespace saap {
namespace {

constexpr int kTokens = 64;
constexpr int kTopK = 32;

// Two different kinds of text, so that a batch of both tells the sequences apart.
const char* const kPrompts[] = {
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden press adapted from those used to make wine. Within fifty "
    "years, presses were working in more than two hundred European cities, and the price of books fell so far "
    "that ordinary merchants could own a small library.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number, computed iteratively.\"\"\"\n    a, b = 0, 1\n"
    "    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n\nif __name__ == \"__main__\":\n"
    "    for i in range(10):\n        print(i, fibonacci(i))\n",
};

// The reference of one model: its name and shape, and how many top logits each position keeps.
testref::LogitsRef empty_reference(const LlamaConfig& c, int topk) {
  testref::LogitsRef r;
  r.model = c.name + " layers " + std::to_string(c.n_layers) + " vocab " + std::to_string(c.vocab_size);
  r.topk = topk;
  return r;
}

// Every position's fp32 CPU logits of `tokens`, summarized as the CUDA tests read them.
testref::PromptRef cpu_prompt_ref(const std::shared_ptr<const LlamaModel>& model, const std::vector<int32_t>& tokens,
                                  int topk) {
  const int64_t n = int64_t(tokens.size());
  const int V = model->config().vocab_size;
  LlamaSession session(model, n);
  std::vector<float> logits(size_t(n) * V);
  session.forward(tokens.data(), n, logits.data(), /*all_logits=*/true);
  testref::PromptRef p;
  p.tokens = tokens;
  for (int64_t i = 0; i < n; ++i)
    p.positions.push_back(testref::summarize(&logits[size_t(i) * V], V, topk, i + 1 < n ? tokens[size_t(i + 1)] : -1));
  return p;
}

testref::LogitsRef compute_reference() {
  auto model = LlamaModel::load(default_model_path(), false);
  testref::LogitsRef r = empty_reference(model->config(), kTopK);
  for (const char* text : kPrompts) {
    std::vector<int32_t> tokens = model->tokenizer().encode(text);
    EXPECT_GE(tokens.size(), size_t(kTokens)) << "prompt too short: " << text;
    tokens.resize(kTokens);
    r.prompts.push_back(cpu_prompt_ref(model, tokens, kTopK));
  }
  return r;
}

TEST(CudaReference, FileMatchesTheCpuRunner) {
  const std::string path = testref::reference_path(SAAP_SOURCE_DIR);
  const testref::LogitsRef now = compute_reference();
  const char* write = std::getenv("SAAP_WRITE_CUDA_REFERENCE");
  if (write && std::string(write) == "1") {
    testref::write_reference(path, now);
    std::printf("wrote %s\n", path.c_str());
  }
  const testref::LogitsRef file = testref::read_reference(path);
  EXPECT_EQ(file.model, now.model);
  ASSERT_EQ(file.topk, now.topk);
  ASSERT_EQ(file.prompts.size(), now.prompts.size());
  // The file holds 9 significant digits; BLAS summation order may differ across machines and
  // thread counts by a few ulps of fp32 over 30 layers: 2e-3 absolute on logits of size ~10-30.
  const double tol = 2e-3;
  for (size_t p = 0; p < now.prompts.size(); ++p) {
    ASSERT_EQ(file.prompts[p].tokens, now.prompts[p].tokens) << "prompt " << p << " tokenizes differently";
    for (size_t i = 0; i < now.prompts[p].positions.size(); ++i) {
      const testref::PositionRef &a = file.prompts[p].positions[i], &b = now.prompts[p].positions[i];
      EXPECT_NEAR(a.lse, b.lse, tol) << "prompt " << p << " position " << i;
      if (!std::isnan(b.next_logit)) {
        EXPECT_NEAR(a.next_logit, b.next_logit, tol) << "prompt " << p << " position " << i;
      }
      EXPECT_EQ(a.top_ids[0], b.top_ids[0]) << "prompt " << p << " position " << i;
      for (int k = 0; k < kTopK; ++k)
        EXPECT_NEAR(a.top_logits[size_t(k)], b.top_logits[size_t(k)], tol) << "prompt " << p << " pos " << i;
    }
  }
}

// Gemma-3-270M (tests/model/data/cuda_reference_gemma3.txt, read by
// tests/kernels/cuda/test_cuda_gemma3.cu): BOS + 640 tokens of eval.txt, the prompt of
// test_gemma3.cpp's float64 check (passed: max relative logit error 3e-6), so positions 512..640
// exercise the local layers' window. Skipped when the Gemma GGUF is not installed.
constexpr int64_t kGemmaTokens = 641;
constexpr int kGemmaTopK = 16;

testref::LogitsRef compute_gemma3_reference() {
  auto model = LlamaModel::load(gemma3_model_path(), false);
  testref::LogitsRef r = empty_reference(model->config(), kGemmaTopK);
  std::ifstream in(default_text_path("eval.txt"), std::ios::binary);
  std::string text(size_t(16000), '\0');
  in.read(&text[0], std::streamsize(text.size()));
  text.resize(size_t(in.gcount()));
  std::vector<int32_t> tokens = model->tokenizer().encode(text, /*add_bos=*/true);
  EXPECT_GE(int64_t(tokens.size()), kGemmaTokens);
  tokens.resize(size_t(kGemmaTokens));
  r.prompts.push_back(cpu_prompt_ref(model, tokens, kGemmaTopK));
  return r;
}

TEST(CudaReference, Gemma3FileMatchesTheCpuRunner) {
  try {
    gemma3_model_path();
  } catch (const Error& e) {
    GTEST_SKIP() << "no Gemma-3 model: " << e.what();
  }
  const std::string path = testref::gemma3_reference_path(SAAP_SOURCE_DIR);
  const testref::LogitsRef now = compute_gemma3_reference();
  const char* write = std::getenv("SAAP_WRITE_CUDA_REFERENCE");
  if (write && std::string(write) == "1") {
    testref::write_reference(path, now);
    std::printf("wrote %s\n", path.c_str());
  }
  const testref::LogitsRef file = testref::read_reference(path);
  EXPECT_EQ(file.model, now.model);
  ASSERT_EQ(file.topk, now.topk);
  ASSERT_EQ(file.prompts.size(), size_t(1));
  ASSERT_EQ(file.prompts[0].tokens, now.prompts[0].tokens) << "eval.txt tokenizes differently";
  // As above: a few fp32 ulps of BLAS summation order over 18 layers, on logits of size ~10-40.
  const double tol = 2e-3;
  for (size_t i = 0; i < now.prompts[0].positions.size(); ++i) {
    const testref::PositionRef &a = file.prompts[0].positions[i], &b = now.prompts[0].positions[i];
    EXPECT_NEAR(a.lse, b.lse, tol) << "position " << i;
    if (!std::isnan(b.next_logit)) {
      EXPECT_NEAR(a.next_logit, b.next_logit, tol) << "position " << i;
    }
    if (b.top_logits[0] - b.top_logits[1] > 1e-3f) {
      EXPECT_EQ(a.top_ids[0], b.top_ids[0]) << "position " << i;
    }
    for (int k = 0; k < kGemmaTopK; ++k) EXPECT_NEAR(a.top_logits[size_t(k)], b.top_logits[size_t(k)], tol) << i;
  }
}

// The long window: 8192 tokens of eval.txt, run in chunks of 512 (as `saap eval ppl` does). Writing
// it takes minutes on a small CPU, so without SAAP_WRITE_CUDA_REFERENCE=1 only the first 256
// positions are recomputed and compared (causal: they do not depend on the later tokens).
constexpr int64_t kLongTokens = 8192;

testref::LongRef compute_long_reference(int64_t positions) {
  auto model = LlamaModel::load(default_model_path(), false);
  const LlamaConfig& c = model->config();
  testref::LongRef r;
  r.model = c.name + " layers " + std::to_string(c.n_layers) + " vocab " + std::to_string(c.vocab_size);
  std::ifstream in(default_text_path("eval.txt"), std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  r.tokens = model->tokenizer().encode(text.str());
  EXPECT_GE(r.tokens.size(), size_t(kLongTokens));
  r.tokens.resize(size_t(kLongTokens));
  LlamaSession session(model, kLongTokens);
  const int64_t chunk = 512;
  std::vector<float> logits(size_t(chunk) * c.vocab_size);
  for (int64_t p0 = 0; p0 < positions; p0 += chunk) {
    const int64_t m = std::min(chunk, positions - p0);
    session.forward(&r.tokens[size_t(p0)], m, logits.data(), /*all_logits=*/true);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t pos = p0 + i;
      const testref::PositionRef p = testref::summarize(&logits[size_t(i) * c.vocab_size], c.vocab_size, 2,
                                                        pos + 1 < kLongTokens ? r.tokens[size_t(pos + 1)] : -1);
      r.top1.push_back(p.top_ids[0]);
      r.margin.push_back(p.top_logits[0] - p.top_logits[1]);
      r.nll.push_back(p.lse - p.next_logit);
    }
  }
  return r;
}

TEST(CudaReference, LongWindowFileMatchesTheCpuRunner) {
  const std::string path = testref::long_reference_path(SAAP_SOURCE_DIR);
  const char* write = std::getenv("SAAP_WRITE_CUDA_REFERENCE");
  const bool rewrite = write && std::string(write) == "1";
  const testref::LongRef now = compute_long_reference(rewrite ? kLongTokens : 256);
  if (rewrite) {
    testref::write_long_reference(path, now);
    std::printf("wrote %s\n", path.c_str());
  }
  const testref::LongRef file = testref::read_long_reference(path);
  EXPECT_EQ(file.model, now.model);
  ASSERT_EQ(file.tokens, now.tokens) << "eval.txt tokenizes differently";
  ASSERT_EQ(file.top1.size(), size_t(kLongTokens));
  for (size_t i = 0; i < now.top1.size(); ++i) {
    // Same tolerance reasoning as above; the file keeps 7 significant digits of the NLL.
    if (now.margin[i] > 1e-3f) {
      EXPECT_EQ(file.top1[i], now.top1[i]) << "position " << i;
    }
    EXPECT_NEAR(file.margin[i], now.margin[i], 2e-3) << "position " << i;
    if (!std::isnan(now.nll[i])) {
      EXPECT_NEAR(file.nll[i], now.nll[i], 2e-3) << "position " << i;
    }
  }
}

}  // namespace
}  // namespace saap
