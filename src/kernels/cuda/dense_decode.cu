// Host launcher of the dense split-KV decode.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "saap/kernels/cuda/bulk_ring_resident.cuh"
#include "saap/kernels/cuda/dense_decode_bulk.cuh"
#include "saap/kernels/cuda/dispatch.cuh"

namespace saap::cuda {

std::string DenseTuning::name() const {
  char s[128];
  std::snprintf(s, sizeof s, "waves=%d;interleave=%d;prefetch=%d;mma=%d;min=%d;bulk=%d;fused=%d", waves,
                int(interleave), int(prefetch), int(mma), min_split_tokens, bulk, int(fused));
  return s;
}

DenseTuning DenseTuning::parse(const std::string& text) {
  DenseTuning t;
  parse_tuning_fields(text, "dense tuning", "waves, interleave, prefetch, mma, min, bulk, fused",
                      [&](const std::string& key, long x) {
                        if (key == "waves") t.waves = int(x);
                        else if (key == "interleave") t.interleave = x != 0;
                        else if (key == "prefetch") t.prefetch = x != 0;
                        else if (key == "mma") t.mma = x != 0;
                        else if (key == "min") t.min_split_tokens = int(x);
                        else if (key == "bulk") t.bulk = int(x);
                        else if (key == "fused") t.fused = x != 0;
                        else return false;
                        return true;
                      });
  return t;
}

DenseTuning dense_default_tuning(const DecodeShape& s) {
  if (s.head_dim <= 128) return DenseTuning::parse("bulk=3;mma=1");
  return DenseTuning::parse(s.batch == 1 ? "mma=1;prefetch=1;interleave=1" : "");
}

std::vector<DenseTuning> dense_tuning_candidates() {
  std::vector<DenseTuning> v;
  // What the bench times beside the default (issue 11's attempts at the read floor): the register
  // loop plain, with prefetch, interleaved splits and tensor-core logits; the bulk-copy ring at two
  // depths (bulk=4: 3 blocks per SM; bulk=6: 2 blocks, more bytes in flight each), one interleaved;
  // the ring on the tensor cores (bulk=3;mma=1: 2 blocks of 3 x 32 KiB per SM), contiguous and
  // interleaved; and the fused combine beside the rings and the register loops. The H200 has timed
  // them all (docs/GPU_KERNELS.md); bulk=3;mma=1 won and is the default at head dim <= 128.
  for (const char* t : {"", "mma=1;prefetch=1;interleave=1", "mma=1;prefetch=1", "interleave=1;prefetch=1",
                        "bulk=4", "bulk=6;interleave=1", "bulk=3;mma=1", "bulk=3;mma=1;interleave=1",
                        "bulk=4;fused=1", "bulk=3;mma=1;fused=1", "mma=1;prefetch=1;interleave=1;fused=1",
                        "fused=1"})
    v.push_back(DenseTuning::parse(t));
  return v;
}

void dense_decode(const DecodeShape& s, const void* k, const void* v, int64_t max_len, const int32_t* lengths,
                  const float* q, float scale, float* out, SplitWorkspace& ws, cudaStream_t stream,
                  int64_t window) {
  dense_decode_tuned(s, k, v, max_len, lengths, q, scale, out, ws, dense_default_tuning(s), stream, window);
}

void dense_decode_tuned(const DecodeShape& s, const void* k, const void* v, int64_t max_len, const int32_t* lengths,
                        const float* q, float scale, float* out, SplitWorkspace& ws, const DenseTuning& tuning,
                        cudaStream_t stream, int64_t window) {
  s.check(256);
  SAAP_CU_REQUIRE(max_len >= 1, InvalidArgument, "max_len must be >= 1, got %lld", (long long)max_len);
  SAAP_CU_REQUIRE(window >= 0, InvalidArgument, "window must be >= 0 (0: no window), got %lld", (long long)window);
  // The positions one sequence reads at most: the splits tile this span.
  const int64_t span = window > 0 && window < max_len ? window : max_len;
  SAAP_CU_REQUIRE(k && v && lengths && q && out, InvalidArgument, "null pointer among k=%p v=%p lengths=%p q=%p out=%p",
                  k, v, (const void*)lengths, (const void*)q, (void*)out);
  const int waves = tuning.waves;
  SAAP_CU_REQUIRE(waves >= 1 && waves <= 8, InvalidArgument, "waves = %d outside [1, 8]", waves);
  SAAP_CU_REQUIRE(!tuning.mma || tuning.prefetch || tuning.bulk > 0, InvalidArgument, "%s",
                  "mma = 1 is the prefetching tensor-core loop or the bulk ring's: it needs prefetch = 1 or bulk > 0");
  SAAP_CU_REQUIRE(tuning.min_split_tokens >= 16, InvalidArgument, "min_split_tokens = %d must be >= 16",
                  tuning.min_split_tokens);
  const int stages = tuning.bulk;
  SAAP_CU_REQUIRE(stages == 0 || (stages >= 2 && stages <= kMaxBulkStages), InvalidArgument,
                  "bulk = %d: 0 (off) or the ring's stages, 2..%d", stages, kMaxBulkStages);
  SAAP_CU_REQUIRE(stages == 0 || !tuning.prefetch, InvalidArgument,
                  "bulk = %d fetches through its ring: it refuses prefetch = 1 (a register loop)", stages);
  SAAP_CU_REQUIRE(stages == 0 || (reinterpret_cast<uintptr_t>(k) % 16 == 0 && reinterpret_cast<uintptr_t>(v) % 16 == 0),
                  InvalidArgument, "bulk copies need 16-byte aligned K and V, got k=%p v=%p", k, v);
  const int64_t groups = int64_t(s.batch) * s.n_kv_heads;
  // Fused: the decode kernel combines (its tickets non-null); else combine_splits after it.
  unsigned* tickets = tuning.fused ? ws.tickets(groups, stream) : nullptr;
  int splits = 0;
  dispatch_decode<256>(s, [&](auto t, auto d, auto gmax) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value, GMAX = decltype(gmax)::value;
    // The bulk ring, with the FMA (MMA false) or tensor-core (true) math.
    auto bulk = [&](auto mma_c) {
      constexpr bool MMA = decltype(mma_c)::value;
      auto* kernel = dense_decode_bulk_kernel<T, D, GMAX, MMA>;
      // Resident blocks per stage count (bulk_ring_resident), once per instantiation.
      static const BulkRingResidency resident =
          bulk_ring_resident<T, D, GMAX, MMA>(reinterpret_cast<const void*>(kernel));
      splits = choose_splits(s, span, resident.blocks_for(stages, "dense") * waves, tuning.min_split_tokens);
      const int64_t chunk = (span + splits - 1) / splits;
      ws.ensure(int64_t(s.batch) * s.n_q_heads, splits, s.head_dim);
      kernel<<<dim3(splits, s.n_kv_heads, s.batch), kDecodeWarps * 32, dense_bulk_smem<T, D, GMAX, MMA>(stages),
               stream>>>(static_cast<const T*>(k), static_cast<const T*>(v), max_len, lengths, q, s.n_kv_heads,
                         s.group(), scale, splits, chunk, window, tuning.interleave, stages, ws.out(), ws.lse(),
                         tickets, out);
    };
    if (stages > 0) {
      if (tuning.mma && dense_mma_supported<T, D>()) {
        if constexpr (dense_mma_supported<T, D>()) bulk(std::true_type{});
      } else {
        bulk(std::false_type{});
      }
      return;
    }
    // One (kernel, resident blocks) per instantiation and loop.
    auto registers = [&](auto loop_c) {
      auto* kernel = dense_decode_kernel<T, D, GMAX, decltype(loop_c)::value>;
      static const int resident = resident_blocks(reinterpret_cast<const void*>(kernel), kDecodeWarps * 32);
      splits = choose_splits(s, span, resident * waves, tuning.min_split_tokens);
      const int64_t chunk = (span + splits - 1) / splits;
      ws.ensure(int64_t(s.batch) * s.n_q_heads, splits, s.head_dim);
      kernel<<<dim3(splits, s.n_kv_heads, s.batch), kDecodeWarps * 32, 0, stream>>>(
          static_cast<const T*>(k), static_cast<const T*>(v), max_len, lengths, q, s.n_kv_heads, s.group(), scale,
          splits, chunk, window, tuning.interleave, ws.out(), ws.lse(), tickets, out);
    };
    using Loop = DenseLoop;
    if (tuning.mma && dense_mma_supported<T, D>()) {
      if constexpr (dense_mma_supported<T, D>()) registers(std::integral_constant<Loop, Loop::Mma>{});
    } else if (tuning.prefetch) {
      registers(std::integral_constant<Loop, Loop::Prefetch>{});
    } else {
      registers(std::integral_constant<Loop, Loop::Plain>{});
    }
  });
  SAAP_CU_LAUNCHED();
  if (!tuning.fused) combine_splits(s, splits, ws, out, stream);
}

}  // namespace saap::cuda
