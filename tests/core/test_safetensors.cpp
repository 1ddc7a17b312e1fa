// Safetensors artifacts: round trip, interchange with an independent NumPy reader/writer of the
// format, and refusal of truncated, corrupted and mismatched files with the offending field named.
#include "saap/core/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sys/resource.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "saap/core/error.h"
#include "saap/core/paths.h"

namespace saap {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

std::string temp_path(const std::string& stem) {
  return ::testing::TempDir() + "saap_st_" + stem + "_" + std::to_string(::getpid()) + ".safetensors";
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

std::string run_python(const std::string& script) {
  const std::string script_path = ::testing::TempDir() + "saap_st_" + std::to_string(::getpid()) + ".py";
  std::ofstream(script_path) << script;
  FILE* pipe = ::popen((python_interpreter() + " " + script_path + " 2>&1").c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  EXPECT_EQ(::pclose(pipe), 0) << out;
  std::remove(script_path.c_str());
  return out;
}

ArtifactIdentity identity() {
  ArtifactIdentity id;
  id.method = "loki";
  id.model_identity = "smollm2-135m:abc123";
  id.n_layers = 30;
  id.n_heads = 9;
  id.n_kv_heads = 3;
  id.head_dim = 64;
  return id;
}

struct Sample {
  std::vector<float> a;
  std::vector<int32_t> b;
};

Sample write_sample(const std::string& path, json header = to_json(identity())) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  Sample s;
  for (int i = 0; i < 3 * 5; ++i) s.a.push_back(nd(rng));
  for (int i = 0; i < 7; ++i) s.b.push_back(int32_t(rng() % (1u << 31)) - int32_t(1 << 30));
  SafetensorsWriter w;
  w.add_f32("basis", s.a.data(), {3, 5});
  w.add_i32("counts", s.b.data(), {7});
  w.write(path, header);
  return s;
}

// Builds a file by hand from a header JSON and a data blob, as a hostile or buggy writer would.
std::vector<uint8_t> make_file(const std::string& header_text, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out(8 + header_text.size() + data.size());
  for (int i = 0; i < 8; ++i) out[i] = uint8_t(uint64_t(header_text.size()) >> (8 * i));
  std::memcpy(out.data() + 8, header_text.data(), header_text.size());
  if (!data.empty()) std::memcpy(out.data() + 8 + header_text.size(), data.data(), data.size());
  return out;
}

void expect_bad(const std::vector<uint8_t>& bytes, const std::string& needle) {
  try {
    SafetensorsFile::parse(bytes.data(), bytes.size(), "test.safetensors");
    FAIL() << "accepted a bad file; expected an error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::BadFile) << e.what();
    EXPECT_THAT(e.what(), HasSubstr(needle));
  }
}

TEST(Safetensors, RoundTrip) {
  const std::string path = temp_path("roundtrip");
  json header = to_json(identity());
  header["params"] = {{"pre_rope", true}};
  const Sample s = write_sample(path, header);
  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.header(), header);
  ASSERT_EQ(f.tensors().size(), 2u);
  const SafeTensor& a = f.tensor("basis", {3, 5});
  EXPECT_EQ(a.numel(), 15);
  for (size_t i = 0; i < s.a.size(); ++i) EXPECT_EQ(a.f32()[i], s.a[i]);
  const SafeTensor& b = f.tensor("counts", {7});
  for (size_t i = 0; i < s.b.size(); ++i) EXPECT_EQ(b.i32()[i], s.b[i]);
  EXPECT_THROW(a.i32(), Error);
  EXPECT_THROW(b.f32(), Error);
  // The data must start 8-byte aligned (the format's recommendation, mmap-friendly readers rely on it).
  const std::vector<uint8_t> bytes = read_bytes(path);
  uint64_t hl = 0;
  for (int i = 0; i < 8; ++i) hl |= uint64_t(bytes[i]) << (8 * i);
  EXPECT_EQ(hl % 8, 0u);
  std::remove(path.c_str());
}

// Files in the directory of `path` whose names start with its name followed by ".tmp.".
std::vector<std::string> temp_files_of(const std::string& path) {
  const std::filesystem::path p(path);
  std::vector<std::string> found;
  for (const auto& e : std::filesystem::directory_iterator(p.parent_path()))
    if (e.path().filename().string().rfind(p.filename().string() + ".tmp.", 0) == 0) found.push_back(e.path());
  return found;
}

// A writer with a tensor of `bytes` bytes: big enough that a small file-size limit stops it midway.
SafetensorsWriter big_writer(size_t bytes) {
  std::vector<float> x(bytes / 4, 0.5f);
  SafetensorsWriter w;
  w.add_f32("x", x.data(), {int64_t(x.size())});
  return w;
}

// Limits the size of files this process writes, as a full disk or a quota would.
void limit_file_size(rlim_t bytes) {
  rlimit lim{};
  ::getrlimit(RLIMIT_FSIZE, &lim);
  lim.rlim_cur = bytes;
  ::setrlimit(RLIMIT_FSIZE, &lim);
}

TEST(Safetensors, WriteIsAtomicAndLeavesNoTempFile) {
  const std::string path = temp_path("atomic");
  write_sample(path);
  const std::vector<uint8_t> before = read_bytes(path);
  // A write into a missing directory fails; the existing file elsewhere is untouched.
  SafetensorsWriter w;
  const float x = 1.0f;
  w.add_f32("x", &x, {1});
  EXPECT_THROW(w.write(::testing::TempDir() + "no_such_dir_saap/x.safetensors", json::object()), Error);
  // Overwriting replaces the content completely.
  w.write(path, json{{"method", "other"}});
  EXPECT_NE(read_bytes(path), before);
  EXPECT_EQ(SafetensorsFile::open(path).header()["method"], "other");
  EXPECT_THAT(temp_files_of(path), ::testing::IsEmpty());
  std::remove(path.c_str());
}

TEST(Safetensors, WriteFailingMidwayKeepsTheOldFile) {
  const std::string path = temp_path("midway");
  write_sample(path);
  const std::vector<uint8_t> before = read_bytes(path);
  // In a child: the file-size limit makes write() fail (EFBIG) after 64 KiB of a 1 MiB artifact.
  // The writer must throw BadFile, remove its temporary file, and leave the old artifact intact.
  EXPECT_EXIT(
      {
        std::signal(SIGXFSZ, SIG_IGN);
        limit_file_size(64 << 10);
        try {
          big_writer(1 << 20).write(path, to_json(identity()));
        } catch (const Error& e) {
          const bool ok = e.kind() == ErrorKind::BadFile && read_bytes(path) == before && temp_files_of(path).empty();
          std::exit(ok ? 0 : 3);
        }
        std::exit(2);  // the write did not fail
      },
      ::testing::ExitedWithCode(0), "");
  EXPECT_EQ(read_bytes(path), before);
  std::remove(path.c_str());
}

TEST(Safetensors, CrashMidwayLeavesNoFileALoadAccepts) {
  const std::string path = temp_path("crash");
  const std::string fresh = temp_path("crash_fresh");  // no file of that name before the crash
  write_sample(path);
  const std::vector<uint8_t> before = read_bytes(path);
  // In a child killed mid-write (SIGXFSZ, default action) after 64 KiB of a 1 MiB artifact, once
  // over an existing artifact and once where there was none.
  for (const std::string& target : {path, fresh}) {
    EXPECT_EXIT(
        {
          limit_file_size(64 << 10);
          big_writer(1 << 20).write(target, to_json(identity()));
        },
        ::testing::KilledBySignal(SIGXFSZ), "");
  }
  // The old artifact loads unchanged; where there was none there is still none.
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_NO_THROW(SafetensorsFile::open(path));
  EXPECT_THROW(SafetensorsFile::open(fresh), Error);
  // The half-written temporary files the crash left are refused by the loader (truncated).
  for (const std::string& target : {path, fresh}) {
    const std::vector<std::string> left = temp_files_of(target);
    ASSERT_EQ(left.size(), 1u) << target;
    try {
      SafetensorsFile::open(left[0]);
      ADD_FAILURE() << "a half-written artifact was accepted: " << left[0];
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::BadFile) << e.what();
    }
    std::remove(left[0].c_str());
  }
  std::remove(path.c_str());
}

