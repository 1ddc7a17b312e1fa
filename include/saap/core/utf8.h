// UTF-8 for output: a token of a byte-level BPE vocabulary may end inside a multi-byte character
// (its other bytes come with the next token) or stand for bytes that are not UTF-8 at all. Text
// shown to a user or written into JSON must be valid UTF-8 and must not lose what came before.
#pragma once
#include <cstddef>
#include <string>

namespace saap {

// U+FFFD REPLACEMENT CHARACTER, what every ill-formed subsequence becomes.
inline constexpr const char* kUtf8Replacement = "\xEF\xBF\xBD";

// `bytes` with each ill-formed subsequence replaced by one U+FFFD (the Unicode "maximal
// subpart" practice, as Python's errors="replace" and WHATWG decoders do): overlongs, surrogates,
// code points above U+10FFFF, stray continuation bytes and truncated sequences. Valid text is
// returned unchanged.
std::string utf8_sanitize(const std::string& bytes);

// Streams bytes out as valid UTF-8: push() returns what can be shown now (invalid bytes already
// replaced) and holds back a trailing sequence that is incomplete but could still become valid;
// finish() returns the held-back bytes as U+FFFD, since no more will come.
class Utf8Stream {
 public:
  std::string push(const std::string& bytes);
  std::string finish();
  // Bytes held back, waiting for the rest of their character (0..3).
  size_t pending() const { return pending_.size(); }

 private:
  std::string pending_;
};

}  // namespace saap
