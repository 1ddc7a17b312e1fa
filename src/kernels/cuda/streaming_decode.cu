// StreamingLLM decode: the dense split-KV kernel over the sinks and the recent window only.
#include <algorithm>

#include "saap/core/selection_rules.h"
#include "saap/kernels/cuda/dense_decode.cuh"
#include "saap/kernels/cuda/dispatch.cuh"
#include "saap/kernels/cuda/streaming.h"

namespace saap::cuda {

namespace {

// Block (split, kv head, sequence): the G query heads of the group over tokens
// [split * chunk, (split + 1) * chunk) of the fixed reads numbered in order, sinks first, then the
// window; token t is position t below sink_end, else window_begin + (t - sink_end).
template <class T, int D, int GMAX>
__global__ void __launch_bounds__(kDecodeWarps * 32, decode_min_blocks(GMAX))
    streaming_decode_kernel(const T* __restrict__ K, const T* __restrict__ V, int64_t max_len,
                            const int32_t* __restrict__ lengths, const float* __restrict__ q, int n_kv_heads, int G,
                            float scale, int splits, int64_t chunk, int sinks, int window,
                            float* __restrict__ part_out, float* __restrict__ part_lse, int32_t* __restrict__ selected) {
  using A = GroupAttender<T, D, GMAX, kDecodeWarps>;
  __shared__ typename A::Shared sh;
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t bh = int64_t(b) * n_kv_heads + h;
  const rules::FixedReads f = rules::fixed_reads(lengths[b], sinks, window);
  const int64_t total = f.count();
  const int64_t start = split * chunk;
  const int n = int(max(int64_t(0), min(chunk, total - start)));
  const int64_t row0 = bh * G;
  A at;
  at.init(q + row0 * D, G, scale);
  const T* kb = K + bh * max_len * D + at.sub * 8;
  const T* vb = V + bh * max_len * D + at.sub * 8;
  auto pos = [&](int i) {
    const int64_t t = start + i;
    return t < f.sink_end ? t : f.window_begin + (t - f.sink_end);
  };
  at.run(n, [&](int i) { return kb + pos(i) * D; }, [&](int i) { return vb + pos(i) * D; });
  if (selected && split == 0 && threadIdx.x == 0) selected[bh] = int32_t(total);
  at.finish(sh, G, part_out + (row0 * splits + split) * D, int64_t(splits) * D, part_lse + row0 * splits + split,
            splits);
}

}  // namespace

void streaming_decode(const DecodeShape& s, const void* k, const void* v, int64_t max_len, const int32_t* lengths,
                      const float* q, float scale, int sinks, int window, float* out, SplitWorkspace& ws,
                      int32_t* selected, cudaStream_t stream) {
  s.check(256);
  SAAP_CU_REQUIRE(k && v && lengths && q && out, InvalidArgument, "null pointer among k=%p v=%p lengths=%p q=%p out=%p",
                  k, v, (const void*)lengths, (const void*)q, (void*)out);
  SAAP_CU_REQUIRE(max_len >= 1, InvalidArgument, "max_len must be >= 1, got %lld", (long long)max_len);
  SAAP_CU_REQUIRE(sinks >= 0 && window >= 1, InvalidArgument, "sinks = %d must be >= 0 and window = %d >= 1", sinks,
                  window);
  // The most tokens one sequence reads: the splits tile this span.
  const int64_t span = std::min<int64_t>(max_len, int64_t(sinks) + window);
  int splits = 0;
  dispatch_decode(s, [&](auto t, auto d, auto gmax) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value, GMAX = decltype(gmax)::value;
    auto* kernel = streaming_decode_kernel<T, D, GMAX>;
    static const int resident = resident_blocks(reinterpret_cast<const void*>(kernel), kDecodeWarps * 32);
    splits = choose_splits(s, span, resident, 64);
    const int64_t chunk = (span + splits - 1) / splits;
    ws.ensure(int64_t(s.batch) * s.n_q_heads, splits, s.head_dim);
    kernel<<<dim3(splits, s.n_kv_heads, s.batch), kDecodeWarps * 32, 0, stream>>>(
        static_cast<const T*>(k), static_cast<const T*>(v), max_len, lengths, q, s.n_kv_heads, s.group(), scale, splits,
        chunk, sinks, window, ws.out(), ws.lse(), selected);
  });
  SAAP_CU_LAUNCHED();
  combine_splits(s, splits, ws, out, stream);
}

}  // namespace saap::cuda
