// Host side of Saap's attend: the sparse split-KV attention over the last select()'s segments
// (saap_decode_kernel, or the bulk-copy ring saap_decode_bulk_kernel by SaapAttendTuning), then the
// split combine (a second launch, or fused into the attend kernel). Launched as programmatic
// dependents (launch.cuh); nothing here synchronises the host.
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "saap/kernels/cuda/bulk_ring_resident.cuh"
#include "saap/kernels/cuda/dispatch.cuh"
#include "saap/kernels/cuda/saap_decode.cuh"
#include "saap_impl.h"

namespace saap::cuda {

std::string SaapAttendTuning::name() const {
  char s[96];
  std::snprintf(s, sizeof s, "bulk=%d;mma=%d;fused=%d;waves=%d", bulk, int(mma), int(fused), waves);
  return s;
}

SaapAttendTuning SaapAttendTuning::parse(const std::string& text) {
  SaapAttendTuning t;
  parse_tuning_fields(text, "saap attend tuning", "bulk, mma, fused, waves", [&](const std::string& key, long x) {
    if (key == "bulk") t.bulk = int(x);
    else if (key == "mma") t.mma = x != 0;
    else if (key == "fused") t.fused = x != 0;
    else if (key == "waves") t.waves = int(x);
    else return false;
    return true;
  });
  SAAP_CU_REQUIRE(t.bulk == 0 || (t.bulk >= 2 && t.bulk <= kMaxBulkStages), InvalidArgument,
                  "saap attend tuning '%s': bulk = %d: 0 (off) or the ring's stages, 2..%d", text.c_str(), t.bulk,
                  kMaxBulkStages);
  SAAP_CU_REQUIRE(t.bulk > 0 || (!t.mma && !t.fused), InvalidArgument,
                  "saap attend tuning '%s': mma = %d, fused = %d need the bulk ring (bulk > 0)", text.c_str(), int(t.mma),
                  int(t.fused));
  SAAP_CU_REQUIRE(t.waves >= 1 && t.waves <= 8, InvalidArgument, "saap attend tuning '%s': waves = %d outside [1, 8]",
                  text.c_str(), t.waves);
  return t;
}

SaapAttendTuning saap_default_attend_tuning() { return SaapAttendTuning::parse("bulk=3;mma=1"); }

std::vector<SaapAttendTuning> saap_attend_candidates() {
  // Issue 11's attempts at the attend's byte floor, timed on the H200 at 116e8e7 against the default
  // (the ring with tensor-core logits, bulk=3;mma=1): the register-loop kernel (""; slower in every
  // row: 128k batch 1 0.28 of floor vs 0.29, 512k 0.55 vs 0.61, batch 8 0.65/0.77 vs 0.74/0.90),
  // the fused combine, a deeper ring, the FMA ring and two waves (each slower than the default).
  std::vector<SaapAttendTuning> v = {saap_default_attend_tuning()};
  for (const char* t : {"", "bulk=3;mma=1;fused=1", "bulk=4;mma=1;fused=1", "bulk=4;fused=1",
                        "bulk=3;mma=1;fused=1;waves=2"})
    v.push_back(SaapAttendTuning::parse(t));
  return v;
}

void SaapIndex::set_attend_tuning(const SaapAttendTuning& tuning) {
  attend_tuning_ = SaapAttendTuning::parse(tuning.name());  // the same checks as a parsed one
}

namespace {

// Resident blocks of Saap's bulk ring kernel per stage count (bulk_ring_resident), once per
// instantiation.
template <class T, int D, int GMAX, bool MMA>
const BulkRingResidency& bulk_resident() {
  static const BulkRingResidency resident =
      bulk_ring_resident<T, D, GMAX, MMA>(reinterpret_cast<const void*>(saap_decode_bulk_kernel<T, D, GMAX, MMA>));
  return resident;
}

// Calls fn(T, D, GMAX, MMA) with the attend kernel's template arguments for shape s and tuning:
// MMA where the tuning asks for it and the shape has it (bf16, head dim 64 or 128).
template <class Fn>
void dispatch_attend(const DecodeShape& s, const SaapAttendTuning& tuning, Fn&& fn) {
  dispatch_decode(s, [&](auto t, auto d, auto gmax) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value;
    if constexpr (dense_mma_supported<T, D>())
      if (tuning.mma) return fn(t, d, gmax, std::true_type{});
    fn(t, d, gmax, std::false_type{});
  });
}

}  // namespace

