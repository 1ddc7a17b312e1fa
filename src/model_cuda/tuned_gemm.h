// The runner's GEMMs through cuBLASLt with the algorithm chosen by timing (opt-in:
// CudaLlamaOptions::gemm_autotune): for each shape, the first call times up to kCandidates of
// cuBLASLt's heuristic candidates on a scratch output and keeps the fastest; later calls of that
// shape reuse it. The prefill's GEMMs have odd shapes for tile quantisation (576 and 960 outputs,
// K = 576), where cuBLAS's single heuristic choice can leave a third of a wave idle.
//
// Y[rows][out] = X[rows][in] (bf16) · W[out][in]ᵀ (bf16) + beta · Y, fp32 accumulation, Y fp32 or
// bf16, row-major; see CudaLlamaModel::Impl::gemm_typed for the column-major mapping.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

namespace saap::cuda {

class TunedGemm {
 public:
  static constexpr int kCandidates = 8;
  TunedGemm() = default;
  TunedGemm(const TunedGemm&) = delete;
  TunedGemm& operator=(const TunedGemm&) = delete;
  ~TunedGemm();

  // Creates the cuBLASLt handle; `workspace` (device, `workspace_bytes`) is shared with cuBLAS,
  // which runs on the same stream.
  void init(void* workspace, size_t workspace_bytes);
  // Runs the GEMM on `stream`. A shape met for the first time while the stream is not capturing is
  // tuned first (synchronising the stream); during a capture it runs cuBLASLt's first candidate
  // without keeping it. Throws like SAAP_CUBLAS (Unsupported / OutOfMemory) when no candidate runs.
  void run(const void* x, const void* w, void* y, cudaDataType y_type, int64_t rows, int in, int out, float beta,
           cudaStream_t stream);
  size_t tuned_shapes() const { return algos_.size(); }

 private:
  using Shape = std::tuple<int64_t, int, int, int, bool>;  // rows, in, out, y type, beta != 0
  struct Plan;
  struct PlanDeleter {  // Plan is complete only in tuned_gemm.cu
    void operator()(Plan* p) const;
  };
  struct Tuned {
    std::unique_ptr<Plan, PlanDeleter> plan;  // the shape's descriptors, made once
    cublasLtMatmulAlgo_t algo;
  };
  cublasLtHandle_t lt_ = nullptr;
  void* ws_ = nullptr;
  size_t ws_bytes_ = 0;
  std::map<Shape, Tuned> algos_;
};

}  // namespace saap::cuda
