// Tokenizer::from_gguf on vocabularies built in memory: metadata of the wrong element type is
// refused by name (found by fuzz_gguf: a float token_type array left the type table empty and the
// builder read past it), and a well-formed tiny vocabulary round-trips every byte.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "fuzz/tiny_gguf.h"
#include "saap/core/error.h"
#include "saap/model/gguf.h"
#include "saap/model/tokenizer.h"

namespace saap {
namespace {

using ::testing::HasSubstr;

Tokenizer build(const test_data::TinyGGUF& g) {
  const std::vector<uint8_t> bytes = g.bytes();
  return Tokenizer::from_gguf(GGUFFile::parse(bytes.data(), bytes.size()));
}

std::string from_gguf_error(const test_data::TinyGGUF& g) {
  try {
    build(g);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::BadFile) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "from_gguf accepted the vocabulary";
  return "";
}

TEST(TokenizerMetadata, TinyVocabularyRoundTripsEveryByte) {
  const Tokenizer tok = build(test_data::tiny_chatml_vocabulary());
  EXPECT_EQ(tok.vocab_size(), 258);
  std::string all;
  for (int b = 0; b < 256; ++b) all += char(b);
  const std::vector<int32_t> ids = tok.encode(all);
  EXPECT_EQ(ids.size(), 256u);  // no merges: one token per byte
  EXPECT_EQ(tok.decode(ids), all);
  const std::vector<int32_t> chat = tok.encode("<|im_start|>user\nhi<|im_end|>", false, /*parse_special=*/true);
  EXPECT_EQ(chat.front(), 256);
  EXPECT_EQ(chat.back(), 257);
}

TEST(TokenizerMetadata, FloatTokenTypesAreRefusedByName) {
  test_data::TinyGGUF g;
  g.add_string("tokenizer.ggml.model", "gpt2");
  g.add_strings("tokenizer.ggml.tokens", {"a", "b"});
  g.add_f32s("tokenizer.ggml.token_type", {1.0f, 1.0f});
  g.add_strings("tokenizer.ggml.merges", {});
  EXPECT_THAT(from_gguf_error(g), HasSubstr("'tokenizer.ggml.token_type' must be an array of integers"));
}

TEST(TokenizerMetadata, IntegerScoresAreRefusedByName) {
  test_data::TinyGGUF g;
  g.add_string("tokenizer.ggml.model", "llama");
  g.add_strings("tokenizer.ggml.tokens", {"<unk>", "a"});
  g.add_i32s("tokenizer.ggml.scores", {0, 0});
  EXPECT_THAT(from_gguf_error(g), HasSubstr("'tokenizer.ggml.scores' must be an array of floats"));
}

TEST(TokenizerMetadata, TokenTypeCountMustMatchTheVocabulary) {
  test_data::TinyGGUF g;
  g.add_string("tokenizer.ggml.model", "gpt2");
  g.add_strings("tokenizer.ggml.tokens", {"a", "b"});
  g.add_i32s("tokenizer.ggml.token_type", {1});
  g.add_strings("tokenizer.ggml.merges", {});
  EXPECT_THAT(from_gguf_error(g), HasSubstr("has 1 entries, the vocabulary 2"));
}

}  // namespace
}  // namespace saap
