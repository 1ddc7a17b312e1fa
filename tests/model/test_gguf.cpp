// The GGUF reader against llama.cpp's own Python `gguf` package (scripts/reference_gguf.py): the
// real default model and freshly written random files of every quant type must give the same
// header, metadata, tensor table and dequantized values. Then hand-made and corrupted files,
// which must give saap::Error and nothing worse.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
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

// Parses a copy of the first `size` bytes held in a buffer of exactly that size, so a read past
// the end is a heap overflow that the sanitizer build reports. Returns the error kind, or -1.
// Any exception other than saap::Error propagates and fails the test.
int parse_and_dequantize(const std::vector<uint8_t>& bytes, size_t size) {
  const std::unique_ptr<uint8_t[]> copy(new uint8_t[size ? size : 1]);
  std::memcpy(copy.get(), bytes.data(), size);
  try {
    const GGUFFile f = GGUFFile::parse(copy.get(), size);
    for (const GGUFTensorInfo& t : f.tensors()) {
      try {
        dequantize_tensor(t);
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::Unsupported) throw;
      }
    }
    return -1;
  } catch (const Error& e) {
    return static_cast<int>(e.kind());
  }
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
  const std::string cmd = python_interpreter() + " " + SAAP_SOURCE_DIR +
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

// A synthetic file written with gguf-py, shared by the corruption tests.
struct SynthFile {
  TempDir dir;
  std::vector<uint8_t> bytes;
  uint64_t data_offset = 0;
  uint64_t data_end = 0;  // end of the last tensor's bytes; anything after is padding
  SynthFile() {
    run_reference("synth " + dir.path + " 7", dir.path);
    bytes = read_bytes(dir.path + "/synth.gguf");
    const GGUFFile f = GGUFFile::parse(bytes.data(), bytes.size());
    data_offset = f.data_offset();
    for (const GGUFTensorInfo& t : f.tensors())
      data_end = std::max<uint64_t>(data_end, data_offset + t.offset + t.n_bytes);
  }
};

TEST(GGUF, TruncatedFilesGiveErrors) {
  const SynthFile synth;
  std::vector<size_t> sizes;
  for (size_t n = 0; n <= synth.data_offset + 64; ++n) sizes.push_back(n);
  std::mt19937_64 rng(1);
  for (int k = 0; k < 300; ++k) sizes.push_back(synth.data_offset + rng() % (synth.bytes.size() - synth.data_offset));
  for (size_t n : sizes) {
    const int kind = parse_and_dequantize(synth.bytes, n);
    if (n < synth.data_end)
      ASSERT_EQ(kind, static_cast<int>(ErrorKind::BadFile)) << "truncated to " << n << " bytes";
    else
      ASSERT_EQ(kind, -1) << "truncated to " << n << " bytes (only padding cut)";
  }
}

TEST(GGUF, BitFlipsGiveErrorsOrValidFiles) {
  const SynthFile synth;
  std::mt19937_64 rng(2);
  int errors = 0;
  const int trials = 3000;
  for (int k = 0; k < trials; ++k) {
    std::vector<uint8_t> bytes = synth.bytes;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int j = 0; j < flips; ++j) {
      // Most flips land in the header, metadata and tensor infos, where they change the parse.
      const size_t region = rng() % 4 ? synth.data_offset : bytes.size();
      bytes[rng() % region] ^= static_cast<uint8_t>(1u << (rng() % 8));
    }
    const int kind = parse_and_dequantize(bytes, bytes.size());
    ASSERT_TRUE(kind == -1 || kind == static_cast<int>(ErrorKind::BadFile) ||
                kind == static_cast<int>(ErrorKind::Unsupported)) << "trial " << k << " kind " << kind;
    errors += kind != -1;
  }
  // Most header flips break something; if none did, the parser is not validating.
  EXPECT_GT(errors, trials / 10);
}

