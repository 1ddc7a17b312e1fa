// A GGUF file built in memory (version 3, metadata only, no tensors), for the fuzz targets and the
// tests that need a vocabulary other than the default model's: a tiny byte-level tokenizer whose
// chat template or metadata types they choose.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace saap::test_data {

class TinyGGUF {
 public:
  void add_string(const std::string& key, const std::string& value) {
    begin(key, kString);
    put_string(kv_, value);
  }
  void add_u32(const std::string& key, uint32_t value) {
    begin(key, kUint32);
    put(kv_, value);
  }
  void add_strings(const std::string& key, const std::vector<std::string>& values) {
    begin_array(key, kString, values.size());
    for (const std::string& v : values) put_string(kv_, v);
  }
  void add_i32s(const std::string& key, const std::vector<int32_t>& values) {
    begin_array(key, kInt32, values.size());
    for (int32_t v : values) put(kv_, v);
  }
  void add_f32s(const std::string& key, const std::vector<float>& values) {
    begin_array(key, kFloat32, values.size());
    for (float v : values) put(kv_, v);
  }
  std::vector<uint8_t> bytes() const {
    std::string out = "GGUF";
    put(out, uint32_t(3));
    put(out, uint64_t(0));  // tensors
    put(out, n_kv_);
    out += kv_;
    return std::vector<uint8_t>(out.begin(), out.end());
  }

 private:
  static constexpr uint32_t kUint32 = 4, kInt32 = 5, kFloat32 = 6, kString = 8, kArray = 9;
  template <class T>
  static void put(std::string& out, T value) {
    out.append(reinterpret_cast<const char*>(&value), sizeof value);  // GGUF is little-endian, as x86
  }
  static void put_string(std::string& out, const std::string& s) {
    put(out, uint64_t(s.size()));
    out += s;
  }
  void begin(const std::string& key, uint32_t type) {
    put_string(kv_, key);
    put(kv_, type);
    ++n_kv_;
  }
  void begin_array(const std::string& key, uint32_t element_type, size_t n) {
    begin(key, kArray);
    put(kv_, element_type);
    put(kv_, uint64_t(n));
  }
  std::string kv_;
  uint64_t n_kv_ = 0;
};

// The GPT-2 byte-level alphabet: byte b is stored as this code point, as UTF-8.
inline std::string byte_level_piece(int b) {
  int cp = b;
  if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))) {
    int shifted = 0;  // the bytes outside those ranges map to 256, 257, ... in byte order
    for (int x = 0; x < b; ++x)
      if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) ++shifted;
    cp = 256 + shifted;
  }
  std::string s;
  if (cp < 0x80) {
    s += char(cp);
  } else {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  }
  return s;
}

// A "gpt2" vocabulary of the 256 byte tokens plus <|im_start|> and <|im_end|> (control tokens),
// no merges: every byte string encodes, one token per byte.
inline TinyGGUF tiny_chatml_vocabulary() {
  TinyGGUF g;
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (int b = 0; b < 256; ++b) {
    tokens.push_back(byte_level_piece(b));
    types.push_back(1);  // normal
  }
  for (const char* special : {"<|im_start|>", "<|im_end|>"}) {
    tokens.push_back(special);
    types.push_back(3);  // control
  }
  g.add_string("tokenizer.ggml.model", "gpt2");
  g.add_string("tokenizer.ggml.pre", "smollm");
  g.add_strings("tokenizer.ggml.tokens", tokens);
  g.add_i32s("tokenizer.ggml.token_type", types);
  g.add_strings("tokenizer.ggml.merges", {});
  g.add_u32("tokenizer.ggml.eos_token_id", 257);
  return g;
}

}  // namespace saap::test_data
