// Quest on the GPU (arXiv 2406.10774; the CPU method is methods/quest.h, the geometry and bound
// methods/quest_pages.h): the dense cache plus, per page of P positions and KV head, the
// element-wise min and max of its keys. A decode step is three kernels (two with the fused select),
// all on the device, no host synchronisation, so it can be captured in a CUDA graph:
//   select - by default a score kernel, then a select kernel of one block per (b, h) (from 16384
//            pages per (b, h) on, of a thread-block cluster per (b, h)): the shared
//            fill rule (saap::rules) over the ranking, computed exactly without a sort: the full
//            pages taken are the top K, K found by walking the at most two partial pages; the K-th
//            key's 16-bit bin comes from the score kernel's histogram, its low bits from two radix
//            passes over that bin's keys only, ties go to the lower page id. The fused select
//            (QuestConfig::fused_select = true; quest_fused_select.cuh), the bench's evidence: one
//            cooperative kernel of three phases over every block, grid barriers between them
//            (score with the histogram; the K-th key's bin and its candidates; the exact K-th key
//            and the taken pages in order). The cluster select (QuestConfig::cluster_from_pages): the
//            select kernel's work for one (b, h) split over the blocks of a thread-block cluster
//   attend - the GroupAttender over chunks of P rows (sinks, taken pages, window) and the few
//            partial runs, split evenly over blocks (64 tokens a split at least), then the combine;
//            the rows reach the warps by a register loop, or (SparseAttendTuning::bulk) through a
//            ring of bulk copies into shared memory (quest_attend_bulk.cuh)
//
// Storage per (sequence b, KV head h) = bh:
//   k, v   [bh][max_len][D]          the cache, dense
//   meta   [bh][max_pages][2][D]     page c: min then max of its keys (kv_dtype values)
//   hist   [bh][65536]               the score kernel's counts, zeroed again by the select kernel
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "saap/core/selection_rules.h"
#include "saap/kernels/cuda/decode.h"

namespace saap::cuda {

struct QuestConfig {
  int page_size = 16;  // P, 1 .. 1024
  int sinks = 4;
  int window = 64;
  // The select as one cooperative kernel (score, gather, compact over every block; grid barriers
  // between them; quest_fused_select.cuh), else the split select: score kernel, then select kernel
  // of one block per (b, h). Split by default: on the H200 at 116e8e7 the fused select was slower
  // in every row but one (128k batch 1, 1024 tokens: step 53.6 us vs 45.5; 512k batch 1: 87.5 vs
  // 91.6; batch 8: 1.98-2.02x its floor vs 1.69-1.71x at 128k); the bench times it as "select=fused".
  bool fused_select = false;
  // The split select's second kernel as thread-block clusters (quest_kernels.cuh,
  // quest_select_cluster_kernel) from this many pages per (b, h) on (at select(), of the host's
  // longest sequence; a captured step keeps the kernel it was captured with): C blocks per (b, h),
  // C a power of two up to 16 with batch x n_kv_heads x C within the SM count (C = 1: the select
  // kernel), each block one slice of the keys, the blocks' counts exchanged through distributed
  // shared memory; below it one block per (b, h) walks all its keys. The rule is the H200's at
  // 867f40c (1024 tokens, 32x8x128; step us, one block vs cluster): 128k (8192 pages) 45.1 vs 49.8
  // at batch 1 and 111.6 vs 118.2 at batch 8; 256k (16384 pages) 64.8 vs 60.7 and 183.8 vs 182.1;
  // 512k 90.9 vs 74.0 and 324.4 vs 317.7. 0: always the cluster; kNoCluster: never. The bench
  // times both ("select=cluster", "select=block"). Ignored when fused_select.
  static constexpr int64_t kNoCluster = INT64_MAX;
  int64_t cluster_from_pages = 16384;
};

// Tokens read per query: the lookup fraction of the prefix, or a fixed count when tokens > 0
// (the shared rule of selection_rules.h).
using QuestBudget = rules::Budget;
struct QuestStep;  // quest_select.cuh

// Per (b, h), [batch][n_kv_heads], read back by counters() (which synchronises).
struct QuestCounters {
  std::vector<int32_t> seq_len, selected_tokens, scored_pages;
};

class QuestIndex {
 public:
  QuestIndex(const DecodeShape& shape, int64_t max_len, const QuestConfig& cfg);
  ~QuestIndex();
  QuestIndex(const QuestIndex&) = delete;
  QuestIndex& operator=(const QuestIndex&) = delete;

