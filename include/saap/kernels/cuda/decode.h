// Host API shared by the CUDA decode kernels: shapes, device buffers, split-KV scratch, and the
// dense split-KV flash-decoding baseline.
//
// Conventions (all pointers are device pointers unless named h_*):
//   q, out   fp32 [batch][n_q_heads][head_dim]; query head hq reads KV head hq / group.
//   K, V     kv_dtype (bf16 or f16) [batch][n_kv_heads][max_len][head_dim] for the dense cache.
//   lengths  int32 [batch]: the number of cached tokens of each sequence (may differ).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "saap/core/dtype.h"
#include "saap/kernels/cuda/check.h"

namespace saap::cuda {

struct DecodeShape {
  int batch = 1;
  int n_q_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  DType kv_dtype = DType::BF16;

  int group() const { return n_q_heads / n_kv_heads; }
  // Throws InvalidArgument/Unsupported naming the field: head_dim 64, 128 or 256 (at most
  // max_head_dim: every decode kernel is instantiated up to 256), group size 1..8,
  // kv_dtype bf16 or f16.
  void check(int max_head_dim = 256) const;
};

// Owning device allocation (cudaMalloc); moves, never copies.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) { resize(n); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void resize(size_t n) {  // discards the contents
    if (n == n_) return;
    release();
    if (n) SAAP_CU(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)));
    n_ = n;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }

 private:
  void release() {
    if (p_) cudaFree(p_);
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  size_t n_ = 0;
};

// Scratch for split-KV partial results: per (sequence, query head, split) an output row and its
// log-sum-exp. Grows on demand and is reused across calls.
class SplitWorkspace {
 public:
  void ensure(int64_t rows, int splits, int head_dim);
  float* out() const { return out_.get(); }
  float* lse() const { return lse_.get(); }
  // One zeroed counter per group of splits (a fused combine's tickets: the kernel leaves them at 0).
  // New counters are zeroed on `stream` (a memset node when the stream is capturing).
  unsigned* tickets(int64_t groups, cudaStream_t stream);

 private:
  DeviceBuffer<float> out_, lse_;
  DeviceBuffer<unsigned> tickets_;
};

// How many blocks per KV head so that the grid is one full wave of `resident` blocks (what the
// device runs at once for the kernel) for `tokens_per_head` tokens of work, with at least
// min_tokens per block.
int choose_splits(const DecodeShape& s, int64_t tokens_per_head, int resident, int64_t min_tokens = 256);
// Blocks of `kernel` (block_threads threads, dynamic_smem bytes of dynamic shared memory) the
// whole device runs at once.
int resident_blocks(const void* kernel, int block_threads, size_t dynamic_smem = 0);

// Dense decode over positions [0, lengths[b]) of every sequence: split-KV flash-decoding, then a
// combine of the splits. max_len is the cache's row stride (>= every length). window > 0 reads
// only the last `window` positions [max(0, lengths[b] - window), lengths[b]) (a sliding-window
// layer: Gemma-3's local layers); 0 reads them all. head_dim 64, 128 or 256.
void dense_decode(const DecodeShape& s, const void* k, const void* v, int64_t max_len, const int32_t* lengths,
                  const float* q, float scale, float* out, SplitWorkspace& ws, cudaStream_t stream = 0,
                  int64_t window = 0);

// dense_decode with its tuning exposed (the benchmark compares them in one run):
//   waves       the grid is `waves` waves of the device's resident blocks (1..8);
//   interleave  a split reads block passes (kDecodeWarps tiles of rows) round-robin with the other
//               splits of its head, instead of one contiguous chunk: the whole grid then reads a
//               narrow moving window of the cache, as a streaming read does, not ~1000 2 MiB pages
//               at once;
//   prefetch    the next tile's loads are issued before this tile's math, so a warp always has a
//               tile in flight (more registers: fewer resident blocks);
//   mma         (needs prefetch or bulk) the logits on the tensor cores (GroupAttender::run_mma, which
//               prefetches), ~half the instructions per byte; bf16 keys at head dim 64 or 128,
//               other shapes run the prefetching loop;
//   min_split_tokens  the fewest tokens one split reads (the split count's cap at short contexts);
//   bulk        0, or the stages (2..8) of a shared-memory ring filled by bulk copies (cp.async.bulk
//               on an mbarrier per stage, dense_decode_bulk_kernel): the bytes in flight are the
//               ring's, not the registers'; mma = 1 puts both its products (logits and values)
//               on the tensor cores (MmaAttender), and it refuses prefetch (a register loop).
//               Needs 16-byte aligned K and V;
//   fused       the split combine is done by the last block of each (sequence, KV head) inside the
//               decode kernel (last-block-done ticket), not by a second launch.
// The cp.async ring, the tensor-core loop without prefetch, the prefetching or interleaved plain
// loop alone and the two-wave grids are no longer offered: none was the fastest anywhere by more
// than 0.2% in the H200 run at da2ee81 (results/gpu_decode_report_2026-12-03_h200_da2ee81.md).
// The "key=value;key=value" form of a kernel tuning (DenseTuning, SaapAttendTuning,
// SparseAttendTuning): calls set(key, value) for each field in order; set returns false for a key
// it does not know. Throws InvalidArgument naming the tuning (what, e.g. "dense tuning"; text) and
// the field: not key=value, a value that is not an integer, or a key set refused (known lists the
// keys).
void parse_tuning_fields(const std::string& text, const char* what, const char* known,
                         const std::function<bool(const std::string& key, long value)>& set);

