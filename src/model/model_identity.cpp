#include "saap/model/model_identity.h"

#include <cstdint>
#include <cstdio>

#include "saap/core/error.h"
#include "saap/model/llama.h"

namespace saap {

namespace {

// FNV-1a over the metadata and tensor directory: changes when the file's content description does.
uint64_t header_hash(const GGUFFile& f) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  };
  auto mix_str = [&](const std::string& s) { mix(s.data(), s.size() + 1); };
  for (const auto& [key, v] : f.metadata()) {
    mix_str(key);
    mix(&v.type, sizeof v.type);
    mix(&v.i, sizeof v.i);
    mix(&v.f, sizeof v.f);
    mix_str(v.s);
    for (int64_t x : v.ints) mix(&x, sizeof x);
    for (double x : v.floats) mix(&x, sizeof x);
    for (const auto& s : v.strings) mix_str(s);
  }
  for (const auto& t : f.tensors()) {
    mix_str(t.name);
    for (int64_t d : t.shape) mix(&d, sizeof d);
    mix(&t.type, sizeof t.type);
    mix(&t.offset, sizeof t.offset);
  }
  return h;
}

}  // namespace

std::string model_identity(const GGUFFile& f, const LlamaConfig& c) {
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx", (unsigned long long)header_hash(f));
  return format("%s|%s L%d E%d H%d/%d D%d F%d V%d|gguf:%s", c.name.c_str(), c.architecture.c_str(), c.n_layers,
                c.n_embd, c.n_heads, c.n_kv_heads, c.head_dim, c.n_ff, c.vocab_size, hash);
}

}  // namespace saap
