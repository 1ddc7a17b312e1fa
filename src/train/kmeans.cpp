#include "saap/train/kmeans.h"

#include <faiss/Clustering.h>
#include <faiss/IndexFlat.h>
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "saap/core/error.h"

namespace saap {

namespace {

void check_finite(const float* x, int64_t n, int d, const char* what) {
  for (int64_t i = 0; i < n * d; ++i)
    SAAP_CHECK_FMT(std::isfinite(x[i]), NonFinite, "%s row %lld, dim %d is not finite", what, (long long)(i / d),
                   int(i % d));
}

// FAISS parallelizes every step with OpenMP; on small problems the threads' start-up and
// spinning cost more than the work (measured: 8 k-means runs of 1200 x 16 points, 8 centroids,
// took 7.8 s on 2 busy threads and 0.03 s on one), so small problems run on the calling thread.
struct SmallProblemThreads {
  int saved = omp_get_max_threads();
  explicit SmallProblemThreads(double work) {
    if (work < double(1 << 24)) omp_set_num_threads(1);
  }
  ~SmallProblemThreads() { omp_set_num_threads(saved); }
};

}  // namespace

KMeansResult train_kmeans(const float* x, int64_t n, int d, const KMeansOptions& o) {
  SAAP_CHECK_FMT(d > 0, InvalidArgument, "k-means dimension d = %d must be positive", d);
  SAAP_CHECK_FMT(o.k > 0, InvalidArgument, "k-means k = %d must be positive", o.k);
  SAAP_CHECK_FMT(n >= o.k, InvalidArgument, "k-means needs at least k = %d points, got n = %lld", o.k, (long long)n);
  SAAP_CHECK_FMT(o.niter > 0, InvalidArgument, "k-means niter = %d must be positive", o.niter);
  check_finite(x, n, d, "k-means input");
  faiss::ClusteringParameters cp;
  SAAP_CHECK_FMT(o.nredo > 0, InvalidArgument, "k-means nredo = %d must be positive", o.nredo);
  cp.niter = o.niter;
  cp.nredo = o.nredo;
  cp.seed = o.seed;
  cp.spherical = o.spherical;
  cp.max_points_per_centroid = o.max_points_per_centroid;
  cp.min_points_per_centroid = 1;  // few points per centroid is a choice here, not a mistake to warn about
  faiss::Clustering clus(d, o.k, cp);
  const SmallProblemThreads threads(double(std::min<int64_t>(n, int64_t(o.k) * o.max_points_per_centroid)) * o.k * d);
  faiss::IndexFlatIP ip(d);
  faiss::IndexFlatL2 l2(d);
  faiss::Index& index = o.spherical ? static_cast<faiss::Index&>(ip) : static_cast<faiss::Index&>(l2);
  clus.train(faiss::Index::idx_t(n), x, index);
  KMeansResult r;
  r.centroids = clus.centroids;
  r.objective = clus.iteration_stats.empty() ? 0.0 : clus.iteration_stats.back().obj;
  return r;
}

void assign_kmeans(const float* centroids, int k, int d, bool spherical, const float* x, int64_t n, int32_t* out) {
  SAAP_CHECK_FMT(k > 0 && d > 0, InvalidArgument, "assign: k = %d, d = %d must be positive", k, d);
  check_finite(x, n, d, "k-means assignment input");
  faiss::IndexFlatIP ip(d);
  faiss::IndexFlatL2 l2(d);
  faiss::Index& index = spherical ? static_cast<faiss::Index&>(ip) : static_cast<faiss::Index&>(l2);
  index.add(k, centroids);
  const SmallProblemThreads threads(double(n) * k * d);
  std::vector<float> dist(static_cast<size_t>(n));
  std::vector<faiss::Index::idx_t> label(static_cast<size_t>(n));
  index.search(faiss::Index::idx_t(n), x, 1, dist.data(), label.data());
  for (int64_t i = 0; i < n; ++i) out[i] = int32_t(label[size_t(i)]);
}

}  // namespace saap
