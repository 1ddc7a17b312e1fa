#include "saap/core/kv_cache.h"

#include <cmath>
#include <cstring>

#include "saap/core/error.h"
#include "saap/core/tensor.h"

namespace saap {

void LayerKV::key_to_float(int head, int64_t pos, float* out) const {
  switch (dtype) {
    case DType::F32:
      std::memcpy(out, key<float>(head, pos), sizeof(float) * size_t(head_dim));
      return;
    case DType::F16:
      for (int i = 0; i < head_dim; ++i) out[i] = to_float(key<f16>(head, pos)[i]);
      return;
    case DType::BF16:
      for (int i = 0; i < head_dim; ++i) out[i] = to_float(key<bf16>(head, pos)[i]);
      return;
  }
}

KVCache::KVCache(const KVCacheShape& shape) : shape_(shape) {
  SAAP_CHECK_FMT(shape.n_layers > 0, InvalidArgument, "n_layers = %d must be positive", shape.n_layers);
  SAAP_CHECK_FMT(shape.n_kv_heads > 0, InvalidArgument, "n_kv_heads = %d must be positive", shape.n_kv_heads);
  SAAP_CHECK_FMT(shape.head_dim > 0, InvalidArgument, "head_dim = %d must be positive", shape.head_dim);
  SAAP_CHECK_FMT(shape.capacity > 0, InvalidArgument, "capacity = %lld must be positive", (long long)shape.capacity);
  const size_t bytes = size_t(shape.n_layers) * shape.n_kv_heads * size_t(shape.capacity) * shape.head_dim *
                       dtype_size(shape.dtype);
  keys_ = aligned_alloc_or_throw(bytes, "KV cache keys");
  values_ = aligned_alloc_or_throw(bytes, "KV cache values");
  lengths_.assign(shape.n_layers, 0);
}

int64_t KVCache::length(int layer) const {
  SAAP_CHECK_FMT(layer >= 0 && layer < shape_.n_layers, InvalidArgument, "layer %d of %d", layer, shape_.n_layers);
  return lengths_[layer];
}

void* KVCache::head_ptr(const std::shared_ptr<void>& storage, int layer, int head, int64_t pos) const {
  const int64_t index = ((int64_t(layer) * shape_.n_kv_heads + head) * shape_.capacity + pos) * shape_.head_dim;
  return static_cast<char*>(storage.get()) + index * int64_t(dtype_size(shape_.dtype));
}

LayerKV KVCache::layer(int layer) const {
  LayerKV view;
  view.length = length(layer);
  view.keys = head_ptr(keys_, layer, 0, 0);
  view.values = head_ptr(values_, layer, 0, 0);
  view.dtype = shape_.dtype;
  view.n_kv_heads = shape_.n_kv_heads;
  view.head_dim = shape_.head_dim;
  view.capacity = shape_.capacity;
  return view;
}

void KVCache::append(int layer, const float* k, const float* v, int64_t n) {
  const int64_t begin = length(layer);
  SAAP_CHECK_FMT(n >= 0, InvalidArgument, "cannot append %lld positions", (long long)n);
  SAAP_CHECK_FMT(begin + n <= shape_.capacity, InvalidArgument,
                 "appending %lld positions to layer %d holding %lld exceeds the cache capacity of %lld", (long long)n,
                 layer, (long long)begin, (long long)shape_.capacity);
  const int H = shape_.n_kv_heads, D = shape_.head_dim;
  for (int64_t t = 0; t < n; ++t)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < D; ++i) {
        const int64_t idx = (t * H + h) * D + i;
        if (!std::isfinite(k[idx]) || !std::isfinite(v[idx]))
          SAAP_THROW_FMT(NonFinite, "non-finite %s at layer %d, position %lld, KV head %d, dim %d",
                         std::isfinite(k[idx]) ? "value" : "key", layer, (long long)(begin + t), h, i);
      }
  for (int64_t t = 0; t < n; ++t)
    for (int h = 0; h < H; ++h) {
      convert(k + (t * H + h) * D, DType::F32, head_ptr(keys_, layer, h, begin + t), shape_.dtype, D);
      convert(v + (t * H + h) * D, DType::F32, head_ptr(values_, layer, h, begin + t), shape_.dtype, D);
    }
  lengths_[layer] = begin + n;
}

void KVCache::clear() { lengths_.assign(shape_.n_layers, 0); }

void KVCache::truncate(int64_t length) {
  SAAP_CHECK_FMT(length >= 0, InvalidArgument, "truncate to %lld", (long long)length);
  for (auto& l : lengths_)
    if (l > length) l = length;
}

}  // namespace saap
