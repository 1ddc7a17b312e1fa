// Saap on the GPU: keys grouped by nearest centroid into partitions, a tiny MLP per query head
// that predicts how densely each partition holds its attention, and a sparse decode that reads
// only the selected partitions (plus attention sinks and the recent window), once per KV group.
//
// Storage of one (sequence b, KV head h) "slot row" of `rows()` tokens:
//   [0, sinks)                    the first tokens of the sequence (always read)
//   [sinks, sinks+window)         ring of the most recent tokens (always read); token t >= sinks
//                                 lives at sinks + (t - sinks) % window while it is recent
//   [sinks+window, +max_prefill)  prefill tokens sorted by partition: partition c is the
//                                 contiguous range [part_start[c], part_start[c] + part_count[c])
//   then append pages             tokens leaving the window go to their partition's append pages
//                                 (append_page tokens each, at most append_pages_per_partition)
// A token is in exactly one of the sinks, the ring, or one partition, so nothing is read twice.
// When an append could find a partition's pages or the page pool full, the index first re-packs:
// every partition's range and append pages become one contiguous range of a new, larger pool
// (the prefill region grows to the longest partitioned total), and the append pages start empty.
// The host knows how many appends are surely safe from the last look at the counters, so it only
// synchronises when that many have been made; reserve_appends(n) makes that look (and any
// re-pack) ahead of time, so that a decode step, or a CUDA graph of it, never synchronises.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "saap/core/selection_rules.h"
#include "saap/kernels/cuda/decode.h"

namespace saap {
struct PartitionArtifact;  // methods/saap.h
struct ArtifactIdentity;   // core/safetensors.h
}  // namespace saap

namespace saap::cuda {

// How select() ranks a KV group's partitions; each mirrors one CPU method on the same artifact.
enum class PartitionRouting {
  Saap,             // the trained routers' log densities, summed over the group (SaapAttention)
  KMeans,           // each head's nearest centroids to its routing query, the heads' rankings
                    // merged round-robin (SymmetricKMeansAttention)
  PartitionOracle,  // the true attention density of the group over the whole prefix, from the
                    // post-RoPE query and every cached key (PartitionOracleAttention); a ceiling
};
const char* routing_name(PartitionRouting r);

struct SaapConfig {
  int n_partitions = 1024;        // C, per KV head (<= 4096)
  int sinks = 64;
  int window = 256;
  int segment = 128;              // longest contiguous run one decode work item reads
  int append_page = 64;
  int append_pages_per_partition = 8;
  int64_t max_prefill = 0;        // longest prefill a build() may place
  int64_t max_new_tokens = 4096;  // appends sized for after a build() (sizes the page pool; more re-pack)
  int classifier_hidden = 128;    // multiple of 32, <= 1024
  PartitionRouting routing = PartitionRouting::Saap;
  // Keys are assigned to partitions by a routing key other than the stored one (a pre-RoPE
  // artifact: the cache stores post-RoPE keys, the centroids are of pre-RoPE keys). assign_prefill()
  // then takes the routing keys and append() each new token's routing key; a token's partition is
  // found when it enters the recent window and kept until it leaves it.
  bool separate_routing_keys = false;
};

// How SaapIndex::attend reads its selection; decode_bench times each as a row, the tests hold each
// to float64:
//   bulk   0: saap_decode_kernel (slots expanded in shared memory, a register loop of K/V loads);
//          2..8: the stages of saap_decode_bulk_kernel's ring of bulk copies (cp.async.bulk on an
//          mbarrier per stage), each stage gathered from the run's segment pieces, so a split's
//          rows are in flight at once instead of one register tile per warp at a time;
//   mma    (bulk only) the logits and the values on the tensor cores (MmaAttender), bf16 at head
//          dim 64 and 128 (elsewhere the FMA math runs, as dense's mma does);
//   fused  (bulk only) the split combine by the last block of each (sequence, KV head) inside the
//          attend kernel (combine_group_if_last), not a second launch;
//   waves  select() cuts the selection into splits for that many waves of the attend kernel's
//          resident blocks (1..8).
// A tuning takes effect at the next select() (which cuts the splits); attend() reads the last cut.
struct SaapAttendTuning {
  int bulk = 0;
  bool mma = false;
  bool fused = false;
  int waves = 1;
  std::string name() const;  // "bulk=0;mma=0;fused=0;waves=1"
  // Parses name()'s form; fields left out keep their defaults. Throws InvalidArgument naming the
  // field (unknown key, not an integer, out of range, mma or fused without bulk).
  static SaapAttendTuning parse(const std::string& text);
};
// The attend SaapIndex runs unless told otherwise: the ring with tensor-core logits and the split
// combine as a second launch (bulk=3;mma=1). On the H200 at 116e8e7 it was the fastest tuning in
// every Saap row at 32x8x128, 16k-512k, batch 1 and 8, and lost one row at 4x1x256 (batch 8, 128k,
// 5%: 31.5 against the register loop's 29.3 us; results/gpu_decode_report_2026-12-03_h200_116e8e7.md);
// SaapAttendTuning{} is the register-loop kernel, kept as a timed row.
SaapAttendTuning saap_default_attend_tuning();
// The tunings decode_bench times and the tests check, saap_default_attend_tuning() first.
std::vector<SaapAttendTuning> saap_attend_candidates();

// Saap's attend over explicit tables: what SaapIndex::attend runs on its last select()'s, and what
// cuda_test_saap_attend drives with tables of its own. For each (b, h) = bh: the rows of the
// segment_count[bh] segments (first slot, tokens) of segments [bh][max_segments][2], numbered in
// segment order and cut into `splits` runs that start at split_begin [bh][splits + 1][2]
// (segment, offset); split_begin[bh][splits] and every run past the last token is
// (segment_count[bh], 0). Pools [bh][rows][head_dim] of s.kv_dtype (16-byte aligned); q, out
// [batch][n_q_heads][head_dim] fp32. A (b, h) with no rows gets zeros.
void saap_attend(const DecodeShape& s, const SaapAttendTuning& tuning, const void* kpool, const void* vpool,
                 int64_t rows, const int32_t* segments, const int32_t* segment_count, int64_t max_segments,
                 const int32_t* split_begin, int splits, const float* q, float scale, float* out, SplitWorkspace& ws,
                 cudaStream_t stream = 0);

// Device-side counters a caller can read back (all per (b, h), [batch][n_kv_heads]).
struct SaapCounters {
  std::vector<int32_t> seq_len, selected_tokens, segments;
};

class SaapIndex {
 public:
  SaapIndex(const DecodeShape& shape, const SaapConfig& cfg);
  ~SaapIndex();