TEST(Safetensors, WriterRefusesBadInput) {
  SafetensorsWriter w;
  const float x[2] = {1, 2};
  w.add_f32("x", x, {2});
  EXPECT_THROW(w.add_f32("x", x, {2}), Error);
  EXPECT_THROW(w.add_f32("__metadata__", x, {2}), Error);
  EXPECT_THROW(w.add_f32("neg", x, {-1}), Error);
  EXPECT_THROW(w.add_f32("null", nullptr, {2}), Error);
}

// An independent reader: Python's standard library + NumPy parse the bytes per the format spec.
TEST(Safetensors, ReadableByNumpy) {
  const std::string path = temp_path("numpy");
  const Sample s = write_sample(path);
  const std::string out = run_python(R"PY(
import json, struct, sys
import numpy as np
raw = open(")PY" + path + R"PY(", "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
header = json.loads(raw[8:8 + n])
data = raw[8 + n:]
saap = json.loads(header.pop("__metadata__")["saap"])
print("method", saap["method"], saap["n_kv_heads"])
types = {"F32": np.float32, "I32": np.int32}
for name in sorted(header):
    e = header[name]
    b, en = e["data_offsets"]
    arr = np.frombuffer(data[b:en], dtype=types[e["dtype"]]).reshape(e["shape"])
    print(name, " ".join(str(d) for d in arr.shape), " ".join(repr(float(v)) for v in arr.ravel()))
)PY");
  std::istringstream lines(out);
  std::string tag, method;
  int kv = 0;
  lines >> tag >> method >> kv;
  EXPECT_EQ(tag, "method");
  EXPECT_EQ(method, "loki");
  EXPECT_EQ(kv, 3);
  std::string name;
  int64_t d0, d1;
  lines >> name >> d0 >> d1;
  EXPECT_EQ(name, "basis");
  EXPECT_EQ(d0, 3);
  EXPECT_EQ(d1, 5);
  for (float expected : s.a) {
    double v;
    lines >> v;
    EXPECT_EQ(float(v), expected);
  }
  lines >> name >> d0;
  EXPECT_EQ(name, "counts");
  EXPECT_EQ(d0, 7);
  for (int32_t expected : s.b) {
    double v;
    lines >> v;
    EXPECT_EQ(int64_t(v), expected);
  }
  EXPECT_TRUE(lines.good()) << out;
  std::remove(path.c_str());
}

// And the other way: a file written by NumPy (unsorted tensors, padded header) is read exactly.
TEST(Safetensors, ReadsFileWrittenByNumpy) {
  const std::string path = temp_path("fromnumpy");
  const std::string out = run_python(R"PY(
import json, struct
import numpy as np
rng = np.random.default_rng(3)
z = rng.standard_normal((4, 2, 3)).astype(np.float32)
i = rng.integers(-1000, 1000, size=(5,)).astype(np.int32)
l = np.arange(3, dtype=np.int64)
blobs = [("z", "F32", z), ("idx", "I32", i), ("long", "I64", l)]
header, data = {"__metadata__": {"saap": json.dumps({"method": "kmeans"}), "other": "x"}}, b""
for name, dt, arr in blobs:
    header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [len(data), len(data) + arr.nbytes]}
    data += arr.tobytes()
h = json.dumps(header).encode()
h += b" " * ((8 - len(h) % 8) % 8)
open(")PY" + path + R"PY(", "wb").write(struct.pack("<Q", len(h)) + h + data)
print(" ".join(repr(float(v)) for v in z.ravel()))
print(" ".join(str(int(v)) for v in i))
)PY");
  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.header()["method"], "kmeans");
  std::istringstream lines(out);
  const SafeTensor& z = f.tensor("z", {4, 2, 3});
  for (int64_t k = 0; k < z.numel(); ++k) {
    double v;
    lines >> v;
    EXPECT_EQ(z.f32()[k], float(v));
  }
  const SafeTensor& idx = f.tensor("idx", {5});
  for (int k = 0; k < 5; ++k) {
    int64_t v;
    lines >> v;
    EXPECT_EQ(idx.i32()[k], v);
  }
  EXPECT_EQ(f.tensor("long", {3}).dtype, "I64");
  std::remove(path.c_str());
}

