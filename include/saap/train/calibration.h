// Activations captured on calibration text (never the evaluation text), the input of every
// trainer. For W windows of L consecutive tokens, each layer keeps all pre-RoPE keys (so that a
// query's true attention over its whole causal prefix can be recomputed: the label Saap's
// classifier learns) and a sample of pre-RoPE queries. Post-RoPE vectors are derived by applying
// the model's RoPE at the stored position, so the file holds no redundant copy.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "saap/core/rope.h"
#include "saap/core/safetensors.h"

namespace saap {

struct CalibrationLayer {
  std::vector<float> keys_pre;        // [windows][window_len][n_kv_heads][head_dim]
  std::vector<float> queries_pre;     // [n_queries][n_heads][head_dim]
  std::vector<int32_t> query_window;  // [n_queries] which window
  std::vector<int32_t> query_pos;     // [n_queries] position inside the window (its prefix is [0, pos])
};

struct CalibrationSet {
  std::string model_identity;
  int n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int windows = 0;
  int window_len = 0;
  RopeConfig rope;
  std::vector<CalibrationLayer> layers;

  int64_t n_queries(int layer) const { return int64_t(layers.at(layer).query_pos.size()); }
  const float* key_pre(int layer, int window, int pos, int kv_head) const;
  // Writes/reads a safetensors file (method "calibration"); load validates every shape.
  void save(const std::string& path) const;
  static CalibrationSet load(const std::string& path);
  // As load, and refuses (BadFile naming the field) a file captured on another model.
  static CalibrationSet load(const std::string& path, const ArtifactIdentity& expected);
  // What this set was captured on, as artifacts trained from it record (method "calibration").
  ArtifactIdentity identity() const;
};

}  // namespace saap