// Writes GGUF files by hand, so each field can be set to a value no writer would produce.
class Builder {
 public:
  Builder& u8(uint8_t v) { return raw(&v, 1); }
  Builder& u32(uint32_t v) { return raw(&v, 4); }
  Builder& u64(uint64_t v) { return raw(&v, 8); }
  Builder& str(const std::string& s) { return u64(s.size()).raw(s.data(), s.size()); }
  Builder& raw(const void* p, size_t n) {
    bytes.insert(bytes.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
    return *this;
  }
  Builder& pad(size_t align) {
    while (bytes.size() % align) bytes.push_back(0);
    return *this;
  }
  std::vector<uint8_t> bytes;
};

// A small valid file, each field of which a test may override.
struct Spec {
  std::string magic = "GGUF";
  uint32_t version = 3;
  int64_t n_tensors = -1, n_kv = -1;   // -1: the true counts
  uint64_t key_len = 0;                // 0: the true length of the first key
  uint32_t alignment_type = 4;         // UINT32
  uint32_t alignment = 32;
  std::vector<std::vector<uint8_t>> extra_kv;  // encoded key/value pairs appended as they are
  uint32_t n_dims = 0;                 // 0: dims.size()
  std::vector<uint64_t> dims = {32, 2};
  uint32_t type = 0;
  uint64_t offset = 0;
  bool duplicate_tensor = false;
  int64_t data_bytes = -1;             // -1: exactly the tensor's bytes
};

std::vector<uint8_t> make_file(const Spec& s) {
  Builder b;
  b.raw(s.magic.data(), 4).u32(s.version);
  const uint64_t n_tensors = s.duplicate_tensor ? 2 : 1;
  b.u64(s.n_tensors >= 0 ? s.n_tensors : n_tensors);
  b.u64(s.n_kv >= 0 ? s.n_kv : 2 + s.extra_kv.size());
  const std::string key = "general.alignment";
  b.u64(s.key_len ? s.key_len : key.size()).raw(key.data(), key.size());
  if (s.alignment_type == 8)
    b.u32(8).str("32");
  else
    b.u32(s.alignment_type).u32(s.alignment);
  b.str("general.name").u32(8).str("tiny");
  for (const auto& kv : s.extra_kv) b.raw(kv.data(), kv.size());
  for (uint64_t t = 0; t < n_tensors; ++t) {
    b.str("w").u32(s.n_dims ? s.n_dims : s.dims.size());
    for (uint64_t d : s.dims) b.u64(d);
    b.u32(s.type).u64(s.offset);
  }
  b.pad(s.alignment && (s.alignment & (s.alignment - 1)) == 0 ? s.alignment : 32);
  int64_t n = s.data_bytes;
  if (n < 0) n = 4 * 64;
  for (int64_t k = 0; k < n; ++k) b.u8(static_cast<uint8_t>(k));
  return b.bytes;
}

std::vector<uint8_t> kv(const std::string& key, std::function<void(Builder&)> value) {
  Builder b;
  b.str(key);
  value(b);
  return b.bytes;
}

void expect_error(const Spec& spec, ErrorKind kind, const std::string& needle) {
  const std::vector<uint8_t> bytes = make_file(spec);
  try {
    GGUFFile::parse(bytes.data(), bytes.size());
    ADD_FAILURE() << "no error; expected one containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<int>(e.kind()), static_cast<int>(kind)) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "'" << e.what() << "' lacks '" << needle << "'";
  }
}

TEST(GGUF, HandMadeFileParses) {
  const std::vector<uint8_t> bytes = make_file(Spec{});
  const GGUFFile f = GGUFFile::parse(bytes.data(), bytes.size());
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_int("general.alignment"), 32);
  EXPECT_EQ(f.get_float("general.alignment"), 32.0);
  EXPECT_EQ(f.get_string("general.name"), "tiny");
  EXPECT_EQ(f.get_int("absent", 7), 7);
  EXPECT_EQ(f.get_float("absent", 0.5), 0.5);
  EXPECT_THROW(f.get_int("general.name"), Error);
  EXPECT_THROW(f.get_string("general.alignment"), Error);
  EXPECT_THROW(f.get("absent"), Error);
  EXPECT_THROW(f.tensor("absent"), Error);
  const GGUFTensorInfo& w = f.tensor("w");
  EXPECT_EQ(w.shape, (std::vector<int64_t>{32, 2}));
  EXPECT_EQ(w.rows(), 2);
  const std::vector<float> values = dequantize_tensor(w);
  ASSERT_EQ(values.size(), 64u);
  for (int k = 0; k < 64; ++k) {
    float want;
    const uint8_t b[4] = {uint8_t(4 * k), uint8_t(4 * k + 1), uint8_t(4 * k + 2), uint8_t(4 * k + 3)};
    std::memcpy(&want, b, 4);
    ASSERT_EQ(std::memcmp(&values[k], &want, 4), 0) << k;
  }
}

