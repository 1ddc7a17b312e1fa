#include "saap/core/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>

#include "saap/core/atomic_file.h"
#include "saap/core/error.h"

namespace saap {

namespace {

using json = nlohmann::json;

// The upstream safetensors reader refuses headers beyond 100 MB; so do we, before allocating.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

size_t element_size(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32") return 4;
  if (dtype == "I64") return 8;
  return 0;
}

// numel with an overflow guard: a hostile shape must not wrap around and pass the size check.
bool checked_numel(const std::vector<int64_t>& shape, int64_t& out) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) return false;
    n *= d;
  }
  out = n;
  return true;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

void add_tensor(std::map<std::string, SafeTensor>& tensors, const std::string& name, const std::string& dtype,
                const void* data, std::vector<int64_t> shape) {
  SAAP_CHECK_FMT(!name.empty() && name != "__metadata__", InvalidArgument, "tensor name '%s' is reserved or empty",
                 name.c_str());
  SAAP_CHECK_FMT(!tensors.count(name), InvalidArgument, "tensor '%s' added twice", name.c_str());
  int64_t n = 0;
  SAAP_CHECK_FMT(checked_numel(shape, n), InvalidArgument, "tensor '%s': invalid shape %s", name.c_str(),
                 shape_str(shape).c_str());
  SAAP_CHECK_FMT(n == 0 || data != nullptr, InvalidArgument, "tensor '%s': data is null for %lld elements",
                 name.c_str(), (long long)n);
  SafeTensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  const size_t bytes = size_t(n) * element_size(dtype);
  t.bytes.resize(bytes);
  if (bytes) std::memcpy(t.bytes.data(), data, bytes);
  tensors.emplace(name, std::move(t));
}

int64_t json_int(const json& v, const std::string& tensor, const char* field, const std::string& origin) {
  SAAP_CHECK_FMT(v.is_number_integer(), BadFile, "%s: tensor '%s': %s entry %s is not an integer", origin.c_str(),
                 tensor.c_str(), field, v.dump().c_str());
  if (v.is_number_unsigned()) {
    SAAP_CHECK_FMT(v.get<uint64_t>() <= uint64_t(std::numeric_limits<int64_t>::max()), BadFile,
                   "%s: tensor '%s': %s entry %s is out of range", origin.c_str(), tensor.c_str(), field,
                   v.dump().c_str());
  }
  const int64_t x = v.get<int64_t>();
  SAAP_CHECK_FMT(x >= 0, BadFile, "%s: tensor '%s': %s entry %lld is negative", origin.c_str(), tensor.c_str(), field,
                 (long long)x);
  return x;
}

}  // namespace

int64_t SafeTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const float* SafeTensor::f32() const {
  SAAP_CHECK_FMT(dtype == "F32", BadFile, "tensor has dtype %s, F32 expected", dtype.c_str());
  return reinterpret_cast<const float*>(bytes.data());
}

const int32_t* SafeTensor::i32() const {
  SAAP_CHECK_FMT(dtype == "I32", BadFile, "tensor has dtype %s, I32 expected", dtype.c_str());
  return reinterpret_cast<const int32_t*>(bytes.data());
}

void SafetensorsWriter::add_f32(const std::string& name, const float* data, std::vector<int64_t> shape) {
  add_tensor(tensors_, name, "F32", data, std::move(shape));
}

void SafetensorsWriter::add_i32(const std::string& name, const int32_t* data, std::vector<int64_t> shape) {
  add_tensor(tensors_, name, "I32", data, std::move(shape));
}

void SafetensorsWriter::write(const std::string& path, const json& saap_header) const {
  json header = json::object();
  header["__metadata__"] = {{"saap", saap_header.dump()}};
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors_) {
    header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  // The format recommends padding the header with spaces so the data starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(text.size()) >> (8 * i));

  AtomicFile out(path);
  out.write(len, 8);
  out.write(text);
  for (const auto& [name, t] : tensors_) out.write(t.bytes.data(), t.bytes.size());
  out.commit();
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  SAAP_CHECK_FMT(in.good(), NotFound, "cannot open safetensors file '%s'", path.c_str());
  const std::streamoff size = in.tellg();
  SAAP_CHECK_FMT(size >= 0, BadFile, "cannot size '%s'", path.c_str());
  std::vector<uint8_t> data(static_cast<size_t>(size));
  in.seekg(0);
  if (size > 0) in.read(reinterpret_cast<char*>(data.data()), size);
  SAAP_CHECK_FMT(in.good(), BadFile, "reading '%s' failed", path.c_str());
  return parse(data.data(), data.size(), path);
}

