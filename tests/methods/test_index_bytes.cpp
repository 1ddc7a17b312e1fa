// The index bytes a query reads to decide, as free functions of the shape and the artifact:
// saap_index_bytes, kmeans_index_bytes, quest_index_bytes, loki_index_bytes. The CPU methods charge
// them in select() and the GPU runner (saap::cuda::KvReads::index_bytes) calls the same functions,
// so these figures are what both devices report. References: byte counts worked out by hand from
// the tensors and the page geometry, not through the functions' own arithmetic.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "saap/core/error.h"
#include "saap/methods/loki.h"
#include "saap/methods/quest.h"
#include "saap/methods/saap.h"
#include "saap/methods/symmetric_kmeans.h"

namespace saap {
namespace {

constexpr int kQ = 4, kKV = 2, kD = 8, kC = 6, kHidden = 5;

PartitionArtifact partition_artifact(bool with_router) {
  PartitionArtifact a;
  a.identity.method = with_router ? "saap" : "kmeans";
  a.partitions = kC;
  a.hidden = with_router ? kHidden : 0;
  PartitionLayer& l = a.layers[1];
  l.centroids.assign(size_t(kKV) * kC * kD, 0.0f);
  if (with_router)
    for (int h = 0; h < kQ; ++h) l.classifiers.emplace_back(kD, kHidden, kC);
  return a;
}

// The kind of the error f throws; -1 when it throws none.
int error_kind(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return int(e.kind());
  }
  return -1;
}

TEST(IndexBytes, SaapCountsEveryHeadsRouterAndTheSizeTables) {
  const PartitionArtifact a = partition_artifact(true);
  const LayerShape shape{1, kQ, kKV, kD, 256};
  int64_t router_floats = 0;
  for (const PartitionClassifier& c : a.layers.at(1).classifiers)
    router_floats += int64_t(c.w1.size() + c.b1.size() + c.w2.size() + c.b2.size());
  // 4 heads x (5 x 8 + 5 + 6 x 5 + 6 = 81) fp32 values, then 2 KV heads x 6 int32 sizes: 1344 bytes.
  EXPECT_EQ(router_floats, 4 * 81);
  EXPECT_EQ(saap_index_bytes(a, shape), router_floats * 4 + kKV * kC * 4);
  EXPECT_EQ(saap_index_bytes(a, shape), 1344);
  // A layer the artifact lacks, or an artifact without routers: named errors, not zero bytes.
  EXPECT_EQ(error_kind([&] { saap_index_bytes(a, LayerShape{0, kQ, kKV, kD, 256}); }), int(ErrorKind::InvalidArgument));
  EXPECT_EQ(error_kind([&] { saap_index_bytes(partition_artifact(false), shape); }), int(ErrorKind::InvalidArgument));
}

TEST(IndexBytes, KMeansCountsEachKvHeadsCentroidsAndSizes) {
  // 2 KV heads x 6 partitions x (8 fp32 coordinates + 1 int32 size) = 432 bytes, whatever the heads per group.
  EXPECT_EQ(kmeans_index_bytes(partition_artifact(false), LayerShape{1, kQ, kKV, kD, 256}), 432);
  EXPECT_EQ(kmeans_index_bytes(partition_artifact(true), LayerShape{1, 2 * kQ, kKV, kD, 256}), 432);
}

TEST(IndexBytes, QuestCountsThePagesOfTheMiddleOnlyWhenItRanksThem) {
  QuestParams p;
  p.lookup = 0.25;
  p.sinks = 4;
  p.window = 16;
  p.page_size = 16;
  const LayerShape shape{0, kQ, kKV, kD, 4096};
  // n = 20: sinks and window read everything; n = 24: ceil(0.25 x 24) = 6 < 20 fixed reads, no page fits.
  EXPECT_EQ(quest_index_bytes(p, shape, 20, DType::F32), 0);
  EXPECT_EQ(quest_index_bytes(p, shape, 24, DType::F32), 0);
  // n = 200: middle [4, 184), pages 0..11 (12 pages), min and max of 8 values per page and KV head.
  EXPECT_EQ(quest_index_bytes(p, shape, 200, DType::F32), 2 * 12 * 2 * 8 * 4);
  EXPECT_EQ(quest_index_bytes(p, shape, 200, DType::BF16), 2 * 12 * 2 * 8 * 2);
  // A fixed budget of 100 tokens covers the middle [4, 84) of n = 100, not the 164 of n = 180.
  p.budget_tokens = 100;
  EXPECT_EQ(quest_index_bytes(p, shape, 100, DType::BF16), 0);
  EXPECT_EQ(quest_index_bytes(p, shape, 180, DType::BF16), 2 * 11 * 2 * 8 * 2);  // middle [4, 164): pages 0..10
}

TEST(IndexBytes, LokiCountsRCoordinatesOfEveryPrefixKeyWhenItRanks) {
  const LokiParams p{0.125, 0.5};  // r = ceil(0.5 x 8) = 4
  const LayerShape shape{0, kQ, kKV, kD, 4096};
  EXPECT_EQ(loki_index_bytes(p, shape, 1, DType::BF16), 0);  // k = 1 covers a 1-token prefix
  EXPECT_EQ(loki_index_bytes(p, shape, 8, DType::BF16), 8 * 2 * 4 * 2);
  EXPECT_EQ(loki_index_bytes(p, shape, 256, DType::F32), 256 * 2 * 4 * 4);
  EXPECT_EQ(loki_index_bytes(LokiParams{1.0, 0.5}, shape, 256, DType::F32), 0);  // k_f = 1 reads everything
}

}  // namespace
}  // namespace saap
