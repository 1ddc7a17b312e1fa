// The per-row rules of radix_topk.cuh's select, host+device so that CI without a GPU can replay
// the whole tiled search on the CPU (tests/kernels/cpu/test_radix_digits.cpp) with the functions
// the kernels call: the radix key of a score, the digit layout, a row's state and how a boundary
// bin updates it, and which keys are above the k-th, ties or candidates.
//
// Digits: pass 0 reads bits 31..22 (1024 bins: sign, exponent and one mantissa bit, so that the
// producer of the scores can histogram them in shared memory for up to 8 rows a block), pass 1
// bits 21..11 and pass 2 bits 10..0 (2048 bins each).
#pragma once
#include <cstdint>
#include <cstring>

#include "saap/core/selection_rules.h"  // SAAP_HD

namespace saap::cuda::radix_topk {

constexpr int kBins = 2048;      // the widest digit: 11 bits
constexpr int kTopBins = 1024;   // pass 0's digit: 10 bits
SAAP_HD constexpr int pass_shift(int pass) { return pass == 0 ? 22 : pass == 1 ? 11 : 0; }
SAAP_HD constexpr int pass_bins(int pass) { return pass == 0 ? kTopBins : kBins; }
SAAP_HD constexpr uint32_t pass_mask(int pass) { return uint32_t(pass_bins(pass) - 1) << pass_shift(pass); }

// The radix key of a score: order-preserving bits, with -0 read as +0 so that the keys order
// exactly as rules::ranks_before compares the floats.
SAAP_HD inline uint32_t rank_key(float s) {
  const float f = s == 0.f ? 0.f : s;
#if defined(__CUDA_ARCH__)
  const uint32_t u = __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

SAAP_HD inline uint32_t digit_of(uint32_t key, int pass) {
  return (key >> pass_shift(pass)) & uint32_t(pass_bins(pass) - 1);
}

// One row's search. A key u is above the k-th when (u & mask) > prefix, a tie when equal.
struct RowState {
  uint32_t prefix;  // the digits of the k-th key found so far
  uint32_t mask;    // the bits prefix holds
  int32_t need;     // keys still to take among the ties
  int32_t n;        // keys in the row
  int32_t all;      // the budget covers the row: every key is taken
  int32_t done;     // no further pass needed (all, k = 0, or a boundary bin of exactly `need` keys)
};

// The state before any pass: n keys, k of them to take (k >= n takes all, k <= 0 none).
SAAP_HD inline RowState row_start(int64_t n, int64_t k) {
  RowState s;
  s.prefix = 0;
  s.mask = 0;
  s.n = int32_t(n);
  s.all = k >= n;
  s.need = int32_t(s.all ? n : (k > 0 ? k : 0));
  s.done = s.all || s.need == 0;
  return s;
}

SAAP_HD inline bool key_above(const RowState& s, uint32_t key) { return (key & s.mask) > s.prefix; }
SAAP_HD inline bool key_matches(const RowState& s, uint32_t key) { return (key & s.mask) == s.prefix; }

// The pass's boundary: the k-th key's digit is `bin`, `above` keys matching the prefix lie in
// higher bins and `count` in this one (above < need <= above + count).
SAAP_HD inline RowState take_bin(RowState s, int pass, uint32_t bin, int32_t above, int32_t count) {
  s.prefix |= bin << pass_shift(pass);
  s.mask |= pass_mask(pass);
  s.need -= above;
  s.done = count == s.need;  // the whole boundary bin is taken: no need to tell its keys apart
  return s;
}

// Whether the boundary lies in a run of bins holding `count` keys after `before` keys from the top.
SAAP_HD inline bool boundary_in(const RowState& s, int32_t before, int32_t count) {
  return before < s.need && s.need <= before + count;
}

// Of a tile's ties, the first ones in position order are taken: a thread whose first tie ranks
// `first_tie` among the row's ties (counted from position 0) and who holds `ties` of them takes
// this many (its lowest positions).
SAAP_HD inline int ties_taken(const RowState& s, int64_t first_tie, int ties) {
  const int64_t left = int64_t(s.need) - first_tie;
  return int(left <= 0 ? 0 : left < ties ? left : ties);
}

}  // namespace saap::cuda::radix_topk
