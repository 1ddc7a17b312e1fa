// The CPU runner's one GEMM shape, y = x · Wᵀ, with or without BLAS. Where CMake found a BLAS
// (every CPU build: scripts/setup.sh installs OpenBLAS) matmul_xwt calls cblas_sgemm/sgemv;
// where it did not (the GPU machine builds the CLI with CUDA, CMake and g++ alone) it runs the
// portable OpenMP loop matmul_xwt_loop, which every build also compiles so that the tests can
// check it against BLAS and against float64.
#pragma once
#include <cstdint>

namespace saap {

// y [n][out] = x [n][in] · W [out][in]ᵀ, or y += that when accumulate (the residual add is fused
// this way). fp32 in, fp32 accumulation. OpenMP splits the output features; each slice is one
// single-threaded BLAS call (see BlasSerialScope).
void matmul_xwt(float* y, const float* x, const float* w, int64_t n, int64_t in, int64_t out, bool accumulate = false);

// The same product by blocked loops (4 rows x 4 output features per inner block, the dot products
// vectorised over `in`), without BLAS.
void matmul_xwt_loop(float* y, const float* x, const float* w, int64_t n, int64_t in, int64_t out,
                     bool accumulate = false);

// True when matmul_xwt calls BLAS (the build found one).
bool matmul_uses_blas();

// One thread pool at a time: OpenBLAS's own pool and OpenMP's spinning workers fight over the
// same cores (measured: 3-8x slower on 2 cores), so BLAS runs single-threaded while this object
// lives and gets its previous setting back afterwards (FAISS training relies on threaded BLAS).
// Without BLAS it does nothing.
class BlasSerialScope {
 public:
  BlasSerialScope();
  ~BlasSerialScope();
  BlasSerialScope(const BlasSerialScope&) = delete;
  BlasSerialScope& operator=(const BlasSerialScope&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace saap
