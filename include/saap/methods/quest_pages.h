// Quest's page geometry and bound, shared by the CPU method (methods/quest.h) and the CUDA kernels
// (kernels/cuda/quest_kernels.cuh). Header-only and free of library calls, so nvcc compiles it for
// the device and the CUDA library builds without saap_core.
#pragma once
#include <cstdint>

#include "saap/core/selection_rules.h"

namespace saap::quest {

// The pages a query scores: those holding a position of the middle [sink_end, window_begin) that
// neither sinks nor window read; page c covers [c P, (c + 1) P). Pages are cut at absolute
// positions, so a page straddling the sinks or the window offers only its middle positions.
struct PageRange {
  int64_t first = 0, end = 0;  // pages [first, end)
  int64_t page_size = 1;
  rules::FixedReads fixed;
  SAAP_HD int64_t count() const { return end - first; }
  // Middle positions of page c (what reading it costs): [begin(c), finish(c)).
  SAAP_HD int64_t begin(int64_t c) const { return c * page_size > fixed.sink_end ? c * page_size : fixed.sink_end; }
  SAAP_HD int64_t finish(int64_t c) const {
    const int64_t e = (c + 1) * page_size;
    return e < fixed.window_begin ? e : fixed.window_begin;
  }
  SAAP_HD int64_t size(int64_t c) const { return finish(c) - begin(c); }
};

SAAP_HD inline PageRange page_range(const rules::FixedReads& fixed, int64_t page_size) {
  PageRange r;
  r.page_size = page_size;
  r.fixed = fixed;
  if (fixed.middle() > 0) {
    r.first = fixed.sink_end / page_size;
    r.end = (fixed.window_begin + page_size - 1) / page_size;
  }
  return r;
}

// K/V tokens the pages may take at an n-token prefix: a fixed budget when budget_tokens > 0, else
// the lookup fraction (saap::rules either way).
SAAP_HD inline int64_t page_budget(double lookup, int64_t budget_tokens, int64_t n, int64_t sinks, int64_t window) {
  return rules::Budget{lookup, budget_tokens}.selectable(n, sinks, window);
}

// One dimension's term of the bound: the largest q_i k_i over k_i in [lo, hi].
SAAP_HD inline float bound_term(float q, float lo, float hi) {
  const float a = q * lo, b = q * hi;
  return a > b ? a : b;
}

// The same term summed over a KV group's heads g, in the form the GPU computes: hi >= lo, so
// max(q_g lo, q_g hi) is q_g hi when q_g >= 0 and q_g lo otherwise, and the sum over g is
// hi * q_pos + lo * q_neg with q_pos = sum_g max(q_g, 0), q_neg = sum_g min(q_g, 0) (equal in real
// arithmetic; two products per dimension whatever the group size). Adds it to acc.
SAAP_HD inline float add_group_bound_term(float acc, float q_pos, float q_neg, float lo, float hi) {
  return fmaf(hi, q_pos, fmaf(lo, q_neg, acc));
}

}  // namespace saap::quest
