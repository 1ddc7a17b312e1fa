// The KV cache: per layer, per KV head, an append-only run of positions. Keys are stored
// post-RoPE (what attention reads); methods that route on pre-RoPE keys receive those at `place`.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "saap/core/dtype.h"

namespace saap {

// Read-only view of one layer: keys and values laid out [n_kv_heads][capacity][head_dim], so that
// one head's positions are contiguous.
struct LayerKV {
  const void* keys = nullptr;
  const void* values = nullptr;
  DType dtype = DType::F32;
  int n_kv_heads = 0;
  int head_dim = 0;
  int64_t capacity = 0;
  int64_t length = 0;  // positions cached so far

  template <class T>
  const T* key(int head, int64_t pos) const {
    return static_cast<const T*>(keys) + (int64_t(head) * capacity + pos) * head_dim;
  }
  template <class T>
  const T* value(int head, int64_t pos) const {
    return static_cast<const T*>(values) + (int64_t(head) * capacity + pos) * head_dim;
  }
  // One cached key as float32 (head_dim values), whatever the cache dtype.
  void key_to_float(int head, int64_t pos, float* out) const;
  // Bytes of K plus V for one position of one KV head.
  int64_t token_bytes() const { return 2 * int64_t(head_dim) * int64_t(dtype_size(dtype)); }
};

struct KVCacheShape {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int64_t capacity = 0;  // maximum positions per layer
  DType dtype = DType::F32;
};

class KVCache {
 public:
  explicit KVCache(const KVCacheShape& shape);

  const KVCacheShape& shape() const { return shape_; }
  int64_t length(int layer) const;
  LayerKV layer(int layer) const;

  // Appends n positions to `layer` from fp32 k and v laid out [n][n_kv_heads][head_dim]
  // (converted to the cache dtype). Non-finite values are refused with an error naming the
  // layer, position and head; the cache is left unchanged.
  void append(int layer, const float* k, const float* v, int64_t n);
  // Forgets every position of every layer (a new sequence); keeps the allocation.
  void clear();
  // Drops positions >= length in every layer (e.g. to re-run a prompt suffix).
  void truncate(int64_t length);

 private:
  void* head_ptr(const std::shared_ptr<void>& storage, int layer, int head, int64_t pos) const;
  KVCacheShape shape_;
  std::shared_ptr<void> keys_;
  std::shared_ptr<void> values_;
  std::vector<int64_t> lengths_;
};

}  // namespace saap
