// K-means (FAISS) as Saap's key partition: recovery of well-separated clusters, and assignment
// equal to a brute-force double-precision argmax/argmin (and to the method's own assignment).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <set>

#include "saap/core/error.h"
#include "saap/methods/saap.h"
#include "saap/train/kmeans.h"

namespace saap {
namespace {

struct Clusters {
  std::vector<float> centers, x;  // centers [k][d], x [k * per][d]
  std::vector<int> label;
};

Clusters make_clusters(int k, int d, int per, float radius, float noise, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  Clusters c;
  c.centers.resize(size_t(k) * d);
  for (int j = 0; j < k; ++j) {
    double n = 0;
    for (int i = 0; i < d; ++i) n += std::pow(c.centers[size_t(j * d + i)] = normal(rng), 2);
    for (int i = 0; i < d; ++i) c.centers[size_t(j * d + i)] *= float(radius / std::sqrt(n));
  }
  for (int p = 0; p < per; ++p)
    for (int j = 0; j < k; ++j) {
      for (int i = 0; i < d; ++i) c.x.push_back(c.centers[size_t(j * d + i)] + noise * normal(rng));
      c.label.push_back(j);
    }
  return c;
}

void expect_recovered(const Clusters& c, const KMeansResult& r, int k, int d, bool spherical) {
  const int64_t n = int64_t(c.label.size());
  std::vector<int32_t> a(static_cast<size_t>(n));
  assign_kmeans(r.centroids.data(), k, d, spherical, c.x.data(), n, a.data());
  // Each true cluster maps to one centroid, and distinct clusters to distinct centroids.
  std::map<int, std::set<int>> to_centroid;
  for (int64_t i = 0; i < n; ++i) to_centroid[c.label[size_t(i)]].insert(a[size_t(i)]);
  std::set<int> used;
  for (const auto& [label, cs] : to_centroid) {
    ASSERT_EQ(cs.size(), 1u) << "cluster " << label << " split";
    used.insert(*cs.begin());
  }
  EXPECT_EQ(int(used.size()), k);
  for (const auto& [label, cs] : to_centroid) {
    const float* m = r.centroids.data() + *cs.begin() * d;
    const float* t = c.centers.data() + label * d;
    double dot = 0, mm = 0, tt = 0;
    for (int i = 0; i < d; ++i) dot += double(m[i]) * t[i], mm += double(m[i]) * m[i], tt += double(t[i]) * t[i];
    EXPECT_GT(dot / std::sqrt(mm * tt), 0.99);
    if (spherical) {
      EXPECT_NEAR(mm, 1.0, 1e-4);  // spherical centroids are unit vectors
    }
  }
}

TEST(KMeans, SphericalRecoversWellSeparatedDirections) {
  const int k = 8, d = 16;
  const Clusters c = make_clusters(k, d, 150, 5.0f, 0.3f, 1);
  KMeansOptions o;
  o.k = k;
  o.spherical = true;
  o.seed = 3;
  o.nredo = 10;  // random starts can merge two clusters; the best of several runs does not
  expect_recovered(c, train_kmeans(c.x.data(), int64_t(c.label.size()), d, o), k, d, true);
}

TEST(KMeans, L2RecoversWellSeparatedCenters) {
  const int k = 6, d = 8;
  const Clusters c = make_clusters(k, d, 120, 10.0f, 0.5f, 2);
  KMeansOptions o;
  o.k = k;
  o.spherical = false;
  o.nredo = 10;
  expect_recovered(c, train_kmeans(c.x.data(), int64_t(c.label.size()), d, o), k, d, false);
}

TEST(KMeans, SameSeedSameCentroids) {
  const Clusters c = make_clusters(10, 12, 50, 1.0f, 1.0f, 4);
  KMeansOptions o;
  o.k = 10;
  o.seed = 7;
  EXPECT_EQ(train_kmeans(c.x.data(), 500, 12, o).centroids, train_kmeans(c.x.data(), 500, 12, o).centroids);
}

TEST(KMeans, AssignmentIsTheBruteForceNearestCentroid) {
  std::mt19937 rng(9);
  std::normal_distribution<float> normal;
  const int k = 37, d = 24, n = 2000;
  std::vector<float> cent(size_t(k) * d), x(size_t(n) * d);
  for (auto& v : cent) v = normal(rng);
  for (auto& v : x) v = 3 * normal(rng);
  for (bool spherical : {true, false}) {
    std::vector<int32_t> a(n);
    assign_kmeans(cent.data(), k, d, spherical, x.data(), n, a.data());
    for (int i = 0; i < n; ++i) {
      int best = 0;
      double best_s = -1e300;
      for (int c = 0; c < k; ++c) {
        double ip = 0, dist = 0;
        for (int j = 0; j < d; ++j) {
          ip += double(x[size_t(i * d + j)]) * cent[size_t(c * d + j)];
          dist += std::pow(double(x[size_t(i * d + j)]) - cent[size_t(c * d + j)], 2);
        }
        const double s = spherical ? ip : -dist;
        if (s > best_s) best_s = s, best = c;
      }
      EXPECT_EQ(a[size_t(i)], best) << "row " << i << (spherical ? " (inner product)" : " (L2)");
      EXPECT_EQ(nearest_centroid(cent.data(), k, d, spherical, x.data() + i * d), best) << "row " << i;
    }
  }
}

TEST(KMeans, BadInputIsRefused) {
  std::vector<float> x(10 * 4, 1.0f);
  KMeansOptions o;
  o.k = 11;
  EXPECT_THROW(train_kmeans(x.data(), 10, 4, o), Error);
  o.k = 2;
  x[5] = NAN;
  try {
    train_kmeans(x.data(), 10, 4, o);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::NonFinite);
  }
}

}  // namespace
}  // namespace saap