int saap_attend_resident(const DecodeShape& s, const SaapAttendTuning& tuning) {
  int resident = 0;
  dispatch_attend(s, tuning, [&](auto t, auto d, auto gmax, auto mma) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value, GMAX = decltype(gmax)::value;
    constexpr bool MMA = decltype(mma)::value;
    if (tuning.bulk > 0) {
      resident = bulk_resident<T, D, GMAX, MMA>().blocks_for(tuning.bulk, "saap attend");
    } else {
      static const int r =
          resident_blocks(reinterpret_cast<const void*>(saap_decode_kernel<T, D, GMAX>), kDecodeWarps * 32);
      resident = r;
    }
  });
  return resident;
}

void saap_attend(const DecodeShape& s, const SaapAttendTuning& tuning, const void* kpool, const void* vpool,
                 int64_t rows, const int32_t* segments, const int32_t* segment_count, int64_t max_segments,
                 const int32_t* split_begin, int splits, const float* q, float scale, float* out, SplitWorkspace& ws,
                 cudaStream_t stream) {
  SAAP_CU_REQUIRE(q && out && kpool && vpool && segments && segment_count && split_begin, InvalidArgument,
                  "null pointer among q=%p out=%p kpool=%p vpool=%p segments=%p segment_count=%p split_begin=%p",
                  (const void*)q, (void*)out, kpool, vpool, (const void*)segments, (const void*)segment_count,
                  (const void*)split_begin);
  SAAP_CU_REQUIRE(splits >= 1 && splits <= kSaapMaxSplits, InvalidArgument, "splits = %d outside [1, %d]", splits,
                  kSaapMaxSplits);
  SAAP_CU_REQUIRE(rows >= 1 && max_segments >= 1, InvalidArgument, "rows = %lld, max_segments = %lld must be >= 1",
                  (long long)rows, (long long)max_segments);
  SAAP_CU_REQUIRE(tuning.bulk == 0 || (reinterpret_cast<uintptr_t>(kpool) % 16 == 0 &&
                                       reinterpret_cast<uintptr_t>(vpool) % 16 == 0),
                  InvalidArgument, "bulk copies need 16-byte aligned pools, got kpool=%p vpool=%p", kpool, vpool);
  ws.ensure(int64_t(s.batch) * s.n_q_heads, splits, s.head_dim);
  // Fused: the attend kernel combines (its tickets non-null); else combine_splits after it.
  unsigned* tickets = tuning.fused ? ws.tickets(int64_t(s.batch) * s.n_kv_heads, stream) : nullptr;
  dispatch_attend(s, tuning, [&](auto t, auto d, auto gmax, auto mma) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value, GMAX = decltype(gmax)::value;
    constexpr bool MMA = decltype(mma)::value;
    const T* kp = static_cast<const T*>(kpool);
    const T* vp = static_cast<const T*>(vpool);
    const int2* segs = reinterpret_cast<const int2*>(segments);
    const int2* starts = reinterpret_cast<const int2*>(split_begin);
    const dim3 grid(splits, s.n_kv_heads, s.batch);
    if (tuning.bulk > 0) {
      bulk_resident<T, D, GMAX, MMA>().blocks_for(tuning.bulk, "saap attend");  // refuses a ring that does not fit
      launch_dependent(saap_decode_bulk_kernel<T, D, GMAX, MMA>, grid, dim3(kDecodeWarps * 32),
                       dense_bulk_smem<T, D, GMAX, MMA>(tuning.bulk), stream, kp, vp, rows, segs, segment_count,
                       max_segments, starts, q, s.n_kv_heads, s.group(), scale, splits, tuning.bulk, ws.out(),
                       ws.lse(), tickets, out);
    } else {
      launch_dependent(saap_decode_kernel<T, D, GMAX>, grid, dim3(kDecodeWarps * 32), 0, stream, kp, vp, rows, segs,
                       segment_count, max_segments, starts, q, s.n_kv_heads, s.group(), scale, splits, ws.out(),
                       ws.lse());
    }
  });
  SAAP_CU_LAUNCHED();
  if (!tuning.fused) combine_splits(s, splits, ws, out, stream);
}

void SaapIndex::attend(const float* q, float scale, float* out, SplitWorkspace& ws, cudaStream_t stream) {
  auto& m = *impl_;
  // The runs the last select() cut.
  saap_attend(shape_, attend_tuning_, m.kpool.get(), m.vpool.get(), rows_, m.segments.get(), m.segment_count.get(),
              max_segments_, m.split_begin.get(), m.splits, q, scale, out, ws, stream);
}

}  // namespace saap::cuda
