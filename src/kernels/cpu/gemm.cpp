#include "saap/kernels/cpu/gemm.h"

#include <omp.h>

#include <algorithm>

#ifdef SAAP_HAVE_BLAS
#include <cblas.h>
#endif

namespace saap {

namespace {

// Output features per OpenMP slice: at least 64, so a slice is worth a BLAS call.
int64_t slice_count(int64_t out) { return std::min<int64_t>(omp_get_max_threads(), (out + 63) / 64); }

// y[i][o] (+)= x[i] · w[o] for rows [0, n) and features [o0, o0 + m), by 4 x 4 blocks: each
// block reads 4 rows of x and 4 of W once per pass over `in` and keeps 16 sums.
void loop_slice(float* y, const float* x, const float* w, int64_t n, int64_t in, int64_t out, int64_t o0, int64_t m,
                bool accumulate) {
  for (int64_t i0 = 0; i0 < n; i0 += 4) {
    const int64_t rows = std::min<int64_t>(4, n - i0);
    for (int64_t f0 = o0; f0 < o0 + m; f0 += 4) {
      const int64_t feats = std::min<int64_t>(4, o0 + m - f0);
      float acc[4][4] = {};
      if (rows == 4 && feats == 4) {
        const float *x0 = x + i0 * in, *x1 = x0 + in, *x2 = x1 + in, *x3 = x2 + in;
        const float *w0 = w + f0 * in, *w1 = w0 + in, *w2 = w1 + in, *w3 = w2 + in;
        for (int64_t k = 0; k < in; ++k) {
          const float a[4] = {x0[k], x1[k], x2[k], x3[k]}, b[4] = {w0[k], w1[k], w2[k], w3[k]};
          for (int r = 0; r < 4; ++r)
            for (int c = 0; c < 4; ++c) acc[r][c] += a[r] * b[c];
        }
      } else {  // the ragged edge
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < feats; ++c) {
            const float *xr = x + (i0 + r) * in, *wc = w + (f0 + c) * in;
            float s = 0;
            for (int64_t k = 0; k < in; ++k) s += xr[k] * wc[k];
            acc[r][c] = s;
          }
      }
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < feats; ++c) {
          float& dst = y[(i0 + r) * out + f0 + c];
          dst = accumulate ? dst + acc[r][c] : acc[r][c];
        }
    }
  }
}

}  // namespace

void matmul_xwt_loop(float* y, const float* x, const float* w, int64_t n, int64_t in, int64_t out, bool accumulate) {
  const int64_t slices = slice_count(out);
  const int64_t width = (out + slices - 1) / slices;
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < slices; ++s) {
    const int64_t o0 = s * width, m = std::min(out, o0 + width) - o0;
    if (m > 0) loop_slice(y, x, w, n, in, out, o0, m, accumulate);
  }
}

#ifdef SAAP_HAVE_BLAS

void matmul_xwt(float* y, const float* x, const float* w, int64_t n, int64_t in, int64_t out, bool accumulate) {
  const float beta = accumulate ? 1.0f : 0.0f;
  const int64_t slices = slice_count(out);
  const int64_t width = (out + slices - 1) / slices;
#pragma omp parallel for schedule(static)
  for (int64_t s = 0; s < slices; ++s) {
    const int64_t o0 = s * width, m = std::min(out, o0 + width) - o0;
    if (m <= 0) continue;
    if (n == 1)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, int(m), int(in), 1.0f, w + o0 * in, int(in), x, 1, beta, y + o0, 1);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(m), int(in), 1.0f, x, int(in), w + o0 * in,
                  int(in), beta, y + o0, int(out));
  }
}

bool matmul_uses_blas() { return true; }
BlasSerialScope::BlasSerialScope() : previous_(openblas_get_num_threads()) { openblas_set_num_threads(1); }
BlasSerialScope::~BlasSerialScope() { openblas_set_num_threads(previous_); }

#else

void matmul_xwt(float* y, const float* x, const float* w, int64_t n, int64_t in, int64_t out, bool accumulate) {
  matmul_xwt_loop(y, x, w, n, in, out, accumulate);
}

bool matmul_uses_blas() { return false; }
BlasSerialScope::BlasSerialScope() = default;
BlasSerialScope::~BlasSerialScope() = default;

#endif

}  // namespace saap
