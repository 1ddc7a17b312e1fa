// Host launcher of the dense split-KV decode.
#include "saap/kernels/cuda/dense_decode.cuh"
#include "saap/kernels/cuda/dispatch.cuh"

namespace saap::cuda {

void dense_decode(const DecodeShape& s, const void* k, const void* v, int64_t max_len, const int32_t* lengths,
                  const float* q, float scale, float* out, SplitWorkspace& ws, cudaStream_t stream,
                  int64_t window) {
  dense_decode_tuned(s, k, v, max_len, lengths, q, scale, out, ws, kDenseStages, kDenseWaves, stream, window);
}

void dense_decode_tuned(const DecodeShape& s, const void* k, const void* v, int64_t max_len, const int32_t* lengths,
                        const float* q, float scale, float* out, SplitWorkspace& ws, int stages, int waves,
                        cudaStream_t stream, int64_t window) {
  s.check(256);
  SAAP_CU_REQUIRE(max_len >= 1, InvalidArgument, "max_len must be >= 1, got %lld", (long long)max_len);
  SAAP_CU_REQUIRE(window >= 0, InvalidArgument, "window must be >= 0 (0: no window), got %lld", (long long)window);
  // The positions one sequence reads at most: the splits tile this span.
  const int64_t span = window > 0 && window < max_len ? window : max_len;
  SAAP_CU_REQUIRE(k && v && lengths && q && out, InvalidArgument, "null pointer among k=%p v=%p lengths=%p q=%p out=%p",
                  k, v, (const void*)lengths, (const void*)q, (void*)out);
  SAAP_CU_REQUIRE(stages == 0 || stages == 3 || stages == 4, InvalidArgument, "stages = %d; 0, 3 or 4", stages);
  SAAP_CU_REQUIRE(waves >= 1 && waves <= 8, InvalidArgument, "waves = %d outside [1, 8]", waves);
  int splits = 0;
  dispatch_decode<256>(s, [&](auto t, auto d, auto gmax) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value, GMAX = decltype(gmax)::value;
    // One (kernel, dynamic shared memory, resident blocks) per instantiation and stage count.
    auto launch = [&](auto kernel, size_t smem, int resident) {
      splits = choose_splits(s, span, resident * waves);
      const int64_t chunk = (span + splits - 1) / splits;
      ws.ensure(int64_t(s.batch) * s.n_q_heads, splits, s.head_dim);
      kernel<<<dim3(splits, s.n_kv_heads, s.batch), kDecodeWarps * 32, smem, stream>>>(
          static_cast<const T*>(k), static_cast<const T*>(v), max_len, lengths, q, s.n_kv_heads, s.group(), scale,
          splits, chunk, window, ws.out(), ws.lse());
    };
    auto async = [&](auto stages_c) {
      constexpr int ST = decltype(stages_c)::value;
      auto* kernel = dense_decode_async_kernel<T, D, GMAX, ST>;
      constexpr size_t smem = dense_async_smem<T, D, GMAX, ST>();
      static const int resident = [&] {
        SAAP_CU(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
        return resident_blocks(reinterpret_cast<const void*>(kernel), kDecodeWarps * 32, smem);
      }();
      launch(kernel, smem, resident);
    };
    if (stages == 3) {
      async(std::integral_constant<int, 3>{});
    } else if (stages == 4) {
      async(std::integral_constant<int, 4>{});
    } else {
      auto* kernel = dense_decode_kernel<T, D, GMAX>;
      static const int resident = resident_blocks(reinterpret_cast<const void*>(kernel), kDecodeWarps * 32);
      launch(kernel, 0, resident);
    }
  });
  SAAP_CU_LAUNCHED();
  combine_splits(s, splits, ws, out, stream);
}

}  // namespace saap::cuda
