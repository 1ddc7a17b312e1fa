#include "tokenizer_pretokenizer.h"

#include <cstdint>

#include "saap/core/error.h"
#include "unicode.h"

namespace saap {
namespace {

using unicode::CodepointClass;
using unicode::Codepoint;

// A view of the decoded text restricted to one fragment [begin, end): the regexes see the
// fragment's end as the end of input (their (?!\S) lookahead must not look past it).
class Matcher {
 public:
  Matcher(const std::vector<Codepoint>& cps, size_t begin, size_t end)
      : cps_(cps), begin_(begin), end_(end) {}

  // Lengths (in code points) of consecutive regex matches covering the fragment.
  void split(PreTokenizer kind, std::vector<size_t>& lengths) const {
    size_t i = begin_;
    while (i < end_) {
      size_t n = kind == PreTokenizer::kLlama3 ? match_llama3(i) : match_gpt2(i);
      lengths.push_back(n);
      i += n;
    }
  }

 private:
  uint32_t cp(size_t i) const { return i < end_ ? cps_[i].cp : 0; }
  CodepointClass cls(size_t i) const {
    // Past the end behaves as a character no class test accepts.
    return i < end_ ? unicode::classify(cps_[i].cp) : CodepointClass(0xFF);
  }
  bool is(size_t i, CodepointClass c) const { return i < end_ && cls(i) == c; }
  bool is_other(size_t i) const { return i < end_ && cls(i) == CodepointClass::kOther; }
  static uint32_t lower(uint32_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

  size_t run(size_t i, CodepointClass c) const {
    size_t j = i;
    while (is(j, c)) ++j;
    return j - i;
  }

  // 's|'t|'re|'ve|'m|'ll|'d, optionally case-insensitive; 0 when none matches at i.
  size_t contraction(size_t i, bool ignore_case) const {
    if (cp(i) != '\'' || i + 1 >= end_) return 0;
    auto at = [&](size_t k) { return ignore_case ? lower(cp(k)) : cp(k); };
    uint32_t a = at(i + 1);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (i + 2 < end_) {
      uint32_t b = at(i + 2);
      if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    }
    return 0;
  }

  // \s+(?!\S)|\s+ at a whitespace code point: the run, less its last character when a
  // non-space follows and the run is longer than one (that character joins the next word).
  size_t whitespace_tail(size_t i) const {
    size_t n = run(i, CodepointClass::kWhitespace);
    if (i + n < end_ && n > 1) --n;
    return n;
  }

  size_t match_gpt2(size_t i) const {
    if (size_t n = contraction(i, false)) return n;
    size_t j = (cp(i) == ' ') ? i + 1 : i;  // the optional leading space
    for (CodepointClass c : {CodepointClass::kLetter, CodepointClass::kNumber, CodepointClass::kOther}) {
      if (is(j, c)) return (j - i) + run(j, c);
    }
    if (is(i, CodepointClass::kWhitespace)) return whitespace_tail(i);
    return 1;  // unreachable: every code point is one of the four classes
  }

  size_t match_llama3(size_t i) const {
    if (size_t n = contraction(i, true)) return n;
    auto newline = [&](size_t k) { return k < end_ && (cp(k) == '\r' || cp(k) == '\n'); };
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (is(i, CodepointClass::kLetter)) return run(i, CodepointClass::kLetter);
    if (!newline(i) && !is(i, CodepointClass::kNumber) && i < end_ && is(i + 1, CodepointClass::kLetter))
      return 1 + run(i + 1, CodepointClass::kLetter);
    // \p{N}{1,3}
    if (is(i, CodepointClass::kNumber)) {
      size_t n = run(i, CodepointClass::kNumber);
      return n < 3 ? n : 3;
    }
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    size_t j = (cp(i) == ' ') ? i + 1 : i;
    if (is_other(j)) {
      size_t k = j + run(j, CodepointClass::kOther);
      while (newline(k)) ++k;
      return k - i;
    }
    // \s*[\r\n]+ ends after the run's last line break; without one, \s+(?!\S)|\s+.
    size_t n = run(i, CodepointClass::kWhitespace);
    for (size_t k = i + n; k > i; --k)
      if (newline(k - 1)) return k - i;
    return whitespace_tail(i);
  }

  const std::vector<Codepoint>& cps_;
  size_t begin_, end_;
};

}  // namespace

PreTokenizer pre_tokenizer_from_name(const std::string& pre) {
  // Names as llama.cpp's convert_hf_to_gguf.py writes them, grouped by the regexes llama.cpp
  // applies to each (llama-vocab.cpp).
  static const char* const gpt2[] = {"gpt2", "mpt", "olmo", "jais"};
  static const char* const digits_gpt2[] = {"smollm", "starcoder", "refact", "command-r",
                                            "codeshell", "exaone", "minerva"};
  static const char* const llama3[] = {"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral",
                                       "smaug-bpe", "dbrx"};
  for (const char* n : gpt2)
    if (pre == n) return PreTokenizer::kGpt2;
  for (const char* n : digits_gpt2)
    if (pre == n) return PreTokenizer::kDigitsGpt2;
  for (const char* n : llama3)
    if (pre == n) return PreTokenizer::kLlama3;
  SAAP_THROW_FMT(Unsupported, "tokenizer.ggml.pre = '%s' is not a pre-tokenizer saap implements "
                 "(gpt2, smollm/starcoder family, llama3/llama-bpe family)", pre.c_str());
}

std::vector<std::string> pre_tokenize(const std::string& text, PreTokenizer kind) {
  std::vector<Codepoint> cps = unicode::decode_utf8(text);
  std::vector<size_t> lengths;
  if (kind == PreTokenizer::kDigitsGpt2) {
    // Digits first: each number code point is its own fragment; the stretches between are
    // split by the GPT-2 regex independently.
    size_t start = 0;
    for (size_t i = 0; i <= cps.size(); ++i) {
      bool digit = i < cps.size() && unicode::classify(cps[i].cp) == CodepointClass::kNumber;
      if (i == cps.size() || digit) {
        Matcher(cps, start, i).split(PreTokenizer::kGpt2, lengths);
        if (digit) lengths.push_back(1);
        start = i + 1;
      }
    }
  } else {
    Matcher(cps, 0, cps.size()).split(kind, lengths);
  }
  std::vector<std::string> pieces;
  pieces.reserve(lengths.size());
  size_t at = 0;
  for (size_t n : lengths) {
    size_t b = cps[at].offset;
    const Codepoint& last = cps[at + n - 1];
    pieces.push_back(text.substr(b, last.offset + last.size - b));
    at += n;
  }
  return pieces;
}

}  // namespace saap