TEST(Safetensors, MissingTensorAndWrongShapeAreNamed) {
  const std::string path = temp_path("shape");
  write_sample(path);
  const SafetensorsFile f = SafetensorsFile::open(path);
  try {
    f.tensor("basis", {5, 3});
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("'basis'"));
    EXPECT_THAT(e.what(), HasSubstr("[3, 5]"));
  }
  try {
    f.tensor("nope");
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("'nope'"));
  }
  EXPECT_THROW(SafetensorsFile::open(path + ".missing"), Error);
  std::remove(path.c_str());
}

TEST(Safetensors, TruncatedFilesAreRefused) {
  const std::string path = temp_path("trunc");
  write_sample(path);
  const std::vector<uint8_t> full = read_bytes(path);
  std::remove(path.c_str());
  uint64_t hl = 0;
  for (int i = 0; i < 8; ++i) hl |= uint64_t(full[i]) << (8 * i);
  // Every prefix must be refused: inside the length, inside the header, inside the data.
  for (size_t cut : {size_t(0), size_t(5), size_t(8), size_t(8 + hl / 2), size_t(8 + hl), full.size() - 1}) {
    std::vector<uint8_t> part(full.begin(), full.begin() + cut);
    EXPECT_THROW(SafetensorsFile::parse(part.data(), part.size(), "cut"), Error) << "cut at " << cut;
  }
  std::vector<uint8_t> part(full.begin(), full.end() - 4);
  expect_bad(part, "data_offsets end");
  part.assign(full.begin(), full.begin() + 8 + hl / 2);
  expect_bad(part, "header length");
}

