// Index artifacts (PCA bases, centroids, classifier weights) in the safetensors format, readable
// from PyTorch and NumPy: 8-byte little-endian header length, a JSON header mapping tensor names
// to {dtype, shape, data_offsets}, an "__metadata__" object of strings, then the raw data.
// saap writes its own header (method, parameters, model identity, format version) as one JSON
// string under __metadata__["saap"]. Every offset and shape is validated on load (BadFile).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace saap {

struct SafeTensor {
  std::string dtype;  // "F32" | "I32" | "I64"
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  int64_t numel() const;
  const float* f32() const;    // throws BadFile naming the dtype when it is not F32
  const int32_t* i32() const;
};

class SafetensorsWriter {
 public:
  void add_f32(const std::string& name, const float* data, std::vector<int64_t> shape);
  void add_i32(const std::string& name, const int32_t* data, std::vector<int64_t> shape);
  // Writes atomically (temp file + rename), so a failed write loses nothing already there.
  void write(const std::string& path, const nlohmann::json& saap_header) const;

 private:
  std::map<std::string, SafeTensor> tensors_;
};

class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);
  static SafetensorsFile parse(const uint8_t* data, size_t size, const std::string& origin);
  const nlohmann::json& header() const { return saap_header_; }  // the saap JSON header
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  // BadFile naming the tensor when absent or when its shape differs from `expected_shape`
  // (an empty expected_shape accepts any shape).
  const SafeTensor& tensor(const std::string& name, const std::vector<int64_t>& expected_shape = {}) const;
  const std::map<std::string, SafeTensor>& tensors() const { return tensors_; }

 private:
  nlohmann::json saap_header_;
  std::map<std::string, SafeTensor> tensors_;
};

// The header fields every artifact carries, and the check that it fits the model it is used with.
struct ArtifactIdentity {
  std::string method;          // "loki" | "saap" | "kmeans"
  int format_version = 1;
  std::string model_identity;  // LlamaModel::identity()
  int n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
};
nlohmann::json to_json(const ArtifactIdentity& id);
// Throws BadFile saying which field differs (method, version, model, head count, ...).
void check_artifact(const nlohmann::json& header, const ArtifactIdentity& expected, const std::string& path);

}  // namespace saap