SafetensorsFile SafetensorsFile::parse(const uint8_t* data, size_t size, const std::string& origin) {
  const char* o = origin.c_str();
  SAAP_CHECK_FMT(size >= 8, BadFile, "%s: file of %zu bytes is shorter than the 8-byte header length", o, size);
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= uint64_t(data[i]) << (8 * i);
  SAAP_CHECK_FMT(header_len <= kMaxHeaderBytes, BadFile, "%s: header length %llu exceeds the %llu-byte limit", o,
                 (unsigned long long)header_len, (unsigned long long)kMaxHeaderBytes);
  SAAP_CHECK_FMT(header_len <= size - 8, BadFile, "%s: header length %llu exceeds the %zu bytes after it (truncated?)",
                 o, (unsigned long long)header_len, size - 8);
  const uint8_t* body = data + 8 + header_len;
  const uint64_t body_size = size - 8 - header_len;

  json header;
  try {
    header = json::parse(data + 8, data + 8 + header_len);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number like 1e3003
    SAAP_THROW_FMT(BadFile, "%s: header is not valid JSON: %s", o, e.what());
  }
  SAAP_CHECK_FMT(header.is_object(), BadFile, "%s: header is a JSON %s, an object expected", o, header.type_name());

  SafetensorsFile file;
  struct Span {
    uint64_t begin, end;
    std::string name;
  };
  std::vector<Span> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& entry = it.value();
    if (name == "__metadata__") {
      SAAP_CHECK_FMT(entry.is_object(), BadFile, "%s: __metadata__ is a JSON %s, an object expected", o,
                     entry.type_name());
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        SAAP_CHECK_FMT(m.value().is_string(), BadFile, "%s: __metadata__['%s'] is not a string", o, m.key().c_str());
      }
      if (entry.contains("saap")) {
        try {
          file.saap_header_ = json::parse(entry["saap"].get<std::string>());
        } catch (const json::exception& e) {
          SAAP_THROW_FMT(BadFile, "%s: __metadata__['saap'] is not valid JSON: %s", o, e.what());
        }
      }
      continue;
    }
    const char* n = name.c_str();
    SAAP_CHECK_FMT(entry.is_object(), BadFile, "%s: tensor '%s': entry is not an object", o, n);
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      SAAP_CHECK_FMT(entry.contains(field), BadFile, "%s: tensor '%s': field '%s' missing", o, n, field);
    }
    SAAP_CHECK_FMT(entry["dtype"].is_string(), BadFile, "%s: tensor '%s': dtype is not a string", o, n);
    SafeTensor t;
    t.dtype = entry["dtype"].get<std::string>();
    const size_t esize = element_size(t.dtype);
    SAAP_CHECK_FMT(esize != 0, BadFile, "%s: tensor '%s': dtype '%s' unsupported (F32, I32, I64 expected)", o, n,
                   t.dtype.c_str());
    SAAP_CHECK_FMT(entry["shape"].is_array(), BadFile, "%s: tensor '%s': shape is not an array", o, n);
    for (const json& d : entry["shape"]) t.shape.push_back(json_int(d, name, "shape", origin));
    const json& offs = entry["data_offsets"];
    SAAP_CHECK_FMT(offs.is_array() && offs.size() == 2, BadFile,
                   "%s: tensor '%s': data_offsets %s is not a [begin, end] pair", o, n, offs.dump().c_str());
    const uint64_t begin = uint64_t(json_int(offs[0], name, "data_offsets", origin));
    const uint64_t end = uint64_t(json_int(offs[1], name, "data_offsets", origin));
    SAAP_CHECK_FMT(begin <= end, BadFile, "%s: tensor '%s': data_offsets [%llu, %llu] are reversed", o, n,
                   (unsigned long long)begin, (unsigned long long)end);
    SAAP_CHECK_FMT(end <= body_size, BadFile,
                   "%s: tensor '%s': data_offsets end %llu is beyond the %llu data bytes (truncated?)", o, n,
                   (unsigned long long)end, (unsigned long long)body_size);
    int64_t numel = 0;
    SAAP_CHECK_FMT(checked_numel(t.shape, numel) && uint64_t(numel) <= body_size / esize, BadFile,
                   "%s: tensor '%s': shape %s is too large for the file", o, n, shape_str(t.shape).c_str());
    SAAP_CHECK_FMT(uint64_t(numel) * esize == end - begin, BadFile,
                   "%s: tensor '%s': shape %s of %s needs %llu bytes, data_offsets span %llu", o, n,
                   shape_str(t.shape).c_str(), t.dtype.c_str(), (unsigned long long)(uint64_t(numel) * esize),
                   (unsigned long long)(end - begin));
    t.bytes.assign(body + begin, body + end);
    spans.push_back({begin, end, name});
    file.tensors_.emplace(name, std::move(t));
  }
  // The format requires the tensors to tile the data buffer exactly: no overlap, no hole.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t at = 0;
  for (const Span& s : spans) {
    SAAP_CHECK_FMT(s.begin >= at, BadFile, "%s: tensor '%s': data_offsets begin %llu overlaps the previous tensor (ends at %llu)",
                   o, s.name.c_str(), (unsigned long long)s.begin, (unsigned long long)at);
    SAAP_CHECK_FMT(s.begin == at, BadFile, "%s: tensor '%s': data_offsets begin %llu leaves a hole after byte %llu", o,
                   s.name.c_str(), (unsigned long long)s.begin, (unsigned long long)at);
    at = s.end;
  }
  SAAP_CHECK_FMT(at == body_size, BadFile, "%s: tensors cover %llu data bytes but the file holds %llu", o,
                 (unsigned long long)at, (unsigned long long)body_size);
  return file;
}

