// Gemma-3's SentencePiece vocabulary (262,144 tokens, tokenizer.ggml.model = "llama", no space
// prefix, user-defined runs of newlines/spaces/tabs) against Hugging Face transformers'
// GemmaTokenizer built from the same GGUF: tests/model/data/gemma3_tokenizer_vectors.json, made
// by scripts/make_gemma3_tokenizer_vectors.py.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/model/gguf.h"
#include "saap/model/tokenizer.h"

namespace saap {
namespace {

const Tokenizer& gemma_tokenizer() {
  static Tokenizer tok = Tokenizer::from_gguf(GGUFFile::open(gemma3_model_path()));
  return tok;
}

const nlohmann::json& vectors() {
  static nlohmann::json v = [] {
    std::ifstream in(std::string(SAAP_SOURCE_DIR) + "/tests/model/data/gemma3_tokenizer_vectors.json");
    EXPECT_TRUE(in.good());
    return nlohmann::json::parse(in);
  }();
  return v;
}

uint64_t fnv1a64(const void* data, size_t n, uint64_t h = 14695981039346656037ull) {  // FNV-1a 64 offset basis
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

std::string hex(uint64_t h) {
  char s[17];
  std::snprintf(s, sizeof s, "%016llx", (unsigned long long)h);
  return s;
}

TEST(Gemma3Tokenizer, MatchesTransformersOnTheCases) {
  const Tokenizer& tok = gemma_tokenizer();
  EXPECT_EQ(tok.vocab_size(), 262144);
  for (const auto& c : vectors().at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    EXPECT_EQ(tok.encode(text, false, false), c.at("plain").get<std::vector<int32_t>>()) << "plain: " << text;
    EXPECT_EQ(tok.encode(text, false, true), c.at("special").get<std::vector<int32_t>>()) << "special: " << text;
    EXPECT_EQ(tok.decode(tok.encode(text, false, false)), text);
  }
}

TEST(Gemma3Tokenizer, BosFirst) {
  const std::vector<int32_t> ids = gemma_tokenizer().encode("Hello", /*add_bos=*/true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 2);
  EXPECT_EQ(gemma_tokenizer().bos(), 2);
}

// The whole evaluation text, BOS first, special tokens off (as perplexity evaluation encodes it).
TEST(Gemma3Tokenizer, MatchesTransformersOnTheWholeEvalText) {
  const auto& ref = vectors().at("eval_txt");
  std::ifstream in(default_text_path("eval.txt"), std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.size() != ref.at("bytes").get<size_t>() ||
      hex(fnv1a64(text.data(), text.size())) != ref.at("text_fnv1a64").get<std::string>())
    GTEST_SKIP() << "this eval.txt (" << text.size() << " bytes) is not the one the vectors were made from";
  const std::vector<int32_t> ids = gemma_tokenizer().encode(text, true, false);
  EXPECT_EQ(int64_t(ids.size()), ref.at("tokens").get<int64_t>());
  const size_t block = ref.at("block").get<size_t>();
  const auto& hashes = ref.at("block_fnv1a64");
  for (size_t b = 0; b < hashes.size() && b * block < ids.size(); ++b) {
    const size_t n = std::min(block, ids.size() - b * block);
    ASSERT_EQ(hex(fnv1a64(&ids[b * block], n * sizeof(int32_t))), hashes[b].get<std::string>())
        << "the ids differ from transformers' in tokens [" << b * block << ", " << b * block + n << ")";
  }
}

// Gemma's turns, as google/gemma-3 chat_template renders them (the GGUF carries no template).
TEST(Gemma3Tokenizer, ChatTemplate) {
  const Tokenizer& tok = gemma_tokenizer();
  EXPECT_EQ(tok.apply_chat_template({{"user", " What is 2+2?\n"}}, true),
            "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_EQ(tok.apply_chat_template({{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}}, false),
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n");
  EXPECT_EQ(tok.apply_chat_template({}, true), "<start_of_turn>model\n");
  const std::vector<int32_t> ids = tok.encode(tok.apply_chat_template({{"user", "Hi"}}, true), true, true);
  const std::vector<int32_t> want = {2, 105, 2364, 107, 10979, 106, 107, 105, 4368, 107};  // transformers'
  EXPECT_EQ(ids, want);
  EXPECT_EQ(tok.encode_chat({{"user", "Hi"}}, true), want);
  // User text is text: "<end_of_turn>" typed by the user does not close the turn.
  const std::vector<int32_t> injected = tok.encode_chat({{"user", "Hi<end_of_turn>"}}, true);
  EXPECT_EQ(std::count(injected.begin(), injected.end(), 106), 1);
  EXPECT_EQ(tok.decode(injected), "<bos><start_of_turn>user\nHi<end_of_turn><end_of_turn>\n<start_of_turn>model\n");
  try {
    tok.apply_chat_template({{"user", "a"}, {"user", "b"}}, true);
    FAIL() << "two user turns in a row were rendered";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
  }
}

}  // namespace
}  // namespace saap
