// libFuzzer target for the tokenizer with the default model's vocabulary (SmolLM2: byte-level BPE,
// 49,152 tokens), loaded once. The first input byte picks what the rest is:
//   even: text. encode() must accept any bytes; every id must be in the vocabulary; with special
//         tokens off and no BOS, decode(encode(s)) == s once the bytes the vocabulary has no
//         token for are removed (the documented round trip).
//   odd:  token ids (2 bytes each, little-endian). decode() must return text for ids in the
//         vocabulary and raise InvalidArgument for any other; token_bytes() the same.
// The model comes from $SAAP_MODEL or wherever scripts/setup.sh recorded it.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/model/gguf.h"
#include "saap/model/tokenizer.h"

namespace {

struct Vocabulary {
  saap::Tokenizer tokenizer;
  bool has_byte[256] = {};  // whether a lone byte encodes to a token
};

const Vocabulary* vocabulary = nullptr;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  try {
    auto* v = new Vocabulary{saap::Tokenizer::from_gguf(saap::GGUFFile::open(saap::default_model_path()))};
    for (int b = 0; b < 256; ++b) v->has_byte[b] = !v->tokenizer.encode(std::string(1, char(b))).empty();
    vocabulary = v;
  } catch (const saap::Error& e) {
    std::fprintf(stderr, "fuzz_tokenizer: cannot load the default model's vocabulary: %s\n", e.what());
    std::exit(2);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const saap::Tokenizer& tok = vocabulary->tokenizer;
  const uint8_t mode = data[0];
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if (mode % 2 == 0) {
    const bool add_bos = mode & 2, parse_special = mode & 4;
    const std::vector<int32_t> ids = tok.encode(rest, add_bos, parse_special);
    for (int32_t id : ids)
      if (id < 0 || id >= tok.vocab_size()) std::abort();
    const std::string decoded = tok.decode(ids);
    if (!add_bos && !parse_special) {
      std::string representable;
      for (unsigned char c : rest)
        if (vocabulary->has_byte[c]) representable += char(c);
      if (decoded != representable) std::abort();
    }
    return 0;
  }
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 1 < rest.size(); i += 2)
    ids.push_back(int32_t(uint8_t(rest[i])) | int32_t(uint8_t(rest[i + 1])) << 8);
  bool in_vocabulary = true;
  for (int32_t id : ids) in_vocabulary = in_vocabulary && id < tok.vocab_size();
  try {
    (void)tok.decode(ids);
    if (!in_vocabulary) std::abort();  // an id outside the vocabulary must be refused
    for (int32_t id : ids) (void)tok.token_bytes(id);
  } catch (const saap::Error& e) {
    if (in_vocabulary || e.kind() != saap::ErrorKind::InvalidArgument) std::abort();
  }
  return 0;
}
