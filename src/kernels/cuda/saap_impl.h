// Device state of a SaapIndex, shared by the files that implement its verbs.
#pragma once
#include <cublas_v2.h>

#include "saap/kernels/cuda/saap.h"

namespace saap::cuda {

struct SaapIndex::Impl {
  DeviceBuffer<uint16_t> kpool, vpool;  // [bh][rows][D], kv_dtype bits
  DeviceBuffer<float> centroids;        // [Hkv][C][D] fp32, as trained: keys are assigned as the CPU assigns them
  DeviceBuffer<float> half_norm;        // [Hkv][C]: ||c||^2 / 2 (0: spherical)
  DeviceBuffer<float> oracle_mass;      // [bh][G][C]: PartitionOracle scratch
  DeviceBuffer<int32_t> part_start, part_count, cursor, append_count;  // [bh][C]
  DeviceBuffer<int32_t> append_pages;   // [bh][C][A]
  DeviceBuffer<int32_t> next_page, seq_len, selected_tokens, segment_count;  // [bh]
  DeviceBuffer<int32_t> segments;       // [bh][max_segments][2]
  DeviceBuffer<int32_t> split_begin;    // [bh][splits + 1][2]: where each attend split starts (select)
  int splits = 1;                       // attend splits of the last select
  DeviceBuffer<int32_t> flags;          // [0] bad assignment seen, [1] append overflow
  DeviceBuffer<unsigned long long> best;  // [bh]: packed nearest centroid of the searched key
  DeviceBuffer<uint32_t> tickets;         // [bh]: append blocks done (the last one appends), zero between steps
  DeviceBuffer<int32_t> ring_part;      // [bh][W]: partition of each ring slot's token (separate routing keys)
  DeviceBuffer<float> w1, w2;           // fp32, as trained: bf16 moved near ties of the CPU's ranking (issue 13)
  DeviceBuffer<float> b1, b2, logits;
  int hidden = 0;
  int64_t append_pool_pages = 0;
  bool built = false;
  int64_t safe_appends = 0;  // appends that cannot overflow, from the last look at the counters
  int repacks = 0;
  cublasHandle_t cublas = nullptr;
  // append_select(): the side stream the routing runs on beside the append, and the events that
  // fork it from the caller's stream and join it back. Made with the index, not at the first call,
  // which may be inside a graph capture (the runner captures in global mode).
  cudaStream_t side = nullptr;
  cudaEvent_t forked = nullptr, routed = nullptr;
  Impl();
  ~Impl();
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
};

// Blocks of the attend kernel `tuning` picks for this shape that the whole device runs at once
// (saap_attend.cu); select() cuts the selection into splits for them.
int saap_attend_resident(const DecodeShape& s, const SaapAttendTuning& tuning);

}  // namespace saap::cuda