TEST(Safetensors, CorruptedHeadersAreRefusedNamingTheField) {
  const std::vector<uint8_t> data(24, 0);
  expect_bad(make_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [2, 3", data), "not valid JSON");
  expect_bad(make_file("[1, 2]", data), "object expected");
  expect_bad(make_file(R"({"a": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 24]}})", data), "'F16'");
  expect_bad(make_file(R"({"a": {"dtype": 3, "shape": [2, 3], "data_offsets": [0, 24]}})", data), "dtype");
  expect_bad(make_file(R"({"a": {"shape": [2, 3], "data_offsets": [0, 24]}})", data), "'dtype' missing");
  expect_bad(make_file(R"({"a": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 24]}})", data),
             "tensor 'a': shape [2, 4]");
  expect_bad(make_file(R"({"a": {"dtype": "F32", "shape": [2, -3], "data_offsets": [0, 24]}})", data), "negative");
  expect_bad(make_file(R"({"a": {"dtype": "F32", "shape": [2, 1.5], "data_offsets": [0, 24]}})", data),
             "not an integer");
  expect_bad(make_file(R"({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [24, 0]}})", data), "reversed");
  expect_bad(make_file(R"({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [8, 32]}})", data),
             "tensor 'a': data_offsets end 32");
  expect_bad(make_file(R"({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0]}})", data), "pair");
  expect_bad(make_file(R"({"a": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 24]}})", data),
             "too large");
  // Overlap, hole, and data not covered.
  expect_bad(make_file(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                           "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
                       data),
             "tensor 'b': data_offsets begin 8 overlaps");
  expect_bad(make_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                           "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}})",
                       data),
             "tensor 'b': data_offsets begin 16 leaves a hole");
  expect_bad(make_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", data), "cover 8");
  expect_bad(make_file(R"({"__metadata__": {"saap": 5}})", {}), "__metadata__['saap'] is not a string");
  expect_bad(make_file(R"({"__metadata__": {"saap": "{oops"}})", {}), "not valid JSON");
  // Numbers beyond a double (found by fuzz_safetensors: the JSON library raises out_of_range, not a
  // parse error, and it escaped as an internal error).
  expect_bad(make_file(R"({"a": {"dtype": "F32", "shape": [1e3003], "data_offsets": [0, 24]}})", data),
             "header is not valid JSON");
  expect_bad(make_file(R"({"__metadata__": {"saap": "{\"n\": 1e3003}"}})", {}), "__metadata__['saap'] is not valid JSON");
  // A header length beyond the file.
  std::vector<uint8_t> huge = make_file("{}", {});
  huge[3] = 1;
  expect_bad(huge, "header length");
}

TEST(Safetensors, FlippedBytesNeverCrash) {
  const std::string path = temp_path("flip");
  write_sample(path);
  const std::vector<uint8_t> full = read_bytes(path);
  std::remove(path.c_str());
  std::mt19937 rng(11);
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<uint8_t> bytes = full;
    bytes[rng() % bytes.size()] ^= uint8_t(1u << (rng() % 8));
    try {
      SafetensorsFile::parse(bytes.data(), bytes.size(), "flip");
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::BadFile);
    }
  }
}

TEST(Safetensors, CheckArtifactNamesTheDifferingField) {
  const ArtifactIdentity want = identity();
  EXPECT_NO_THROW(check_artifact(to_json(want), want, "a.safetensors"));
  struct Case {
    const char* field;
    json value;
  };
  for (const Case& c : {Case{"method", "saap"}, Case{"format_version", 2}, Case{"model_identity", "gemma3:1"},
                        Case{"n_layers", 18}, Case{"n_heads", 4}, Case{"n_kv_heads", 1}, Case{"head_dim", 128}}) {
    json h = to_json(want);
    h[c.field] = c.value;
    try {
      check_artifact(h, want, "a.safetensors");
      FAIL() << "accepted a different " << c.field;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::BadFile);
      EXPECT_THAT(e.what(), HasSubstr(std::string(c.field) + " is " + c.value.dump()));
      EXPECT_THAT(e.what(), HasSubstr("a.safetensors"));
    }
    h.erase(c.field);
    try {
      check_artifact(h, want, "a.safetensors");
      FAIL();
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr(std::string("'") + c.field + "' is missing"));
    }
  }
  EXPECT_THROW(check_artifact(json(), want, "a.safetensors"), Error);
}

}  // namespace
}  // namespace saap