  // One layer's index from a trained artifact as `saap train` writes it (PartitionArtifact::load),
  // FAISS style: centroids, routers (Saap), spherical or L2 assignment and the partition count
  // come from the artifact. `model` is the identity of the model the index serves (n_layers,
  // n_heads, n_kv_heads, head_dim, model_identity); a mismatch throws BadFile naming the field,
  // a layer the artifact did not train InvalidArgument, a shape the kernels lack Unsupported.
  // Routing Saap needs an artifact with routers; KMeans and PartitionOracle use any artifact's
  // partition. cfg supplies the budget geometry (sinks, window, sizes); its n_partitions,
  // classifier_hidden, routing and separate_routing_keys are overwritten. When pre_rope(), the keys
  // given to assign_prefill() and append() as routing keys and the query given to select() are the
  // pre-RoPE ones (the partition oracle always takes the post-RoPE query).
  static std::unique_ptr<SaapIndex> from_artifact(const PartitionArtifact& artifact, const ArtifactIdentity& model,
                                                  int layer, int batch, DType kv_dtype, SaapConfig cfg,
                                                  PartitionRouting routing);
  // Loads the file (PartitionArtifact::load checks it against `model`), then as above.
  static std::unique_ptr<SaapIndex> from_artifact(const std::string& path, const ArtifactIdentity& model, int layer,
                                                  int batch, DType kv_dtype, const SaapConfig& cfg,
                                                  PartitionRouting routing);
  SaapIndex(const SaapIndex&) = delete;
  SaapIndex& operator=(const SaapIndex&) = delete;