const SafeTensor& SafetensorsFile::tensor(const std::string& name, const std::vector<int64_t>& expected_shape) const {
  auto it = tensors_.find(name);
  SAAP_CHECK_FMT(it != tensors_.end(), BadFile, "tensor '%s' is missing from the artifact", name.c_str());
  SAAP_CHECK_FMT(expected_shape.empty() || it->second.shape == expected_shape, BadFile,
                 "tensor '%s' has shape %s, %s expected", name.c_str(), shape_str(it->second.shape).c_str(),
                 shape_str(expected_shape).c_str());
  return it->second;
}

nlohmann::json to_json(const ArtifactIdentity& id) {
  return {{"method", id.method},          {"format_version", id.format_version},
          {"model_identity", id.model_identity}, {"n_layers", id.n_layers},
          {"n_heads", id.n_heads},        {"n_kv_heads", id.n_kv_heads},
          {"head_dim", id.head_dim}};
}

void check_artifact(const nlohmann::json& header, const ArtifactIdentity& expected, const std::string& path) {
  const char* p = path.c_str();
  SAAP_CHECK_FMT(header.is_object(), BadFile, "%s: no saap header (is it a saap artifact?)", p);
  const json want = to_json(expected);
  // Method first: a wrong method explains every other difference.
  for (const char* field : {"method", "format_version", "model_identity", "n_layers", "n_heads", "n_kv_heads", "head_dim"}) {
    SAAP_CHECK_FMT(header.contains(field), BadFile, "%s: header field '%s' is missing", p, field);
    const json& got = header[field];
    SAAP_CHECK_FMT(got == want[field], BadFile, "%s: %s is %s in the artifact but %s expected (%s)", p, field,
                   got.dump().c_str(), want[field].dump().c_str(),
                   std::strcmp(field, "model_identity") == 0 || std::strncmp(field, "n_", 2) == 0 ||
                           std::strcmp(field, "head_dim") == 0
                       ? "trained for another model"
                       : std::strcmp(field, "method") == 0 ? "artifact of another method" : "format version differs");
  }
}

}  // namespace saap
