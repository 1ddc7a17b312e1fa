// UTF-8 decoding that never fails and the code point classes the pre-tokenizer regexes use.
// Private to saap_model (and its tests).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace saap::unicode {

enum class CodepointClass : uint8_t { kOther, kLetter, kNumber, kWhitespace };

// Bytes that are not part of a well-formed UTF-8 sequence decode, one each, to
// kInvalidByteBase + byte: above U+10FFFF, so they can never be mistaken for a real character,
// and of class kOther, so the regexes group them with punctuation and the bytes survive.
constexpr uint32_t kInvalidByteBase = 0x110000;

struct Codepoint {
  uint32_t cp;      // the scalar value, or kInvalidByteBase + byte
  uint32_t offset;  // byte offset in the text
  uint32_t size;    // bytes it spans (1 for an invalid byte)
};

// Decodes well-formed sequences (no overlongs, no surrogates, at most U+10FFFF) and passes
// every other byte through as an invalid-byte code point.
std::vector<Codepoint> decode_utf8(const std::string& text);

// \p{L} -> kLetter, \p{N} -> kNumber, the White_Space property (\s) -> kWhitespace.
CodepointClass classify(uint32_t cp);

// UTF-8 encoding of a scalar value (cp <= U+10FFFF).
void append_utf8(std::string& out, uint32_t cp);

}  // namespace saap::unicode
