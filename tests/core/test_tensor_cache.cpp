#include <gtest/gtest.h>

#include <cmath>

#include "saap/core/error.h"
#include "saap/core/kv_cache.h"
#include "saap/core/tensor.h"

namespace saap {
namespace {

TEST(TensorView, ShapeStridesSliceSelect) {
  Tensor t(DType::F32, {2, 3, 4});
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = float(i);
  TensorView v = t.view();
  EXPECT_TRUE(v.contiguous());
  EXPECT_EQ(v.stride(0), 12);
  EXPECT_EQ(v.at({1, 2, 3}), 23.f);
  TensorView s = v.slice(2, 1, 3);
  EXPECT_FALSE(s.contiguous());
  EXPECT_EQ(s.shape_string(), "[2, 3, 2]");
  EXPECT_EQ(s.at({1, 0, 1}), 14.f);
  EXPECT_EQ(v.select(1, 2).at({1, 0}), 20.f);
  EXPECT_THROW(v.at({2, 0, 0}), Error);
  EXPECT_THROW(v.data<bf16>(), Error);
  EXPECT_THROW(v.slice(0, 1, 3), Error);
}

TEST(KVCache, AppendStoresHeadMajorAndConverts) {
  KVCache cache({2, 3, 4, 10, DType::BF16});
  std::vector<float> k(2 * 3 * 4), v(k.size());
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = float(i) + 0.5f;
    v[i] = -float(i);
  }
  cache.append(1, k.data(), v.data(), 2);
  EXPECT_EQ(cache.length(1), 2);
  EXPECT_EQ(cache.length(0), 0);
  const LayerKV layer = cache.layer(1);
  // Position 1, head 2, dim 3 comes from row (1*3+2)*4+3 of the [n][heads][dim] input.
  EXPECT_EQ(to_float(layer.key<bf16>(2, 1)[3]), to_float(to_bf16(k[(1 * 3 + 2) * 4 + 3])));
  EXPECT_EQ(to_float(layer.value<bf16>(0, 0)[1]), -1.f);
  EXPECT_EQ(layer.token_bytes(), 2 * 4 * 2);
  cache.truncate(1);
  EXPECT_EQ(cache.length(1), 1);
  cache.clear();
  EXPECT_EQ(cache.length(1), 0);
}

// key_to_float reads one cached key back as float32: the input rounded to the cache dtype.
TEST(KVCache, KeyToFloatReadsTheRoundedKeyInEveryDtype) {
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    KVCache cache({1, 2, 4, 3, dt});
    std::vector<float> k(3 * 2 * 4), v(k.size(), 0.f);
    for (size_t i = 0; i < k.size(); ++i) k[i] = 0.1f * float(i) - 1.03f;
    cache.append(0, k.data(), v.data(), 3);
    float got[4];
    cache.layer(0).key_to_float(1, 2, got);
    for (int d = 0; d < 4; ++d) {
      const float in = k[(2 * 2 + 1) * 4 + d];
      const float want = dt == DType::F32 ? in : dt == DType::F16 ? to_float(to_f16(in)) : to_float(to_bf16(in));
      EXPECT_EQ(got[d], want) << dtype_name(dt) << " dim " << d;
    }
  }
}

TEST(KVCache, RefusesOverflowAndNonFiniteWithoutChangingState) {
  KVCache cache({1, 1, 2, 3, DType::F32});
  std::vector<float> k = {1, 2, 3, 4}, v = {1, 2, 3, 4};
  cache.append(0, k.data(), v.data(), 2);
  try {
    cache.append(0, k.data(), v.data(), 2);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("capacity of 3"), std::string::npos);
  }
  k[1] = INFINITY;
  try {
    cache.append(0, k.data(), v.data(), 1);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::NonFinite);
    EXPECT_NE(std::string(e.what()).find("position 2"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.length(0), 2);
  EXPECT_THROW(KVCache({1, 0, 2, 3, DType::F32}), Error);
  EXPECT_THROW(cache.length(1), Error);
}

}  // namespace
}  // namespace saap
