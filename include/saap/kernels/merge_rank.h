// The rank of one element in the union of K lists, each already sorted into the ranking order of
// selection_rules.h (rules::ranks_before: higher key first, ties to the lower id): its rank in its
// own list plus, for every other list, how many of that list's elements rank before it (a binary
// search: the elements that rank before it are a prefix of a sorted list). The ranks of all
// elements are then a permutation of [0, total), the one a single sort of the union gives.
// Saap's select kernel uses it to merge the rankings that the blocks of one thread block cluster
// sort of their slices of the partitions (each list read from its block's shared memory); header
// only, so that the CPU tests run the same code.
#pragma once
#include <cstdint>

#include "saap/core/selection_rules.h"

namespace saap {

constexpr int kMaxMergeLists = 8;  // the portable thread block cluster size

// One sorted list: keys[i] and ids[i] + id_base are the key and the id of the element at rank i
// of the list, i < n.
struct SortedList {
  const float* keys;
  const int16_t* ids;
  int n;
  int id_base;
};

// Rank in the union of lists 0..K-1 (list(q): the SortedList of list q, called where it is read,
// so that a device caller keeps no table of K lists in registers) of the element at rank
// own_rank of list `own`, whose key and id are (key, id). top_step: a power of two >= every
// list's n (the binary searches' first step). The K - 1 searches advance together, one step each
// per round, so their loads are in flight at once.
template <class ListOf>
SAAP_HD inline int merged_rank(const ListOf& list, int K, int own, int own_rank, float key, int id, int top_step) {
  int pos[kMaxMergeLists];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int q = 0; q < kMaxMergeLists; ++q) pos[q] = 0;
  for (int step = top_step; step > 0; step >>= 1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int q = 0; q < kMaxMergeLists; ++q) {
      if (q >= K || q == own) continue;
      const SortedList l = list(q);
      const int i = pos[q] + step - 1;  // the last element of the candidate prefix
      if (i < l.n && rules::ranks_before(l.keys[i], l.ids[i] + l.id_base, key, id)) pos[q] += step;
    }
  }
  int rank = own_rank;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int q = 0; q < kMaxMergeLists; ++q)
    if (q < K && q != own) rank += pos[q];
  return rank;
}

}  // namespace saap
