// Prefill assignment: per sequence and chunk of tokens, the keys widened to fp32, one strided-batched
// fp32 GEMM over the KV heads (scores = K C^T with the fp32 centroids, no TF32: the CPU assigns in
// fp32, and a key near a partition boundary must land where it does there), then a warp-per-token
// argmax.
#include <algorithm>

#include "saap/kernels/cuda/saap_assign.cuh"
#include "saap_impl.h"

namespace saap::cuda {

namespace {
void check_cublas(cublasStatus_t st, const char* what) {
  SAAP_CU_REQUIRE(st == CUBLAS_STATUS_SUCCESS, Unsupported, "%s failed with cuBLAS status %d", what, int(st));
}

// kf [Hkv][n][D] (fp32) = rows t0 .. t0 + n - 1 of sequence b's keys k [batch][Hkv][max_len][D].
template <class T>
__global__ void widen_keys_kernel(const T* __restrict__ k, int64_t max_len, int b, int n_kv_heads, int64_t t0, int n,
                                  int D, float* __restrict__ kf) {
  const int64_t total = int64_t(n_kv_heads) * n * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t h = i / (int64_t(n) * D), r = i % (int64_t(n) * D);
    kf[i] = elem_to_float(k[((int64_t(b) * n_kv_heads + h) * max_len + t0) * D + r]);
  }
}
}  // namespace

void SaapIndex::assign_prefill(const void* k, int64_t max_len, const std::vector<int32_t>& h_lengths,
                               int32_t* assign, cudaStream_t stream) {
  auto& m = *impl_;
  const int C = cfg_.n_partitions, D = shape_.head_dim, Hkv = shape_.n_kv_heads;
  SAAP_CU_REQUIRE(m.centroids.size() > 0, InvalidArgument, "%s", "set_centroids() must be called first");
  SAAP_CU_REQUIRE(int(h_lengths.size()) == shape_.batch, InvalidArgument, "h_lengths has %zu entries, batch is %d",
                  h_lengths.size(), shape_.batch);
  SAAP_CU_REQUIRE(k && assign, InvalidArgument, "null pointer: k=%p assign=%p", k, (void*)assign);
  if (!m.cublas) check_cublas(cublasCreate(&m.cublas), "cublasCreate");
  check_cublas(cublasSetStream(m.cublas, stream), "cublasSetStream");
  // Scores scratch of at most 64M floats (256 MB), and the chunk's keys in fp32.
  const int64_t chunk = std::clamp<int64_t>((int64_t(1) << 26) / (int64_t(C) * Hkv), 1, std::max<int64_t>(1, max_len));
  DeviceBuffer<float> scores(size_t(chunk) * C * Hkv), keys(size_t(chunk) * D * Hkv);
  const float one = 1.f, zero = 0.f;
  for (int b = 0; b < shape_.batch; ++b) {
    const int64_t len = h_lengths[b];
    SAAP_CU_REQUIRE(len >= 0 && len <= max_len, InvalidArgument, "h_lengths[%d] = %lld outside [0, max_len=%lld]", b,
                    (long long)len, (long long)max_len);
    for (int64_t t0 = 0; t0 < len; t0 += chunk) {
      const int n = int(std::min(chunk, len - t0));
      const int blocks = int(std::min<int64_t>(4096, (int64_t(Hkv) * n * D + 255) / 256));
      if (shape_.kv_dtype == DType::F16)
        widen_keys_kernel<<<blocks, 256, 0, stream>>>(static_cast<const __half*>(k), max_len, b, Hkv, t0, n, D,
                                                      keys.get());
      else
        widen_keys_kernel<<<blocks, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(k), max_len, b, Hkv, t0, n, D,
                                                      keys.get());
      SAAP_CU_LAUNCHED();
      // Column-major view: scores^T (C x n) = centroids (C x D, i.e. (D x C)^T) * K^T (D x n).
      check_cublas(cublasGemmStridedBatchedEx(m.cublas, CUBLAS_OP_T, CUBLAS_OP_N, C, n, D, &one, m.centroids.get(),
                                              CUDA_R_32F, D, int64_t(C) * D, keys.get(), CUDA_R_32F, D, int64_t(n) * D,
                                              &zero, scores.get(), CUDA_R_32F, C, int64_t(n) * C, Hkv,
                                              CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT),
                   "cublasGemmStridedBatchedEx");
      dim3 grid((n + 7) / 8, Hkv);
      argmax_scores_kernel<<<grid, 256, 0, stream>>>(scores.get(), m.half_norm.get(), n, C, Hkv, b, t0, max_len,
                                                     assign);
      SAAP_CU_LAUNCHED();
    }
  }
  // The scratch is freed on return; finish using it first.
  SAAP_CU(cudaStreamSynchronize(stream));
}

}  // namespace saap::cuda
