// Principal component analysis of key vectors (Loki's offline step). The full D x D orthogonal
// basis is kept, so that rotating keys and queries into it leaves every dot product unchanged;
// only the ranking score truncates it to the leading components.
#pragma once
#include <cstdint>
#include <vector>

namespace saap {

struct Pca {
  int dim = 0;
  // [dim][dim] row-major; row j is the j-th principal axis (unit norm), in decreasing order of
  // variance: x' = components * x, i.e. x' = x P with P = components^T (Loki's notation).
  std::vector<float> components;
  std::vector<float> variances;        // [dim] eigenvalues of the sample covariance, descending, >= 0
  std::vector<float> explained_ratio;  // [dim] variances / their sum
  std::vector<float> mean;             // [dim] the sample mean (fitting centres on it; Loki does not use it)

  // y[j] = components[j] . x for j < r (r <= dim): the first r coordinates in the basis.
  void rotate(const float* x, float* y, int r) const;
};

// Fits the PCA of n rows of `dim` floats (row i at x + i * stride). Covariance accumulated in
// float64 (OpenBLAS dsyrk), eigen-decomposition by LAPACK dsyevd. Each axis' sign is fixed so that
// its largest-magnitude coordinate is positive, making the result deterministic.
// Throws InvalidArgument for n < 2 or dim < 1, NonFinite naming the first NaN/Inf row.
Pca fit_pca(const float* x, int64_t n, int dim, int64_t stride);

}  // namespace saap
