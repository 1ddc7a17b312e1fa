// The one interface every attention method implements (FAISS-style: a few verbs, parameters in
// plain structs). An AttentionMethod serves one layer's KV cache:
//   place  - positions were just cached: update the method's index (partition lists, PCA keys, ...)
//   select - choose the positions one query reads, within its causal prefix
//   attend - exact attention over the selection, reporting what was read
// The KV cache itself is owned by the caller (the model runner or a test).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "saap/core/kv_cache.h"

namespace saap {

// The queries of one position, all query heads, [n_q_heads][head_dim].
struct QueryView {
  const float* q = nullptr;      // post-RoPE: what attention scores use
  const float* q_pre = nullptr;  // pre-RoPE: what position-free routing uses
  int n_q_heads = 0;
  int64_t pos = 0;               // the query's position; its causal prefix is [0, pos]
  int64_t n_ctx() const { return pos + 1; }
};

// What one query reads. Either everything in the causal prefix (dense), or per query head an
// explicit list of positions. Heads of one KV group may differ; bytes count each position once
// per KV head (the group shares a read).
struct Selection {
  bool all = false;
  std::vector<std::vector<int32_t>> positions;  // [n_q_heads] lists, each position < n_ctx
  int64_t index_bytes = 0;                      // index data read to decide (scores, centroids, ...)
  void clear(int n_q_heads) {
    all = false;
    positions.assign(size_t(n_q_heads), {});
    index_bytes = 0;
  }
};

// Bytes read, summed over queries (and layers when aggregated). The lookup fraction is what a
// method read over what dense attention would have read for the same queries.
struct LookupStats {
  int64_t queries = 0;
  int64_t kv_bytes = 0;
  int64_t index_bytes = 0;
  int64_t dense_bytes = 0;
  double fraction() const { return dense_bytes ? double(kv_bytes + index_bytes) / double(dense_bytes) : 0.0; }
  double kv_fraction() const { return dense_bytes ? double(kv_bytes) / double(dense_bytes) : 0.0; }
  LookupStats& operator+=(const LookupStats& o) {
    queries += o.queries;
    kv_bytes += o.kv_bytes;
    index_bytes += o.index_bytes;
    dense_bytes += o.dense_bytes;
    return *this;
  }
};

struct LayerShape {
  int layer = 0;
  int n_q_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int64_t max_context = 0;
};

class AttentionMethod {
 public:
  explicit AttentionMethod(const LayerShape& shape);
  virtual ~AttentionMethod() = default;
  virtual std::string name() const = 0;
  const LayerShape& shape() const { return shape_; }

  // A new sequence starts: forget per-sequence state (the caller clears the cache).
  virtual void reset() {}
  // Positions [begin, end) of kv were just cached; k_pre holds their pre-RoPE keys
  // [end - begin][n_kv_heads][head_dim].
  virtual void place(const LayerKV& kv, int64_t begin, int64_t end, const float* k_pre);
  virtual void select(const LayerKV& kv, const QueryView& q, Selection& sel) = 0;
  // Exact attention over sel into out [n_q_heads][head_dim]; adds what was read to stats.
  virtual void attend(const LayerKV& kv, const QueryView& q, const Selection& sel, float* out, LookupStats& stats);

  // select then attend, for one query.
  void forward(const LayerKV& kv, const QueryView& q, float* out, LookupStats& stats);

  // Whether a selection depends on the queries before it (H2O's accumulated attention), so the
  // method must select and attend at every position, in order. The others depend only on the keys
  // placed, and may be asked at any position once its prefix is placed (decode_replay.h).
  virtual bool needs_every_query() const { return false; }

 protected:
  float scale() const;
  // Throws InvalidArgument unless kv has this layer's head shape and [begin, end) lies in the cache
  // without leaving a gap after the `placed` positions already placed.
  void check_place(const LayerKV& kv, int64_t begin, int64_t end, int64_t placed) const;
  LayerShape shape_;
  Selection scratch_;
};

// Builds the method for one layer; the model runner calls it once per layer.
using MethodFactory = std::function<std::unique_ptr<AttentionMethod>(const LayerShape&)>;

// Bytes a dense read of the prefix of `q` touches, and the bytes `sel` touches (union per KV head).
int64_t dense_bytes(const LayerKV& kv, int64_t n_ctx);
int64_t selection_kv_bytes(const LayerKV& kv, const QueryView& q, const Selection& sel);
// Throws InvalidArgument if sel does not fit q (head count, positions outside the causal prefix).
void check_selection(const QueryView& q, const Selection& sel);

}  // namespace saap
