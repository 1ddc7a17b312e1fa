// cuBLASLt GEMMs with the algorithm chosen by timing (see tuned_gemm.h).
#include <algorithm>
#include <vector>

#include "saap/kernels/cuda/check.h"
#include "saap/kernels/cuda/decode.h"
#include "src/model_cuda/tuned_gemm.h"

namespace saap::cuda {
namespace {

void check_lt(cublasStatus_t s, const char* what, const char* func) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  fail(s == CUBLAS_STATUS_ALLOC_FAILED ? ErrorKind::OutOfMemory : ErrorKind::Unsupported, func, "%s failed: %s", what,
       cublasGetStatusString(s));
}
#define SAAP_LT(expr) check_lt((expr), #expr, __func__)

}  // namespace

// The operation and layouts of one shape, column-major: Yᶜ (out x rows, ld out) = Wᶜᵀ · Xᶜ with Wᶜ
// in x out (ld in, op T) and Xᶜ in x rows (ld in, op N).
struct TunedGemm::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  Plan(cudaDataType y_type, int64_t rows, int in, int out) {
    SAAP_LT(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t t = CUBLAS_OP_T, n = CUBLAS_OP_N;
    SAAP_LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t));
    SAAP_LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof n));
    SAAP_LT(cublasLtMatrixLayoutCreate(&a, CUDA_R_16BF, uint64_t(in), uint64_t(out), in));
    SAAP_LT(cublasLtMatrixLayoutCreate(&b, CUDA_R_16BF, uint64_t(in), uint64_t(rows), in));
    SAAP_LT(cublasLtMatrixLayoutCreate(&c, y_type, uint64_t(out), uint64_t(rows), out));
  }
  ~Plan() {
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
};

void TunedGemm::PlanDeleter::operator()(Plan* p) const { delete p; }

TunedGemm::~TunedGemm() {
  if (lt_) cublasLtDestroy(lt_);
}

void TunedGemm::init(void* workspace, size_t workspace_bytes) {
  SAAP_LT(cublasLtCreate(&lt_));
  ws_ = workspace;
  ws_bytes_ = workspace_bytes;
}

void TunedGemm::run(const void* x, const void* w, void* y, cudaDataType y_type, int64_t rows, int in, int out,
                    float beta, cudaStream_t stream) {
  SAAP_CU_REQUIRE(lt_ != nullptr, InvalidArgument, "TunedGemm used before init");
  const float alpha = 1.f;
  auto run_plan = [&](const Plan& plan, const cublasLtMatmulAlgo_t* algo, void* dst) {
    return cublasLtMatmul(lt_, plan.op, &alpha, w, plan.a, x, plan.b, &beta, dst, plan.c, dst, plan.c, algo, ws_,
                          ws_bytes_, stream);
  };
  const Shape shape{rows, in, out, int(y_type), beta != 0.f};
  if (const auto it = algos_.find(shape); it != algos_.end()) {
    SAAP_LT(run_plan(*it->second.plan, &it->second.algo, y));
    return;
  }
  std::unique_ptr<Plan, PlanDeleter> owned(new Plan(y_type, rows, in, out));
  const Plan& plan = *owned;
  auto matmul = [&](const cublasLtMatmulAlgo_t* algo, void* dst) { return run_plan(plan, algo, dst); };

  cublasLtMatmulPreference_t pref = nullptr;
  SAAP_LT(cublasLtMatmulPreferenceCreate(&pref));
  std::vector<cublasLtMatmulHeuristicResult_t> found(kCandidates);
  int n_found = 0;
  const cublasStatus_t hs = [&] {
    const cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                                  &ws_bytes_, sizeof ws_bytes_);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    return cublasLtMatmulAlgoGetHeuristic(lt_, plan.op, plan.a, plan.b, plan.c, plan.c, pref, kCandidates,
                                          found.data(), &n_found);
  }();
  cublasLtMatmulPreferenceDestroy(pref);
  SAAP_LT(hs);
  SAAP_CU_REQUIRE(n_found > 0, Unsupported, "cuBLASLt has no algorithm for rows %lld, in %d, out %d", (long long)rows,
                  in, out);

  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  SAAP_CU(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) {  // no timing (nor allocation) inside a capture
    SAAP_LT(matmul(&found[0].algo, y));
    return;
  }

  // Time every candidate on a scratch output (beta = 1 must not add into y more than once):
  // one warm-up, then the median of 5. A candidate that fails to run is skipped. Without memory
  // for the scratch, the first candidate runs untimed (and the shape is tried again next time).
  const size_t y_bytes = size_t(rows) * size_t(out) * (y_type == CUDA_R_32F ? 4 : 2);
  DeviceBuffer<char> scratch;
  try {
    scratch.resize(y_bytes);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::OutOfMemory) throw;
    SAAP_LT(matmul(&found[0].algo, y));
    return;
  }
  SAAP_CU(cudaMemsetAsync(scratch.get(), 0, y_bytes, stream));
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  SAAP_CU(cudaEventCreate(&e0));
  SAAP_CU(cudaEventCreate(&e1));
  int best = -1;
  float best_ms = 0.f;
  for (int i = 0; i < n_found; ++i) {
    if (found[size_t(i)].state != CUBLAS_STATUS_SUCCESS) continue;
    if (matmul(&found[size_t(i)].algo, scratch.get()) != CUBLAS_STATUS_SUCCESS) continue;
    std::vector<float> ms;
    for (int r = 0; r < 5; ++r) {
      SAAP_CU(cudaEventRecord(e0, stream));
      matmul(&found[size_t(i)].algo, scratch.get());
      SAAP_CU(cudaEventRecord(e1, stream));
      SAAP_CU(cudaEventSynchronize(e1));
      float t = 0.f;
      SAAP_CU(cudaEventElapsedTime(&t, e0, e1));
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    if (best < 0 || ms[2] < best_ms) {
      best = i;
      best_ms = ms[2];
    }
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  SAAP_CU(cudaStreamSynchronize(stream));  // the scratch is freed on return
  SAAP_CU_REQUIRE(best >= 0, Unsupported, "no cuBLASLt candidate ran for rows %lld, in %d, out %d", (long long)rows,
                  in, out);
  SAAP_LT(matmul(&found[size_t(best)].algo, y));
  algos_.emplace(shape, Tuned{std::move(owned), found[size_t(best)].algo});
}

}  // namespace saap::cuda
