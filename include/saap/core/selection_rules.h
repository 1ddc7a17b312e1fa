// The rules that decide what a sparse method reads, stated once. The CPU methods, the CUDA
// kernels and both test suites include this header, so one artifact reads the same keys on
// either device. Header-only, no library calls beyond <cmath>, so nvcc compiles it for the device.
//
//   budget    - how many tokens a lookup fraction of an n-token prefix buys (ceil), or a fixed
//               token count (Budget: either form, one per-query token count)
//   fixed     - the sinks and the recent window, read always and paid from the budget first
//   density   - a KV group ranks partitions by the summed attention per key of its heads
//   order     - higher key first, ties to the lower partition (or page) id
//   fill      - walk the order; take a partition whole if it fits what is left, else skip it
//   GQA       - the heads of a KV group read one union, paid once per KV head
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SAAP_HD __host__ __device__
#else
#define SAAP_HD
#endif

namespace saap::rules {

// A lookup fraction is meaningful in (0, 1]: 0 reads nothing (no attention is defined), and 1 reads
// everything, whatever sinks and window ask for.
SAAP_HD inline bool lookup_in_range(double lookup) { return lookup > 0.0 && lookup <= 1.0; }

// Tokens that `lookup` of an n-token prefix buys: the ceiling, with 1e-9 of slack so that a product
// such as 0.25 * 8 that lands a rounding error above a whole number stays that number.
SAAP_HD inline int64_t tokens_for_fraction(double lookup, int64_t n) {
  const double want = ceil(lookup * double(n) - 1e-9);
  if (want <= 0.0) return 0;
  return want >= double(n) ? n : int64_t(want);
}

// The first `sinks` and the last `window` positions of an n-token prefix, which every
// sinks-and-window method reads. The window never overlaps the sinks.
struct FixedReads {
  int64_t sink_end = 0;      // sinks are [0, sink_end)
  int64_t window_begin = 0;  // the window is [window_begin, n)
  int64_t n = 0;
  SAAP_HD int64_t count() const { return sink_end + (n - window_begin); }
  SAAP_HD int64_t middle() const { return window_begin - sink_end; }  // what the index chooses from
};

SAAP_HD inline FixedReads fixed_reads(int64_t n, int64_t sinks, int64_t window) {
  FixedReads f;
  f.n = n;
  f.sink_end = sinks < n ? sinks : n;
  const int64_t w = n - window;
  f.window_begin = w > f.sink_end ? w : f.sink_end;
  return f;
}

// Tokens left to the index after the fixed reads when the budget buys `tokens` of an n-token
// prefix: the budget counts every K/V token read.
SAAP_HD inline int64_t selectable_tokens(int64_t tokens, int64_t n, int64_t sinks, int64_t window) {
  const int64_t left = tokens - fixed_reads(n, sinks, window).count();
  return left > 0 ? left : 0;
}

SAAP_HD inline int64_t selectable_budget(double lookup, int64_t n, int64_t sinks, int64_t window) {
  if (lookup >= 1.0) return n;  // the full budget reads everything
  return selectable_tokens(tokens_for_fraction(lookup, n), n, sinks, window);
}

// A fixed budget: `tokens` K/V tokens per query whatever the prefix length (a prefix shorter than
// that is read whole), the unit of the fixed-budget comparisons (Quest's 1024 and 2048 tokens).
SAAP_HD inline int64_t selectable_fixed_budget(int64_t tokens, int64_t n, int64_t sinks, int64_t window) {
  if (tokens >= n) return n;
  return selectable_tokens(tokens, n, sinks, window);
}

// A budget in either of the two forms the comparisons use: a lookup fraction of the causal prefix,
// or, when tokens > 0, a fixed count of K/V tokens per query whatever the prefix length. Every
// method that takes both (saap, kmeans, partition-oracle, quest, oracle top-k), on either device,
// turns it into a per-query token count here.
struct Budget {
  double lookup = 0.05;
  int64_t tokens = 0;  // > 0: a fixed budget of this many K/V tokens instead of lookup
  SAAP_HD bool fixed() const { return tokens > 0; }
  // K/V tokens the budget buys at an n-token prefix, sinks and window included (read whole when
  // the budget covers it).
  SAAP_HD int64_t total(int64_t n) const {
    if (fixed()) return tokens < n ? tokens : n;
    return tokens_for_fraction(lookup, n);
  }
  // What a sinks-and-window index may take after the fixed reads (selectable_budget or
  // selectable_fixed_budget).
  SAAP_HD int64_t selectable(int64_t n, int64_t sinks, int64_t window) const;
  // Keys a token-level top-k method attends (topk_keys, or the fixed count): at least one.
  SAAP_HD int64_t topk(int64_t n) const;
};

// Whether a sinks-and-window method can ever read a partition at a context of max_context tokens:
// false when sinks and window alone fill the budget even there.
SAAP_HD inline bool budget_reaches_index(double lookup, int64_t max_context, int64_t sinks, int64_t window) {
  return lookup >= 1.0 || sinks + window < tokens_for_fraction(lookup, max_context);
}

// The same for a fixed budget of `tokens` per query: a budget covering the whole context reads it.
SAAP_HD inline bool fixed_budget_reaches_index(int64_t tokens, int64_t max_context, int64_t sinks, int64_t window) {
  return tokens >= max_context || sinks + window < tokens;
}

// Keys a token-level top-k method attends (oracle top-k, H2O, Loki's k = k_f * n): the budget, and
// at least one key, so that attention is always defined.
SAAP_HD inline int64_t topk_keys(double fraction, int64_t n) {
  const int64_t k = tokens_for_fraction(fraction, n);
  return k < 1 ? (n < 1 ? n : 1) : k;
}

// H2O's split of its k keys: the most recent ceil(k / 2) positions (the query's own included), the
// rest for the heavy hitters (the CPU's H2OAttention and the GPU's H2ODecoder).
SAAP_HD inline int64_t h2o_recent(int64_t k) { return (k + 1) / 2; }

SAAP_HD inline int64_t Budget::selectable(int64_t n, int64_t sinks, int64_t window) const {
  return fixed() ? selectable_fixed_budget(tokens, n, sinks, window) : selectable_budget(lookup, n, sinks, window);
}

SAAP_HD inline int64_t Budget::topk(int64_t n) const {
  if (!fixed()) return topk_keys(lookup, n);
  const int64_t k = tokens < n ? tokens : n;
  return k < 1 ? (n < 1 ? n : 1) : k;
}

// Budget::selectable can ever reach the index at max_context (budget_reaches_index or
// fixed_budget_reaches_index).
SAAP_HD inline bool reaches_index(const Budget& b, int64_t max_context, int64_t sinks, int64_t window) {
  return b.fixed() ? fixed_budget_reaches_index(b.tokens, max_context, sinks, window)
                   : budget_reaches_index(b.lookup, max_context, sinks, window);
}

// Loki: the rank of the low-rank score (at least 1 dimension) and the keys it attends (at least 1).
SAAP_HD inline int loki_rank(double d_f, int head_dim) {
  const int64_t r = tokens_for_fraction(d_f, head_dim);
  return int(r < 1 ? 1 : r);
}
// Loki's keys per query head are the oracle top-k's at a lookup of k_f: the budget the GPU's
// per-head selection is given, and the count the CPU method takes.
SAAP_HD inline Budget loki_budget(double k_f) {
  Budget b;
  b.lookup = k_f;
  return b;
}
SAAP_HD inline int64_t loki_keys(double k_f, int64_t n) { return loki_budget(k_f).topk(n); }

// Ranking order over ids (partitions, pages, positions): the higher key first; equal keys go to
// the lower id, so a selection never depends on a sort's or a reduction's tie handling.
SAAP_HD inline bool ranks_before(float key_a, int64_t id_a, float key_b, int64_t id_b) {
  return key_a > key_b || (key_a == key_b && id_a < id_b);
}

// Density ranking. Head h's router gives partition c the log density s_hc (attention per key);
// with n_c candidate keys its share of h's attention is n_c exp(s_hc) / Z_h, where
// Z_h = sum over partitions with n_c > 0 of n_c exp(s_hc). The group's key for c is the log of the
// summed density sum_h exp(s_hc) / Z_h: the group should read the most attention per key read.

// One partition's term of Z_h, relative to the head's largest log density mx over partitions with
// candidate keys (so that no term overflows); 0 for a partition without keys.
template <class Count>
SAAP_HD inline double normaliser_term(float s, Count count, float mx) {
  return count > 0 ? double(count) * exp(double(s - mx)) : 0.0;
}
// log Z_h from mx and the sum of the terms; -inf when no partition has keys (mx = -inf).
SAAP_HD inline float log_normaliser(float mx, double z) { return mx == -INFINITY ? mx : mx + float(log(z)); }

// log Z_h for one head, over partitions with candidate keys; -inf when there are none. A parallel
// caller (the CUDA kernel) reduces the same max and the same terms.
// s: [C] log densities, counts: [C] candidate keys.
template <class Count>
SAAP_HD inline float head_log_normaliser(const float* s, const Count* counts, int C) {
  float mx = -INFINITY;
  for (int c = 0; c < C; ++c)
    if (counts[c] > 0 && s[c] > mx) mx = s[c];
  double z = 0.0;
  for (int c = 0; c < C; ++c) z += normaliser_term(s[c], counts[c], mx);
  return log_normaliser(mx, z);
}

// The group's key for one partition: log sum_g exp(s[g] - lse[g]), g over the group's heads;
// s[g * stride] is head g's log density for the partition. Summed relative to the largest term,
// because each term is at most 1 / n_c and all of them can underflow.
SAAP_HD inline float group_log_density(const float* s, int64_t stride, const float* lse, int group) {
  float top = -INFINITY;
  for (int g = 0; g < group; ++g) {
    const float t = s[g * stride] - lse[g];
    if (t > top) top = t;
  }
  if (top == -INFINITY) return top;
  float sum = 0.0f;
  for (int g = 0; g < group; ++g) sum += expf(s[g * stride] - lse[g] - top);
  return top + logf(sum);
}

// The fill rule. Walk `order` (ids, best first); take an id whole if its size fits what is left of
// the budget, else skip it and go on, so one large partition cannot crowd out the smaller ones
// ranked after it and the read never exceeds the budget. Empty ids are never taken. taken[id] is
// set to 1 for each id taken (the caller zeroes it). Returns the tokens taken.
// `smallest`, when the caller knows it, is the size of the smallest non-empty id: once less than
// that is left nothing can fit, so the walk stops early with the same result.
// Measured against stopping at the first misfit (the prefix that fits) on SmolLM2 keys, C = 256
// (results/fill_rule_2026-12-03.csv): at an equal budget it reads more attention mass (0.813 vs
// 0.808 at 5%, partition-oracle ranking; it spends the ~8% of the budget the prefix leaves unused),
// never more than the budget; at equal keys read the two tie at 5-20% and the prefix is ahead at 2%.
// Order: anything indexable by rank giving an id; Size: id -> size; taken: [ids].
template <class Order, class Size>
SAAP_HD inline int64_t fill_in_order(const Order& order, int count, Size size, int64_t budget, uint8_t* taken,
                                     int64_t smallest = 1) {
  if (smallest < 1) smallest = 1;
  int64_t used = 0;
  for (int r = 0; r < count && budget - used >= smallest; ++r) {
    const auto id = order[r];
    const int64_t n = int64_t(size(id));
    if (n <= 0 || used + n > budget) continue;
    taken[id] = 1;
    used += n;
  }
  return used;
}

}  // namespace saap::rules
