// Loki on the GPU: keys stored rotated into a per-KV-head PCA basis so that the first r components
// of all tokens are contiguous; decode scores every token with those r components for each query
// head, keeps each head's own top k, and attends each head exactly over its kept tokens: the CPU
// method's rule (methods/loki.h), run by the oracle top-k's kernels (per_head_topk.cuh) on the
// low-rank scores. The KV group reads the union of its heads' selections, each K/V row once (the
// group's heads attend over the union list, each masked to its own selection).
//
// Storage per (sequence b, KV head h), rows [0, max_len):
//   k_low  [bh][max_len][r]        components 0 .. r-1 of the rotated keys (read by scoring)
//   k_rest [bh][max_len][D - r]    components r .. D-1 (read only for selected tokens)
//   v      [bh][max_len][D]        values, unrotated
// Scores q'.k' with q' = P^T q equal q.k exactly (P orthonormal), so attention needs no rotation
// back.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "saap/kernels/cuda/decode.h"

namespace saap {
struct LokiArtifact;      // methods/loki.h
struct ArtifactIdentity;  // core/safetensors.h
}  // namespace saap

namespace saap::cuda {

class LokiIndex {
 public:
  // The ranks the scoring kernel is instantiated for: every rank d_f = 1/8, 1/4, 1/2 gives at
  // head_dim 64 (SmolLM2: 8, 16, 32), 128 and 256 (Gemma-3: 32, 64, 128).
  static constexpr bool supported_rank(int r) { return r == 8 || r == 16 || r == 32 || r == 64 || r == 128; }
  // rank r: supported_rank(r) and < head_dim; max_len < 2^24.
  LokiIndex(const DecodeShape& shape, int64_t max_len, int rank);
  ~LokiIndex();

  // One layer's index from a trained artifact as `saap train loki` writes it (LokiArtifact::load),
  // FAISS style: the layer's bases, and the rank r = ceil(d_f * head_dim) the CPU method uses
  // (Unsupported unless supported_rank). `model` is the identity of the model served (n_layers,
  // n_heads, n_kv_heads, head_dim, model_identity); a mismatch throws BadFile naming the field.
  // As on the CPU, the basis applies to post-RoPE keys and queries whichever it was fitted on.
  static std::unique_ptr<LokiIndex> from_artifact(const LokiArtifact& artifact, const ArtifactIdentity& model,
                                                  int layer, int batch, DType kv_dtype, int64_t max_len, double d_f);
  static std::unique_ptr<LokiIndex> from_artifact(const std::string& path, const ArtifactIdentity& model, int layer,
                                                  int batch, DType kv_dtype, int64_t max_len, double d_f);
  LokiIndex(const LokiIndex&) = delete;
  LokiIndex& operator=(const LokiIndex&) = delete;

  // basis [n_kv_heads][D][D] fp32, row i column j = coordinate i of principal component j.
  void set_basis(const std::vector<float>& basis);
  // Prefill: raw keys and values, dense [batch][n_kv_heads][src_stride][D], h_lengths[b] tokens.
  void store(const void* k, const void* v, int64_t src_stride, const std::vector<int32_t>& h_lengths,
             cudaStream_t stream = 0);
  // Prefill of keys already in the PCA basis (e.g. rotated by the caller's GEMM): only splits them
  // into k_low / k_rest. Same layout and lengths as store().
  void store_rotated(const void* k_pca, const void* v, int64_t src_stride, const std::vector<int32_t>& h_lengths,
                     cudaStream_t stream = 0);
  // One new token per (b, h): k_new, v_new [batch][n_kv_heads][D] raw. No host synchronisation
  // (a CUDA graph may record it).
  void append(const void* k_new, const void* v_new, cudaStream_t stream = 0);
  // Rotates q [batch][n_q_heads][D], scores with the first r components per query head, keeps
  // k = rules::loki_keys(k_frac, seq_len) tokens per query head (ties to the lower position) and
  // counts the union over each KV group. k_frac in (0, 1], a double as on the CPU. No host
  // synchronisation (a CUDA graph may record it).
  void select(const float* q, double k_frac, cudaStream_t stream = 0);
  // Exact attention of each head over its own selection, read as the group's union (uses the
  // rotated queries and the union list of the last select()).
  void attend(float scale, float* out, SplitWorkspace& ws, cudaStream_t stream = 0);

  int rank() const { return rank_; }
  bool pre_rope() const { return pre_rope_; }  // what the basis was fitted on (from_artifact)
  int64_t max_len() const { return max_len_; }
  const DecodeShape& shape() const { return shape_; }
  // Device views for tests.
  const float* scores() const;      // [batch][n_q_heads][max_len]: each head's q'[:r].k'[:r]
  const int32_t* selected() const;  // [batch][n_q_heads][max_len]: first selected_count[row], ascending
  std::vector<int32_t> selected_count() const;   // [batch][n_q_heads]; synchronises
  const int32_t* selected_count_device() const;  // [batch][n_q_heads], the same counts on the device
  const int32_t* selected_tokens() const;        // [batch][n_kv_heads]: the group's union (K/V rows read)
  std::vector<int32_t> seq_len() const;         // synchronises
  const void* k_low() const;
  const void* k_rest() const;
  const float* q_rot() const;            // [batch][n_q_heads][D]

  struct Impl;

 private:
  DecodeShape shape_;
  int64_t max_len_;
  int rank_;
  double last_k_frac_ = 0.0;  // 0 until select()
  bool pre_rope_ = false;
  std::unique_ptr<Impl> impl_;
};

}  // namespace saap::cuda