  // Centroids [n_kv_heads][C][head_dim] (fp32 on the host), stored rounded to kv_dtype; keys are
  // assigned to argmin ||k - c||, i.e. argmax k.c - ||c||^2/2 with ||c|| of the rounded centroid,
  // or with spherical centroids (unit norm, spherical k-means) to argmax k.c, as the CPU assigns.
  // KMeans routing also keeps them in fp32 to score queries as the CPU method does.
  void set_centroids(const std::vector<float>& h_centroids, bool spherical = false);
  // The query classifier, per query head: logits = W2 relu(W1 q + b1) + b2, the log attention
  // density (attention per key) of each partition, as the CPU router (train/classifier.h) outputs.
  // W1 [n_q_heads][hidden][head_dim], b1 [n_q_heads][hidden], W2 [n_q_heads][C][hidden],
  // b2 [n_q_heads][C]; all stored in fp32, as the CPU router reads them.
  void set_classifier(const std::vector<float>& w1, const std::vector<float>& b1, const std::vector<float>& w2,
                      const std::vector<float>& b2);

  // Prefill assignment of every cached key (cuBLAS GEMM against the centroids, then argmax):
  // k dense [batch][n_kv_heads][max_len][head_dim]; assign out [batch][n_kv_heads][max_len].
  void assign_prefill(const void* k, int64_t max_len, const std::vector<int32_t>& h_lengths, int32_t* assign,
                      cudaStream_t stream = 0);
  // Places prefill caches (dense layout as above) of h_lengths[b] <= max_prefill tokens into the
  // partitioned layout; assign gives each token's partition (tokens in sinks/window ignore it).
  void build(const void* k, const void* v, int64_t max_len, const std::vector<int32_t>& h_lengths,
             const int32_t* assign, cudaStream_t stream = 0);
  // Appends one token per (b, h): k_new, v_new [batch][n_kv_heads][head_dim]. The token leaving
  // the recent window moves to its partition: the nearest centroid to its stored key, or with
  // separate_routing_keys to its routing key k_route_new [batch][n_kv_heads][head_dim] (kv_dtype),
  // which the second form takes (and the first refuses to do without). Needs a build() first; may
  // re-pack (see above), after which config().max_prefill and rows() are the new layout's and the
  // last selection is cleared (select() again before attend()).
  void append(const void* k_new, const void* v_new, cudaStream_t stream = 0);
  void append(const void* k_new, const void* v_new, const void* k_route_new, cudaStream_t stream = 0);
  // Makes room for the next n appends, off the decode step: synchronises the stream, reads the
  // counters and re-packs now if some partition's append pages or the page pool could fill within
  // n appends (growing append_pages_per_partition and the pool as n needs). The next n appends
  // then never synchronise or re-pack. A CUDA graph that captured append() appends once per
  // replay without the host seeing it: reserve the replays before capturing, and capture again
  // after any later reservation (a re-pack moves the pools the graph points at).
  // Needs a build() first; n >= 0.
  void reserve_appends(int64_t n, cudaStream_t stream = 0);

  // Routing + selection for queries q [batch][n_q_heads][head_dim]: the routing query (Saap, KMeans)
  // or the post-RoPE attention query (PartitionOracle). Per KV group, the non-empty partitions are
  // ranked as config().routing says (Saap: decreasing density summed over the group's heads, each
  // head's densities normalised so that, weighted by partition sizes, they sum to 1) and filled
  // into what the lookup budget leaves after the sinks and window (selection_rules.h: a partition
  // is taken whole if it fits what is left, else skipped). The budget is either form of
  // rules::Budget, turned into a per-sequence token count on the device by the shared rule: a
  // lookup in (0, 1], a double as on the CPU (a float 0.05 is not 0.05, and its budget can differ by
  // a token), or a fixed count of tokens > 0. Writes the work segments attend() walks. routed, when
  // given, is recorded on the stream between the routing kernel (Saap's router, the KMeans or
  // PartitionOracle ranking) and the rank-and-fill kernel (decode_bench times the two apart; the
  // record costs the second kernel its early launch).
  void select(const float* q_route, const rules::Budget& budget, cudaStream_t stream = 0,
              cudaEvent_t routed = nullptr);
  void select(const float* q_route, double lookup, cudaStream_t stream = 0) {
    select(q_route, rules::Budget{lookup, 0}, stream);
  }
  // One decode step's append() then select(), with the same arguments and the same results, the
  // routing (Saap's router, the KMeans ranking) run beside the append instead of after it: it reads
  // the query and the index's weights, which the append does not write, and the rank-and-fill
  // kernel, which reads the tables the append writes, waits for both. The routing runs on a stream
  // of the index forked from `stream` and joined back by events, so a CUDA graph captures the
  // step. The partition oracle ranks by the cache the append writes: its ranking follows the append.
  // k_route_new as the append's (null unless separate_routing_keys).
  void append_select(const void* k_new, const void* v_new, const void* k_route_new, const float* q_route,
                     const rules::Budget& budget, cudaStream_t stream = 0);
  // Exact attention of q over the last selection into out [batch][n_q_heads][head_dim].
  void attend(const float* q, float scale, float* out, SplitWorkspace& ws, cudaStream_t stream = 0);
  // The attend kernel and its split count (see SaapAttendTuning); the next select() cuts for it.
  void set_attend_tuning(const SaapAttendTuning& tuning);
  const SaapAttendTuning& attend_tuning() const { return attend_tuning_; }

