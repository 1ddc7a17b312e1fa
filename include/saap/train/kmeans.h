// K-means on calibration keys (FAISS), the key partition of Saap and of the symmetric baseline.
// Spherical k-means (unit centroids, inner-product assignment) is the paper's choice; plain
// k-means (L2) is kept for comparison.
#pragma once
#include <cstdint>
#include <vector>

namespace saap {

struct KMeansOptions {
  int k = 256;
  int niter = 20;
  int seed = 1234;
  bool spherical = true;
  int nredo = 1;  // runs from different random starts; the best objective is kept
  // FAISS subsamples the training set to this many points per centroid (its speed knob).
  int max_points_per_centroid = 256;
};

struct KMeansResult {
  std::vector<float> centroids;  // [k][d]
  double objective = 0;          // FAISS's final objective (sum of similarities or of squared distances)
};

// x [n][d]; requires n >= k. Deterministic for a fixed seed and thread count.
KMeansResult train_kmeans(const float* x, int64_t n, int d, const KMeansOptions& options);

// Nearest centroid of each row of x (largest inner product when spherical, else smallest L2),
// through a FAISS flat index; out [n].
void assign_kmeans(const float* centroids, int k, int d, bool spherical, const float* x, int64_t n, int32_t* out);

}  // namespace saap