  // Prefill: k, v dense [batch][n_kv_heads][src_stride][D] (kv_dtype), h_lengths[b] <= max_len
  // tokens each: copies them and builds every page's min and max.
  void store(const void* k, const void* v, int64_t src_stride, const std::vector<int32_t>& h_lengths,
             cudaStream_t stream = 0);
  // One new token per (b, h): k_new, v_new [batch][n_kv_heads][D]; folds the key into its page
  // (a new page when the token starts one). Throws before a sequence would pass max_len.
  void append(const void* k_new, const void* v_new, cudaStream_t stream = 0);
  // Scores the pages for q [batch][n_q_heads][D] (post-RoPE, 16-byte aligned) and selects per KV
  // group. scored, when given, is recorded on the stream between the score and the select kernel
  // (decode_bench times the two apart; the record costs the select kernel its early launch).
  void select(const float* q, const QuestBudget& budget, cudaStream_t stream = 0, cudaEvent_t scored = nullptr);
  // select() then attend() with the fused combine, as one cooperative kernel (the fused select's
  // phases, a grid barrier, the attention over the whole grid): one launch for the step but the
  // append. The attention is attend()'s, its tuning fixed (plain loop, fused combine).
  void select_attend(const float* q, const QuestBudget& budget, float scale, float* out, SplitWorkspace& ws,
                     cudaStream_t stream = 0);
  // Exact attention of q over the last selection into out [batch][n_q_heads][D]. Throws
  // InvalidArgument for a tuning SparseAttendTuning::check refuses, or a ring that does not fit.
  void attend(const float* q, float scale, float* out, SplitWorkspace& ws, cudaStream_t stream = 0,
              const SparseAttendTuning& tuning = {});

  // QuestConfig::fused_select for the next selects (the bench and the tests compare the two).
  void set_fused_select(bool fused) { cfg_.fused_select = fused; }
  // QuestConfig::cluster_from_pages for the next selects.
  void set_cluster_from_pages(int64_t pages) { cfg_.cluster_from_pages = pages; }
  QuestCounters counters() const;  // synchronises
  const DecodeShape& shape() const { return shape_; }
  const QuestConfig& config() const { return cfg_; }
  int64_t max_len() const { return max_len_; }
  int64_t max_pages() const { return max_pages_; }
  int64_t key_stride() const { return key_stride_; }  // max_pages rounded up to 4 (16-byte rows of keys)
  int64_t max_chunks() const { return max_chunks_; }
  // Device views for tests.
  const void* k() const;
  const void* v() const;
  const void* meta() const;           // [bh][max_pages][2][D]
  const float* page_keys() const;     // [bh][key_stride]: candidate page first + r at index r
  const int32_t* chunk_rows() const;  // [bh][max_chunks]: first row of each P-row chunk read
  const int32_t* chunk_count() const; // [bh]
  const int32_t* partials() const;    // [bh][kMaxPartials][2]: (first row, rows)
  const int32_t* partial_count() const;
  const int32_t* selected_tokens() const;  // [bh]: K/V tokens the last select reads
  // Metadata bytes one step reads to decide (2 x D values per scored page and KV head), summed
  // over (b, h), from the counters of the last select (synchronises).
  int64_t index_bytes_last_step() const;

  static constexpr int kMaxPartials = 4;  // sinks' and window's tails, two partial pages
  struct Impl;

 private:
  void select_split(const float* q, const QuestStep& step, cudaStream_t stream, cudaEvent_t scored);
  // The split select's second kernel as clusters (QuestConfig::cluster_from_pages); false (nothing
  // launched) where one block per (b, h) already fills the SMs.
  bool select_clusters(const QuestStep& step, cudaStream_t stream);
  // Checks q and the budget, notes the tokens the selection reads at most, returns the step.
  QuestStep checked_step(const float* q, const QuestBudget& budget);
  DecodeShape shape_;
  QuestConfig cfg_;
  int64_t max_len_, max_pages_, key_stride_, max_chunks_;
  std::vector<int64_t> host_len_;  // [batch]: lengths as the host knows them (store + appends)
  int64_t expect_tokens_ = 0;      // tokens the last select reads at most (sizes attend's splits)
  std::unique_ptr<Impl> impl_;
};

}  // namespace saap::cuda
