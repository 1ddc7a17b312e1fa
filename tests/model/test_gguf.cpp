// The GGUF reader against llama.cpp's own Python `gguf` package (scripts/reference_gguf.py): the
// real default model and freshly written random files of every quant type must give the same
// header, metadata, tensor table and dequantized values. Then hand-made and corrupted files,
// which must give saap::Error and nothing worse.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/model/gguf.h"

namespace saap {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

std::string hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "saap_gguf_XXXXXX").string();
    path = mkdtemp(tmpl.data());
  }
  ~TempDir() { fs::remove_all(path); }
};

// Runs scripts/reference_gguf.py with the given arguments and reads the dump it left in dir.
json run_reference(const std::string& args, const std::string& dir) {
  const std::string cmd = std::string(SAAP_PYTHON) + " " + SAAP_SOURCE_DIR +
                          "/scripts/reference_gguf.py " + args;
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(dir + "/reference.json");
  return json::parse(in);
}

const char* value_type_name(GGUFValueType t) {
  static const char* names[] = {"UINT8", "INT8",   "UINT16", "INT16",  "UINT32", "INT32", "FLOAT32",
                                "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64",  "FLOAT64"};
  return names[static_cast<int>(t)];
}

void expect_int(GGUFValueType t, int64_t got, const json& want, const std::string& key) {
  if (t == GGUFValueType::BOOL)
    EXPECT_EQ(got, want.get<bool>() ? 1 : 0) << key;
  else if (t == GGUFValueType::UINT64)
    EXPECT_EQ(static_cast<uint64_t>(got), want.get<uint64_t>()) << key;
  else
    EXPECT_EQ(got, want.get<int64_t>()) << key;
}

void expect_metadata_equal(const GGUFFile& f, const json& ref) {
  ASSERT_EQ(f.metadata().size(), ref["metadata"].size());
  for (const auto& [key, want] : ref["metadata"].items()) {
    SCOPED_TRACE(key);
    ASSERT_TRUE(f.has(key));
    const GGUFValue& v = f.get(key);
    ASSERT_EQ(value_type_name(v.type), want["type"].get<std::string>());
    const json& value = want["value"];
    switch (v.type) {
      case GGUFValueType::STRING: EXPECT_EQ(hex(v.s), value.get<std::string>()); break;
      case GGUFValueType::FLOAT32:
      case GGUFValueType::FLOAT64: EXPECT_EQ(v.f, value.get<double>()); break;
      case GGUFValueType::ARRAY: {
        ASSERT_EQ(value_type_name(v.array_type), want["array_type"].get<std::string>());
        if (v.array_type == GGUFValueType::STRING) {
          ASSERT_EQ(v.strings.size(), value.size());
          for (size_t k = 0; k < value.size(); ++k)
            ASSERT_EQ(hex(v.strings[k]), value[k].get<std::string>()) << "element " << k;
        } else if (v.array_type == GGUFValueType::FLOAT32 ||
                   v.array_type == GGUFValueType::FLOAT64) {
          ASSERT_EQ(v.floats.size(), value.size());
          for (size_t k = 0; k < value.size(); ++k)
            ASSERT_EQ(v.floats[k], value[k].get<double>()) << "element " << k;
        } else {
          ASSERT_EQ(v.ints.size(), value.size());
          for (size_t k = 0; k < value.size(); ++k) expect_int(v.array_type, v.ints[k], value[k], key);
        }
        break;
      }
      default: expect_int(v.type, v.i, value, key);
    }
  }
}

void expect_tensors_equal(const GGUFFile& f, const json& ref, const uint8_t* base) {
  ASSERT_EQ(f.tensors().size(), ref["tensors"].size());
  for (size_t k = 0; k < f.tensors().size(); ++k) {
    const GGUFTensorInfo& t = f.tensors()[k];
    const json& want = ref["tensors"][k];
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, want["name"].get<std::string>());
    EXPECT_EQ(t.shape, want["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(static_cast<uint32_t>(t.type), want["type"].get<uint32_t>());
    EXPECT_EQ(f.data_offset() + t.offset, want["file_offset"].get<uint64_t>());
    EXPECT_EQ(t.n_bytes, want["n_bytes"].get<uint64_t>());
    EXPECT_EQ(t.data, base + want["file_offset"].get<uint64_t>());
  }
}

// Quantized values may differ from numpy by one rounding where the compiler fuses a multiply-add
// (-march=native); that is far below one quantization step, which is what a decoding bug shifts.
void expect_dequantized_equal(const GGUFFile& f, const json& ref, const std::string& dir) {
  ASSERT_FALSE(ref["dumped"].empty());
  for (const json& d : ref["dumped"]) {
    const GGUFTensorInfo& t = f.tensor(d["name"].get<std::string>());
    SCOPED_TRACE(t.name + " " + ggml_type_name(t.type));
    if (!ggml_can_dequantize(t.type)) {
      EXPECT_THROW(dequantize_tensor(t), Error);
      continue;
    }
    const int64_t n = d["n"].get<int64_t>();
    std::vector<float> want(n);
    std::ifstream in(dir + "/" + d["file"].get<std::string>(), std::ios::binary);
    in.read(reinterpret_cast<char*>(want.data()), n * sizeof(float));
    ASSERT_TRUE(in.good());
    std::vector<float> got(n);
    if (n == t.numel()) {
      got = dequantize_tensor(t);
    } else {
      dequantize(t.type, t.data, got.data(), n);
    }
    float max_abs = 0;
    for (float w : want) max_abs = std::max(max_abs, std::fabs(w));
    const bool exact = t.type == GGMLType::F32 || t.type == GGMLType::F16 || t.type == GGMLType::BF16;
    int64_t bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float tol = exact ? 0.f : 1e-6f * (std::fabs(want[i]) + max_abs);
      if (!(std::fabs(got[i] - want[i]) <= tol) && bad++ < 5)
        ADD_FAILURE() << "element " << i << ": got " << got[i] << ", gguf-py " << want[i];
    }
    EXPECT_EQ(bad, 0);
  }
}

void expect_matches_reference(const std::string& path, const json& ref, const std::string& dir) {
  const GGUFFile f = GGUFFile::open(path);
  EXPECT_EQ(f.version(), ref["version"].get<uint32_t>());
  EXPECT_EQ(f.alignment(), ref["alignment"].get<size_t>());
  EXPECT_EQ(f.data_offset(), ref["data_offset"].get<uint64_t>());
  expect_metadata_equal(f, ref);
  const uint8_t* base = f.tensors().empty() ? nullptr : f.tensors()[0].data - f.tensors()[0].offset -
                                                            f.data_offset();
  expect_tensors_equal(f, ref, base);
  expect_dequantized_equal(f, ref, dir);
}

TEST(GGUF, DefaultModelMatchesGgufPy) {
  const std::string model = default_model_path();
  TempDir dir;
  const json ref = run_reference("model " + model + " " + dir.path, dir.path);
  expect_matches_reference(model, ref, dir.path);
}

TEST(GGUF, RandomFilesOfEveryTypeMatchGgufPy) {
  std::random_device rd;
  for (int k = 0; k < 2; ++k) {
    const unsigned seed = rd();
    SCOPED_TRACE("seed " + std::to_string(seed));
    TempDir dir;
    const json ref = run_reference("synth " + dir.path + " " + std::to_string(seed), dir.path);
    expect_matches_reference(dir.path + "/synth.gguf", ref, dir.path);
  }
}

}  // namespace
}  // namespace saap