  // Synchronises and throws if a build saw an out-of-range assignment (InvalidArgument) or an
  // append found no room (OutOfMemory; the re-pack before a possible overflow should prevent it).
  void check() const;
  int repacks() const;  // re-packs so far
  SaapCounters counters() const;  // synchronises

  const DecodeShape& shape() const { return shape_; }
  const SaapConfig& config() const { return cfg_; }
  int64_t rows() const { return rows_; }
  // Device views for tests: pools [batch*n_kv_heads][rows][head_dim]; per-(b,h) tables.
  const void* k_pool() const;
  const void* v_pool() const;
  const int32_t* part_start() const;    // [bh][C]
  const int32_t* part_count() const;    // [bh][C]
  const int32_t* append_pages() const;  // [bh][C][append_pages_per_partition], slot of each page
  const int32_t* append_count() const;  // [bh][C]
  const int32_t* segments() const;      // [bh][max_segments()][2]: (first slot, tokens)
  const int32_t* selected_tokens() const;  // [bh]: K/V tokens the last select() reads (sinks and window included)
  // Saap: the router logits [batch][n_q_heads][C]; KMeans and PartitionOracle: the group's
  // ranking key [batch][n_kv_heads][C] (KMeans: minus the partition's place in the round-robin
  // order; PartitionOracle: log of the summed attention density).
  const float* logits() const;
  bool spherical() const { return spherical_; }
  bool pre_rope() const { return cfg_.separate_routing_keys; }  // routes and assigns by pre-RoPE vectors
  int64_t max_segments() const { return max_segments_; }
  // Bytes of index data one decode step reads besides K/V: classifier weights and the centroids
  // of the append's assignment.
  int64_t index_bytes_per_step() const;

  struct Impl;

 private:
  // append()'s two halves: the checks and any re-pack (which synchronise), then the kernel.
  void prepare_append(const void* k_new, const void* v_new, const void* k_route_new, cudaStream_t stream);
  void launch_append(const void* k_new, const void* v_new, const void* k_route_new, cudaStream_t stream);
  // Before an append: re-packs when some partition or the page pool might have no room.
  void ensure_append_room(cudaStream_t stream);
  // Appends that surely fit the current layout (synchronises to read the counters).
  int64_t append_room(cudaStream_t stream);
  // Re-packs into a layout with room for at least min_room appends.
  void repack(cudaStream_t stream, int64_t min_room);
  // select()'s checks: throws InvalidArgument for a null query, a budget select() cannot fill, or
  // a routing whose weights were not set.
  void check_select(const float* q_route, const rules::Budget& budget) const;
  // select()'s two halves: the routing kernel (logits() from the query) and the rank-and-fill
  // kernel (the segments from logits() and the tables).
  void route(const float* q_route, cudaStream_t stream);
  void rank_and_fill(const rules::Budget& budget, cudaStream_t stream);
  // Writes the group ranking keys of KMeans / PartitionOracle routing into logits().
  void rank_kmeans(const float* q_route, cudaStream_t stream);
  void rank_by_attention(const float* q, cudaStream_t stream);

  DecodeShape shape_;
  SaapConfig cfg_;
  bool spherical_ = false;
  int64_t rows_ = 0, max_segments_ = 0;
  SaapAttendTuning attend_tuning_ = saap_default_attend_tuning();
  std::unique_ptr<Impl> impl_;
};

}  // namespace saap::cuda