TEST(GGUF, HandMadeCorruptionsNameFieldAndOffset) {
  using K = ErrorKind;
  { Spec s; s.magic = "GGML"; expect_error(s, K::BadFile, "magic at offset 0"); }
  { Spec s; s.version = 1; expect_error(s, K::Unsupported, "version 1 at offset 4"); }
  { Spec s; s.version = 0x03000000; expect_error(s, K::Unsupported, "big-endian"); }
  { Spec s; s.n_tensors = int64_t(1) << 60; expect_error(s, K::BadFile, "tensor count 1152921504606846976 at offset 8"); }
  { Spec s; s.n_kv = int64_t(1) << 60; expect_error(s, K::BadFile, "metadata count 1152921504606846976 at offset 16"); }
  { Spec s; s.key_len = uint64_t(1) << 62; expect_error(s, K::BadFile, "string length 4611686018427387904 at offset 24"); }
  { Spec s; s.n_dims = 100; expect_error(s, K::BadFile, "dims count 100"); }
  { Spec s; s.dims = {}; s.n_dims = 0; expect_error(s, K::BadFile, "dims count 0"); }
  { Spec s; s.type = 999; expect_error(s, K::BadFile, "type 999"); }
  { Spec s; s.type = 9; expect_error(s, K::Unsupported, "Q8_1"); }
  { Spec s; s.offset = 4; expect_error(s, K::BadFile, "data offset 4 (field at offset"); }
  { Spec s; s.offset = 1 << 20; expect_error(s, K::BadFile, "exceeds the file size"); }
  { Spec s; s.offset = ~uint64_t(0) - 31; expect_error(s, K::BadFile, "exceeds the file size"); }
  { Spec s; s.data_bytes = 4 * 64 - 1; expect_error(s, K::BadFile, "'w': data offset 0 (field at offset"); }
  { Spec s; s.dims = {32, 0}; expect_error(s, K::BadFile, "dim 1 = 0"); }
  { Spec s; s.dims = {uint64_t(1) << 32, uint64_t(1) << 32}; expect_error(s, K::BadFile, "overflows int64"); }
  { Spec s; s.dims = {uint64_t(1) << 31, uint64_t(1) << 31}; expect_error(s, K::BadFile, "byte size"); }
  { Spec s; s.dims = {~uint64_t(0)}; expect_error(s, K::BadFile, "is not positive"); }
  { Spec s; s.type = 2; s.dims = {16, 2}; expect_error(s, K::BadFile, "not a multiple of the Q4_0 block size 32"); }
  { Spec s; s.duplicate_tensor = true; expect_error(s, K::BadFile, "tensor 'w' (info at offset"); }
  { Spec s; s.alignment = 0; expect_error(s, K::BadFile, "'general.alignment' = 0"); }
  { Spec s; s.alignment = 48; expect_error(s, K::BadFile, "power of two"); }
  { Spec s; s.alignment_type = 8; expect_error(s, K::BadFile, "expected UINT32"); }
  { Spec s; s.alignment_type = 13; expect_error(s, K::BadFile, "value type 13 at offset 49"); }
  {
    Spec s;
    s.extra_kv.push_back(kv("nested", [](Builder& b) { b.u32(9).u32(9).u64(1); }));
    expect_error(s, K::Unsupported, "array of arrays");
  }
  {
    Spec s;
    s.extra_kv.push_back(kv("flag", [](Builder& b) { b.u32(7).u8(2); }));
    expect_error(s, K::BadFile, "'flag': bool at offset");
  }
  {
    Spec s;
    s.extra_kv.push_back(kv("big", [](Builder& b) { b.u32(9).u32(4).u64(uint64_t(1) << 61); }));
    expect_error(s, K::BadFile, "array length 2305843009213693952");
  }
  {
    Spec s;
    s.extra_kv.push_back(kv("strs", [](Builder& b) { b.u32(9).u32(8).u64(2).str("a").u64(uint64_t(1) << 62); }));
    expect_error(s, K::BadFile, "string length 4611686018427387904");
  }
  {
    Spec s;
    s.extra_kv.push_back(kv("general.name", [](Builder& b) { b.u32(8).str("again"); }));
    expect_error(s, K::BadFile, "'general.name' at offset");
  }
  const std::vector<uint8_t> empty;
  EXPECT_THROW(GGUFFile::parse(empty.data(), 0), Error);
}

TEST(GGUF, LargeUint64IsKeptButNotReadAsInt) {
  Spec s;
  s.extra_kv.push_back(kv("huge", [](Builder& b) { b.u32(10).u64(~uint64_t(0) - 1); }));
  const std::vector<uint8_t> bytes = make_file(s);
  const GGUFFile f = GGUFFile::parse(bytes.data(), bytes.size());
  EXPECT_EQ(static_cast<uint64_t>(f.get("huge").i), ~uint64_t(0) - 1);
  EXPECT_THROW(f.get_int("huge"), Error);
}

TEST(GGUF, MissingFileIsNotFound) {
  try {
    GGUFFile::open("/nonexistent/model.gguf");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::NotFound);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/model.gguf"), std::string::npos);
  }
}

TEST(GGUF, DequantizeRefusesPartialBlocksAndUnknownTypes) {
  std::vector<uint8_t> block(34, 0);
  std::vector<float> out(32);
  EXPECT_THROW(dequantize(GGMLType::Q8_0, block.data(), out.data(), 31), Error);
  try {
    dequantize(static_cast<GGMLType>(20), block.data(), out.data(), 32);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Unsupported);
    EXPECT_NE(std::string(e.what()).find("IQ4_NL"), std::string::npos) << e.what();
  }
}

TEST(GGUF, TypeLayoutsMatchGgufPy) {
  TempDir dir;
  const json ref = run_reference("synth " + dir.path + " 3", dir.path);
  int known = 0;
  for (uint32_t type = 0; type < 64; ++type) {
    int64_t elems;
    size_t bytes;
    if (!ggml_type_layout(type, &elems, &bytes)) continue;
    ++known;
    const json& want = ref["quant_sizes"][std::to_string(type)];
    ASSERT_FALSE(want.is_null()) << ggml_type_name(static_cast<GGMLType>(type));
    EXPECT_EQ(elems, want[0].get<int64_t>()) << ggml_type_name(static_cast<GGMLType>(type));
    EXPECT_EQ(bytes, want[1].get<size_t>()) << ggml_type_name(static_cast<GGMLType>(type));
  }
  EXPECT_GE(known, 30);
}

}  // namespace
}  // namespace saap