struct DenseTuning {
  int waves = 1;
  bool interleave = false;
  bool prefetch = false;
  bool mma = false;
  int min_split_tokens = 256;
  int bulk = 0;
  bool fused = false;
  // "waves=1;interleave=0;prefetch=0;mma=0;min=256;bulk=0;fused=0": the bench's row parameter and
  // the test's name.
  std::string name() const;
  // Parses name()'s form; fields left out keep their defaults. Throws InvalidArgument naming the field.
  static DenseTuning parse(const std::string& text);
};
// The tuning dense_decode runs for shape s. One rule, from the H200 run at 7bb2dce
// (results/gpu_decode_report_2026-12-03_h200_7bb2dce.md): at head_dim <= 128 the bulk-copy ring with
// tensor-core logits (bulk=3;mma=1) is the fastest at 16k-512k, batch 1 and 8 (0.96-0.99x SDPA at
// 32x8x128, the old defaults 0.89-0.95x), but for one row of that run: at 512k, batch 8 its fused
// combine (bulk=3;mma=1;fused=1, 3.82 ms) and the prefetching register loop (3.97 ms) beat it
// (4.17 ms); the runs since (0187b35 to 7acc3d1) put it at 0.97-0.98x SDPA there. At head_dim 256
// (4x1x256) it is 0.99x the old batch-1 default and 0.98x the old batch-8 one, so the da2ee81 rule
// by batch stays there: batch 1 mma=1;interleave=1;prefetch=1, larger batches the plain loop.
// Since the ring's values went on the tensor cores too (MmaAttender), bulk=3;mma=1 is also the
// fastest above 4 query heads a KV head, 1.44-1.59x the register loop that ran there before
// (28x4x128 and 64x8x128 at 128k, batch 1, 8 and 32:
// results/gpu_dense_tunings_2026-12-04_h200_02566ca.md).
// dense_decode is dense_decode_tuned(..., dense_default_tuning(s)).
DenseTuning dense_default_tuning(const DecodeShape& s);
// The tunings the benchmark times against each other and the test holds to float64: the plain
// loop first, then each tuning that was the fastest somewhere in that run.
std::vector<DenseTuning> dense_tuning_candidates();
void dense_decode_tuned(const DecodeShape& s, const void* k, const void* v, int64_t max_len, const int32_t* lengths,
                        const float* q, float scale, float* out, SplitWorkspace& ws, const DenseTuning& tuning,
                        cudaStream_t stream = 0, int64_t window = 0);

// How Quest's attend reads its selection; the benchmark compares them in one run and the test
// holds each to float64: prefetch - GroupAttender::run_prefetch (the next tile's loads issued
// before this tile's math); waves - the splits fill that many waves of resident blocks (1..8).
// The default, prefetch=1;waves=1, was the fastest step nearly everywhere (1-5%, Quest and the
// then Loki attend) in the H200 run at da2ee81 (results/gpu_decode_report_2026-12-03_h200_da2ee81.md);
// the tensor-core register loop never was, and is not offered. fused - the split combine done by the
// last block of each (sequence, KV head) inside the attend kernel (combine_group_if_last, as dense's
// fused=1), not by a second launch: at 1-2k selected tokens the step is mostly fixed costs, and the
// combine kernel was ~4.7 us of them (ncu at da2ee81, dense at 16k).
// bulk - 0 (the register loop), or the stages (2..kMaxBulkStages) of a shared-memory ring filled by
// bulk copies (quest_attend_bulk_kernel, as Saap's bulk=S): the register loop is a chain of
// dependent round trips (chunk rows -> one register tile of K/V per warp), 0.30 of the K/V byte
// floor at 128k batch 8 on the H200 at 116e8e7, where Saap's ring reached 0.74. The ring has no
// prefetch (a register loop's): left out, prefetch is 0 with bulk > 0; given as 1, refused.
// Measured on the H200 at 867f40c (results/gpu_decode_report_2026-12-03_h200_867f40c.md), bulk=3;mma=1
// against the default: ~1 us faster at 1024 tokens (13.4 vs 14.6 us at 128k batch 1, 22.8 vs 24.0 at
// batch 8), slower on large selections (322.9 vs 267.5 us at 512k batch 8, 5%: each 16-row page is
// its own pair of small copies), so the register loop stays the default.
// mma - (bulk only) the logits and the values on the tensor cores (MmaAttender), bf16 at head dim
// 64 and 128 (elsewhere the FMA math runs).
struct SparseAttendTuning {
  bool prefetch = true;
  int waves = 1;
  bool fused = false;
  int bulk = 0;
  bool mma = false;
  std::string name() const;  // "prefetch=1;waves=1;fused=0;bulk=0;mma=0"
  // Parses name()'s form; fields left out keep their defaults (prefetch: see bulk). Throws
  // InvalidArgument naming the field (as check()).
  static SparseAttendTuning parse(const std::string& text);
  // Throws InvalidArgument naming the field: waves outside 1..8, bulk not 0 or 2..kMaxBulkStages,
  // mma without bulk, prefetch with bulk.
  void check() const;
};
// The tunings decode_bench times and the tests check, the default first.
std::vector<SparseAttendTuning> sparse_attend_candidates();

// Writes out[row][:] from the split partials in ws (rows = batch * n_q_heads).
void combine_splits(const DecodeShape& s, int splits, const SplitWorkspace& ws, float* out, cudaStream_t stream);

}  // namespace saap::cuda
