// GGUF reader (format v2/v3, as written by llama.cpp's gguf-py). The file is memory-mapped;
// every count, string length, type, offset and size is validated against the file size before
// use, and errors (ErrorKind::BadFile) name the field and its byte offset.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace saap {

// ggml tensor types, numbered as in ggml.h.
enum class GGMLType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, BF16 = 30,
};
const char* ggml_type_name(GGMLType t);  // "Q4_K", or "type#N" for unknown numbers
// Elements per block and bytes per block; throws Unsupported for types saap cannot dequantize.
int64_t ggml_block_elems(GGMLType t);
size_t ggml_block_bytes(GGMLType t);
// The storage layout of any ggml type a GGUF file may hold (including the I-quants saap cannot
// dequantize), so files with such tensors still parse; false for numbers ggml does not define.
bool ggml_type_layout(uint32_t type, int64_t* block_elems, size_t* block_bytes);
// True when dequantize() handles the type.
bool ggml_can_dequantize(GGMLType t);

enum class GGUFValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

// A metadata value. Scalars are widened (integers and bools to int64, floats to double); arrays
// keep their element type and are held as one of the three vectors. UINT64 values above INT64_MAX
// keep their bit pattern (read them as uint64_t; get_int refuses them). Arrays of arrays are
// rejected (Unsupported), as llama.cpp does.
struct GGUFValue {
  GGUFValueType type = GGUFValueType::UINT8;
  GGUFValueType array_type = GGUFValueType::UINT8;  // when type == ARRAY
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::vector<int64_t> ints;        // integer/bool arrays
  std::vector<double> floats;       // float arrays
  std::vector<std::string> strings; // string arrays
};

struct GGUFTensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // ggml order: shape[0] is the fastest-varying (row length)
  GGMLType type = GGMLType::F32;
  uint64_t offset = 0;         // from the start of the data section
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;
  int64_t numel() const;
  int64_t rows() const { return shape.empty() ? 0 : numel() / shape[0]; }
};

class GGUFFile {
 public:
  // Maps and parses the file; throws NotFound / BadFile.
  static GGUFFile open(const std::string& path);
  // Parses a buffer the caller keeps alive (tests, fuzzing).
  static GGUFFile parse(const uint8_t* data, size_t size);

  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // file offset of the tensor data section
  const std::string& path() const { return path_; }
  const std::map<std::string, GGUFValue>& metadata() const { return metadata_; }
  const std::vector<GGUFTensorInfo>& tensors() const { return tensors_; }

  bool has(const std::string& key) const { return metadata_.count(key) != 0; }
  // Typed getters: BadFile naming the key when missing (without default) or of the wrong type.
  const GGUFValue& get(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_float(const std::string& key) const;  // accepts integer values too
  double get_float(const std::string& key, double fallback) const;
  const std::string& get_string(const std::string& key) const;
  const GGUFTensorInfo* find_tensor(const std::string& name) const;
  const GGUFTensorInfo& tensor(const std::string& name) const;  // BadFile naming the tensor if absent

 private:
  std::shared_ptr<void> mapping_;  // keeps the mmap alive
  std::string path_;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::map<std::string, GGUFValue> metadata_;
  std::vector<GGUFTensorInfo> tensors_;
};

// Dequantizes n elements (a multiple of the type's block size) of `type` at src into fp32.
void dequantize(GGMLType type, const void* src, float* dst, int64_t n);
// The whole tensor as fp32, shape[0] fastest; Unsupported names the tensor and type.
std::vector<float> dequantize_tensor(const GGUFTensorInfo& tensor);

}  // namespace saap
