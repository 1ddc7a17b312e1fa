#include "unicode.h"

#include <algorithm>
#include <iterator>

namespace saap::unicode {
namespace {

struct ClassRange {
  uint32_t first, last;
  CodepointClass klass;
};

constexpr ClassRange kRanges[] = {
#include "unicode_tables.inc"
};

// Length of the well-formed sequence starting at p (Unicode Table 3-7), or 0.
size_t valid_sequence_length(const unsigned char* p, size_t left, uint32_t* cp) {
  unsigned char b0 = p[0];
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return 0;
  }
  if (left < n || p[1] < lo || p[1] > hi) return 0;
  for (size_t k = 2; k < n; ++k)
    if (p[k] < 0x80 || p[k] > 0xBF) return 0;
  uint32_t v = b0 & (0xFF >> (n + 1));
  for (size_t k = 1; k < n; ++k) v = (v << 6) | (p[k] & 0x3F);
  *cp = v;
  return n;
}

}  // namespace

std::vector<Codepoint> decode_utf8(const std::string& text) {
  std::vector<Codepoint> out;
  out.reserve(text.size());
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  size_t i = 0, n = text.size();
  while (i < n) {
    uint32_t cp = 0;
    size_t len = valid_sequence_length(p + i, n - i, &cp);
    if (len == 0) {
      out.push_back({kInvalidByteBase + p[i], uint32_t(i), 1});
      ++i;
    } else {
      out.push_back({cp, uint32_t(i), uint32_t(len)});
      i += len;
    }
  }
  return out;
}

CodepointClass classify(uint32_t cp) {
  // ASCII dominates real text; answer it without the search.
  if (cp < 0x80) {
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CodepointClass::kLetter;
    if (cp >= '0' && cp <= '9') return CodepointClass::kNumber;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return CodepointClass::kWhitespace;
    return CodepointClass::kOther;
  }
  auto it = std::upper_bound(std::begin(kRanges), std::end(kRanges), cp,
                             [](uint32_t v, const ClassRange& r) { return v < r.first; });
  if (it == std::begin(kRanges)) return CodepointClass::kOther;
  --it;
  return cp <= it->last ? it->klass : CodepointClass::kOther;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

}  // namespace saap::unicode
