// CalibrationSet files: exact round trip, and refusal of truncated, reshaped, out-of-range and
// other-model files with a message naming what is wrong.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "saap/core/error.h"
#include "saap/train/calibration.h"

namespace saap {
namespace {

CalibrationSet random_set(uint64_t seed) {
  std::mt19937 rng{uint32_t(seed)};
  std::normal_distribution<float> normal;
  CalibrationSet s;
  s.model_identity = "test-model/abc";
  s.n_layers = 2;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.head_dim = 8;
  s.windows = 3;
  s.window_len = 5;
  s.rope.head_dim = 8;
  s.rope.base = 5000.0f;
  s.rope.freq_factors = {1.0f, 2.0f, 3.0f, 4.0f};
  s.layers.resize(2);
  for (auto& l : s.layers) {
    l.keys_pre.resize(size_t(s.windows) * s.window_len * s.n_kv_heads * s.head_dim);
    for (auto& x : l.keys_pre) x = normal(rng);
    const int nq = 1 + int(rng() % 6);
    for (int i = 0; i < nq; ++i) {
      l.query_window.push_back(int32_t(rng() % s.windows));
      l.query_pos.push_back(int32_t(rng() % s.window_len));
    }
    l.queries_pre.resize(size_t(nq) * s.n_heads * s.head_dim);
    for (auto& x : l.queries_pre) x = normal(rng);
  }
  return s;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("saap_test_calib_" + std::to_string(::getpid()) + name)).string();
}

// Runs f, expecting a saap::Error of `kind` whose message contains `needle`.
template <class F>
void expect_error(F f, ErrorKind kind, const std::string& needle) {
  try {
    f();
    FAIL() << "no error; expected one mentioning " << needle;
  } catch (const Error& e) {
    EXPECT_EQ(int(e.kind()), int(kind)) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Calibration, RoundTripIsExact) {
  const CalibrationSet s = random_set(1);
  const std::string path = temp_path("rt.safetensors");
  s.save(path);
  const CalibrationSet r = CalibrationSet::load(path, s.identity());
  EXPECT_EQ(r.model_identity, s.model_identity);
  EXPECT_EQ(r.n_layers, s.n_layers);
  EXPECT_EQ(r.n_heads, s.n_heads);
  EXPECT_EQ(r.n_kv_heads, s.n_kv_heads);
  EXPECT_EQ(r.head_dim, s.head_dim);
  EXPECT_EQ(r.windows, s.windows);
  EXPECT_EQ(r.window_len, s.window_len);
  EXPECT_EQ(r.rope.base, s.rope.base);
  EXPECT_EQ(r.rope.freq_factors, s.rope.freq_factors);
  for (int l = 0; l < s.n_layers; ++l) {
    EXPECT_EQ(r.layers[l].keys_pre, s.layers[l].keys_pre);
    EXPECT_EQ(r.layers[l].queries_pre, s.layers[l].queries_pre);
    EXPECT_EQ(r.layers[l].query_window, s.layers[l].query_window);
    EXPECT_EQ(r.layers[l].query_pos, s.layers[l].query_pos);
  }
  // key_pre addresses [window][pos][kv_head] rows of head_dim.
  const float* k = r.key_pre(1, 2, 3, 1);
  const size_t row = ((2 * size_t(s.window_len) + 3) * s.n_kv_heads + 1) * s.head_dim;
  EXPECT_EQ(k[0], s.layers[1].keys_pre[row]);
  expect_error([&] { r.key_pre(1, 3, 0, 0); }, ErrorKind::InvalidArgument, "window = 3");
  std::remove(path.c_str());
}

TEST(Calibration, TruncatedFileIsRefused) {
  const std::string path = temp_path("trunc.safetensors");
  random_set(2).save(path);
  const auto size = std::filesystem::file_size(path);
  std::filesystem::resize_file(path, size - 7);
  EXPECT_THROW(CalibrationSet::load(path), Error);
  try {
    CalibrationSet::load(path);
  } catch (const Error& e) {
    EXPECT_EQ(int(e.kind()), int(ErrorKind::BadFile)) << e.what();
  }
  std::remove(path.c_str());
}

TEST(Calibration, OtherModelIsRefused) {
  const CalibrationSet s = random_set(3);
  const std::string path = temp_path("model.safetensors");
  s.save(path);
  ArtifactIdentity other = s.identity();
  other.model_identity = "another-model/xyz";
  expect_error([&] { CalibrationSet::load(path, other); }, ErrorKind::BadFile, "model");
  ArtifactIdentity heads = s.identity();
  heads.n_kv_heads = 4;
  expect_error([&] { CalibrationSet::load(path, heads); }, ErrorKind::BadFile, "kv");
  std::remove(path.c_str());
}

TEST(Calibration, WrongShapeOrRangeIsRefused) {
  CalibrationSet s = random_set(4);
  const std::string path = temp_path("shape.safetensors");
  // Keys of one window too few: written with a consistent-looking header, caught on load.
  s.save(path);
  {
    SafetensorsFile f = SafetensorsFile::open(path);
    nlohmann::json h = f.header();
    h["window_len"] = s.window_len + 1;
    SafetensorsWriter w;
    for (const auto& [name, t] : f.tensors()) {
      if (t.dtype == "F32")
        w.add_f32(name, t.f32(), t.shape);
      else
        w.add_i32(name, t.i32(), t.shape);
    }
    w.write(path, h);
  }
  expect_error([&] { CalibrationSet::load(path); }, ErrorKind::BadFile, "layer.0.keys_pre");

  s = random_set(5);
  s.layers[1].query_pos[0] = s.window_len;  // outside its window
  s.save(path);
  expect_error([&] { CalibrationSet::load(path); }, ErrorKind::BadFile, "layer 1 query 0");
  std::remove(path.c_str());
}

TEST(Calibration, InconsistentSetIsNotWritten) {
  CalibrationSet s = random_set(6);
  s.layers[0].keys_pre.pop_back();
  expect_error([&] { s.save(temp_path("bad.safetensors")); }, ErrorKind::InvalidArgument, "layer 0: keys_pre");
}

}  // namespace
}  // namespace saap
