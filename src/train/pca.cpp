#include "saap/train/pca.h"

#include <algorithm>
#include <cmath>

#include <cblas.h>

#include "saap/core/error.h"

// LAPACK (shipped inside OpenBLAS): symmetric eigen-decomposition, divide and conquer.
extern "C" void dsyevd_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w,
                        double* work, const int* lwork, int* iwork, const int* liwork, int* info);

namespace saap {

void Pca::rotate(const float* x, float* y, int r) const {
  for (int j = 0; j < r; ++j) {
    const float* axis = components.data() + int64_t(j) * dim;
    float s = 0.0f;
    for (int i = 0; i < dim; ++i) s += axis[i] * x[i];
    y[j] = s;
  }
}

Pca fit_pca(const float* x, int64_t n, int dim, int64_t stride) {
  SAAP_CHECK_FMT(dim >= 1, InvalidArgument, "dim = %d must be positive", dim);
  SAAP_CHECK_FMT(n >= 2, InvalidArgument, "n = %lld rows: PCA needs at least 2", (long long)n);
  SAAP_CHECK_FMT(stride >= dim, InvalidArgument, "stride = %lld is smaller than dim = %d", (long long)stride, dim);
  SAAP_CHECK_FMT(x != nullptr, InvalidArgument, "x is null for %lld rows", (long long)n);

  std::vector<double> mean(size_t(dim), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const float* row = x + i * stride;
    for (int d = 0; d < dim; ++d) {
      SAAP_CHECK_FMT(std::isfinite(row[d]), NonFinite, "row %lld, dim %d is %g", (long long)i, d, double(row[d]));
      mean[size_t(d)] += row[d];
    }
  }
  for (double& m : mean) m /= double(n);

  // Centred rows in float64 chunks; C += Xc^T Xc by dsyrk (upper triangle).
  constexpr int64_t kChunk = 4096;
  std::vector<double> cov(size_t(dim) * dim, 0.0), chunk(size_t(std::min(n, kChunk)) * dim);
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t m = std::min(kChunk, n - i0);
    for (int64_t i = 0; i < m; ++i)
      for (int d = 0; d < dim; ++d) chunk[size_t(i * dim + d)] = double(x[(i0 + i) * stride + d]) - mean[size_t(d)];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, dim, int(m), 1.0, chunk.data(), dim, 1.0, cov.data(), dim);
  }
  for (int a = 0; a < dim; ++a)
    for (int b = a; b < dim; ++b) {
      const double v = cov[size_t(a) * dim + b] / double(n - 1);
      cov[size_t(a) * dim + b] = v;
      cov[size_t(b) * dim + a] = v;
    }

  std::vector<double> w(static_cast<size_t>(dim));
  int info = 0, lwork = -1, liwork = -1, iwork_query = 0;
  double work_query = 0.0;
  dsyevd_("V", "U", &dim, cov.data(), &dim, w.data(), &work_query, &lwork, &iwork_query, &liwork, &info);
  SAAP_CHECK_FMT(info == 0, InvalidArgument, "dsyevd workspace query failed, info = %d", info);
  lwork = int(work_query);
  liwork = iwork_query;
  std::vector<double> work(size_t(std::max(lwork, 1)));
  std::vector<int> iwork(size_t(std::max(liwork, 1)));
  dsyevd_("V", "U", &dim, cov.data(), &dim, w.data(), work.data(), &lwork, iwork.data(), &liwork, &info);
  SAAP_CHECK_FMT(info == 0, InvalidArgument, "dsyevd did not converge, info = %d (dim = %d)", info, dim);

  Pca pca;
  pca.dim = dim;
  pca.components.resize(size_t(dim) * dim);
  pca.variances.resize(size_t(dim));
  pca.explained_ratio.resize(size_t(dim));
  pca.mean.assign(mean.begin(), mean.end());
  double total = 0.0;
  for (int j = 0; j < dim; ++j) total += std::max(w[size_t(j)], 0.0);
  for (int j = 0; j < dim; ++j) {
    // dsyevd returns ascending eigenvalues; eigenvector of w[c] is column c (column-major storage).
    const int c = dim - 1 - j;
    const double* v = cov.data() + size_t(c) * dim;
    int argmax = 0;
    for (int i = 1; i < dim; ++i)
      if (std::fabs(v[i]) > std::fabs(v[argmax])) argmax = i;
    const double sign = v[argmax] < 0 ? -1.0 : 1.0;
    for (int i = 0; i < dim; ++i) pca.components[size_t(j) * dim + i] = float(sign * v[i]);
    const double lambda = std::max(w[size_t(c)], 0.0);
    pca.variances[size_t(j)] = float(lambda);
    pca.explained_ratio[size_t(j)] = total > 0 ? float(lambda / total) : 0.0f;
  }
  return pca;
}

}  // namespace saap
