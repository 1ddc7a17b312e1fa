#include "saap/core/utf8.h"

namespace saap {
namespace {

// The well-formed byte sequences (Unicode Table 3-7): the lead byte fixes the length and the
// range of the second byte; later bytes are plain continuations 80..BF.
struct LeadRule {
  int length;                 // 0: the byte cannot start a sequence
  unsigned char second_lo, second_hi;
};

LeadRule lead_rule(unsigned char b) {
  if (b < 0x80) return {1, 0, 0};
  if (b >= 0xC2 && b <= 0xDF) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};  // no overlongs
  if (b == 0xED) return {3, 0x80, 0x9F};  // no surrogates
  if (b >= 0xE1 && b <= 0xEF) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};  // no overlongs
  if (b == 0xF4) return {4, 0x80, 0x8F};  // nothing above U+10FFFF
  if (b >= 0xF1 && b <= 0xF3) return {4, 0x80, 0xBF};
  return {0, 0, 0};  // 80..C1 and F5..FF
}

// How the sequence that starts at bytes[i] reads.
struct Sequence {
  enum Kind { kValid, kInvalid, kTruncated } kind;
  size_t size;  // kValid: the whole sequence; kInvalid: the maximal subpart to replace; kTruncated: bytes left
};

Sequence read_sequence(const std::string& bytes, size_t i) {
  const LeadRule rule = lead_rule(static_cast<unsigned char>(bytes[i]));
  if (rule.length == 0) return {Sequence::kInvalid, 1};
  for (int k = 1; k < rule.length; ++k) {
    if (i + size_t(k) == bytes.size()) return {Sequence::kTruncated, size_t(k)};
    const auto c = static_cast<unsigned char>(bytes[i + size_t(k)]);
    const bool ok = k == 1 ? (c >= rule.second_lo && c <= rule.second_hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) return {Sequence::kInvalid, size_t(k)};  // the good prefix becomes one U+FFFD
  }
  return {Sequence::kValid, size_t(rule.length)};
}

// Appends the valid text of bytes[0, end) with replacements; returns where a truncated trailing
// sequence starts (bytes.size() when there is none). Truncated sequences are only possible at
// the end: anything after them would have been checked as their continuation.
size_t append_sanitized(const std::string& bytes, std::string& out) {
  out.reserve(out.size() + bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const Sequence s = read_sequence(bytes, i);
    if (s.kind == Sequence::kTruncated) return i;
    if (s.kind == Sequence::kValid)
      out.append(bytes, i, s.size);
    else
      out += kUtf8Replacement;
    i += s.size;
  }
  return bytes.size();
}

}  // namespace

std::string utf8_sanitize(const std::string& bytes) {
  std::string out;
  if (append_sanitized(bytes, out) < bytes.size()) out += kUtf8Replacement;
  return out;
}

std::string Utf8Stream::push(const std::string& bytes) {
  pending_ += bytes;
  std::string out;
  const size_t tail = append_sanitized(pending_, out);
  pending_.erase(0, tail);
  return out;
}

std::string Utf8Stream::finish() {
  std::string out = pending_.empty() ? "" : kUtf8Replacement;
  pending_.clear();
  return out;
}

}  // namespace saap
