#include "saap/train/calibration.h"

#include <cmath>

#include "saap/core/error.h"

namespace saap {

namespace {

constexpr int kFormatVersion = 1;

std::string tensor_name(int layer, const char* what) { return "layer." + std::to_string(layer) + "." + what; }

int positive_field(const nlohmann::json& h, const char* field, const std::string& path) {
  SAAP_CHECK_FMT(h.contains(field) && h[field].is_number_integer() && h[field].get<int64_t>() > 0 &&
                     h[field].get<int64_t>() < (int64_t(1) << 31),
                 BadFile, "%s: header field '%s' is missing or not a positive integer", path.c_str(), field);
  return h[field].get<int>();
}

}  // namespace

ArtifactIdentity CalibrationSet::identity() const {
  ArtifactIdentity id;
  id.method = "calibration";
  id.format_version = kFormatVersion;
  id.model_identity = model_identity;
  id.n_layers = n_layers;
  id.n_heads = n_heads;
  id.n_kv_heads = n_kv_heads;
  id.head_dim = head_dim;
  return id;
}

const float* CalibrationSet::key_pre(int layer, int window, int pos, int kv_head) const {
  SAAP_CHECK_FMT(layer >= 0 && layer < n_layers, InvalidArgument, "layer = %d of %d", layer, n_layers);
  SAAP_CHECK_FMT(window >= 0 && window < windows, InvalidArgument, "window = %d of %d", window, windows);
  SAAP_CHECK_FMT(pos >= 0 && pos < window_len, InvalidArgument, "pos = %d of window_len %d", pos, window_len);
  SAAP_CHECK_FMT(kv_head >= 0 && kv_head < n_kv_heads, InvalidArgument, "kv_head = %d of %d", kv_head, n_kv_heads);
  const int64_t row = (int64_t(window) * window_len + pos) * n_kv_heads + kv_head;
  return layers[size_t(layer)].keys_pre.data() + row * head_dim;
}

void CalibrationSet::save(const std::string& path) const {
  SAAP_CHECK_FMT(int(layers.size()) == n_layers, InvalidArgument, "%zu layers held for n_layers = %d",
                 layers.size(), n_layers);
  SafetensorsWriter w;
  for (int l = 0; l < n_layers; ++l) {
    const auto& L = layers[size_t(l)];
    const int64_t nq = int64_t(L.query_pos.size());
    SAAP_CHECK_FMT(int64_t(L.keys_pre.size()) == int64_t(windows) * window_len * n_kv_heads * head_dim,
                   InvalidArgument, "layer %d: keys_pre holds %zu floats, expected windows x window_len x "
                   "n_kv_heads x head_dim", l, L.keys_pre.size());
    SAAP_CHECK_FMT(int64_t(L.queries_pre.size()) == nq * n_heads * head_dim && int64_t(L.query_window.size()) == nq,
                   InvalidArgument, "layer %d: %zu query floats and %zu windows for %lld query positions", l,
                   L.queries_pre.size(), L.query_window.size(), (long long)nq);
    w.add_f32(tensor_name(l, "keys_pre"), L.keys_pre.data(), {windows, window_len, n_kv_heads, head_dim});
    w.add_f32(tensor_name(l, "queries_pre"), L.queries_pre.data(), {nq, n_heads, head_dim});
    w.add_i32(tensor_name(l, "query_window"), L.query_window.data(), {nq});
    w.add_i32(tensor_name(l, "query_pos"), L.query_pos.data(), {nq});
  }
  if (!rope.freq_factors.empty())
    w.add_f32("rope.freq_factors", rope.freq_factors.data(), {int64_t(rope.freq_factors.size())});
  nlohmann::json header = to_json(identity());
  header["windows"] = windows;
  header["window_len"] = window_len;
  header["rope"] = {{"head_dim", rope.head_dim},
                    {"n_rot", rope.n_rot},
                    {"base", rope.base},
                    {"freq_scale", rope.freq_scale},
                    {"style", rope.style == RopeStyle::NeoX ? "neox" : "interleaved"}};
  w.write(path, header);
}

namespace {

// Reads every field from an opened file, validating shapes and ranges (BadFile naming the field).
CalibrationSet read_calibration(const SafetensorsFile& file, const std::string& path) {
  const nlohmann::json& h = file.header();
  SAAP_CHECK_FMT(h.value("method", std::string()) == "calibration", BadFile,
                 "%s: header method is '%s', not 'calibration'", path.c_str(),
                 h.value("method", std::string("<missing>")).c_str());
  SAAP_CHECK_FMT(h.value("format_version", -1) == kFormatVersion, BadFile, "%s: format_version %d, expected %d",
                 path.c_str(), h.value("format_version", -1), kFormatVersion);
  CalibrationSet set;
  set.model_identity = h.value("model_identity", std::string());
  set.n_layers = positive_field(h, "n_layers", path);
  set.n_heads = positive_field(h, "n_heads", path);
  set.n_kv_heads = positive_field(h, "n_kv_heads", path);
  set.head_dim = positive_field(h, "head_dim", path);
  set.windows = positive_field(h, "windows", path);
  set.window_len = positive_field(h, "window_len", path);
  SAAP_CHECK_FMT(set.n_heads % set.n_kv_heads == 0, BadFile, "%s: n_heads = %d is not a multiple of n_kv_heads = %d",
                 path.c_str(), set.n_heads, set.n_kv_heads);
  SAAP_CHECK_FMT(h.contains("rope") && h["rope"].is_object(), BadFile, "%s: header field 'rope' is missing",
                 path.c_str());
  const auto& r = h["rope"];
  try {
    set.rope.head_dim = r.at("head_dim").get<int>();
    set.rope.n_rot = r.at("n_rot").get<int>();
    set.rope.base = r.at("base").get<float>();
    set.rope.freq_scale = r.at("freq_scale").get<float>();
    set.rope.style = r.at("style").get<std::string>() == "neox" ? RopeStyle::NeoX : RopeStyle::Interleaved;
  } catch (const nlohmann::json::exception& e) {
    SAAP_THROW_FMT(BadFile, "%s: header field 'rope' is malformed: %s", path.c_str(), e.what());
  }
  SAAP_CHECK_FMT(set.rope.head_dim == set.head_dim && set.rope.n_rot >= 0 && set.rope.n_rot <= set.head_dim, BadFile,
                 "%s: rope head_dim %d / n_rot %d do not fit head_dim %d", path.c_str(), set.rope.head_dim,
                 set.rope.n_rot, set.head_dim);
  if (file.has("rope.freq_factors")) {
    const SafeTensor& t = file.tensor("rope.freq_factors");
    set.rope.freq_factors.assign(t.f32(), t.f32() + t.numel());
  }
  set.layers.resize(size_t(set.n_layers));
  for (int l = 0; l < set.n_layers; ++l) {
    auto& L = set.layers[size_t(l)];
    const SafeTensor& keys = file.tensor(tensor_name(l, "keys_pre"), {set.windows, set.window_len, set.n_kv_heads,
                                                                      set.head_dim});
    const SafeTensor& qpos = file.tensor(tensor_name(l, "query_pos"));
    SAAP_CHECK_FMT(qpos.shape.size() == 1, BadFile, "%s: %s must be one-dimensional", path.c_str(),
                   tensor_name(l, "query_pos").c_str());
    const int64_t nq = qpos.shape[0];
    const SafeTensor& qwin = file.tensor(tensor_name(l, "query_window"), {nq});
    const SafeTensor& q = file.tensor(tensor_name(l, "queries_pre"), {nq, set.n_heads, set.head_dim});
    L.keys_pre.assign(keys.f32(), keys.f32() + keys.numel());
    L.queries_pre.assign(q.f32(), q.f32() + q.numel());
    L.query_pos.assign(qpos.i32(), qpos.i32() + nq);
    L.query_window.assign(qwin.i32(), qwin.i32() + nq);
    for (int64_t i = 0; i < nq; ++i)
      SAAP_CHECK_FMT(L.query_pos[size_t(i)] >= 0 && L.query_pos[size_t(i)] < set.window_len &&
                         L.query_window[size_t(i)] >= 0 && L.query_window[size_t(i)] < set.windows,
                     BadFile, "%s: layer %d query %lld at window %d position %d is outside %d windows of %d",
                     path.c_str(), l, (long long)i, L.query_window[size_t(i)], L.query_pos[size_t(i)], set.windows,
                     set.window_len);
    for (const auto* buf : {&L.keys_pre, &L.queries_pre})
      for (float x : *buf)
        SAAP_CHECK_FMT(std::isfinite(x), BadFile, "%s: layer %d holds a non-finite %s", path.c_str(), l,
                       buf == &L.keys_pre ? "key" : "query");
  }
  return set;
}

}  // namespace

CalibrationSet CalibrationSet::load(const std::string& path) {
  return read_calibration(SafetensorsFile::open(path), path);
}

CalibrationSet CalibrationSet::load(const std::string& path, const ArtifactIdentity& expected) {
  const SafetensorsFile file = SafetensorsFile::open(path);
  ArtifactIdentity want = expected;
  want.method = "calibration";
  want.format_version = kFormatVersion;
  check_artifact(file.header(), want, path);
  return read_calibration(file, path);
}

}  // namespace saap
