// libFuzzer target for the GGUF reader: any input must either parse or raise saap::Error, and a
// parsed file's tensors must dequantize (or raise Unsupported) without touching memory outside
// the input. A parsed file's metadata also goes through Tokenizer::from_gguf (the vocabulary,
// merges, token types, special ids and chat template it reads), and a tokenizer it builds must
// encode and decode a short text. Anything else (a sanitizer report, another exception type, a
// crash) is a finding.
#include <cstddef>
#include <cstdint>

#include "saap/core/error.h"
#include "saap/model/gguf.h"
#include "saap/model/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const saap::GGUFFile f = saap::GGUFFile::parse(data, size);
    for (const auto& [key, value] : f.metadata()) {
      (void)value;
      try {
        f.get_float(key);
      } catch (const saap::Error&) {
      }
    }
    for (const saap::GGUFTensorInfo& t : f.tensors()) {
      try {
        saap::dequantize_tensor(t);
      } catch (const saap::Error& e) {
        if (e.kind() != saap::ErrorKind::Unsupported) throw;
      }
    }
    try {
      const saap::Tokenizer tok = saap::Tokenizer::from_gguf(f);
      (void)tok.decode(tok.encode("<|im_start|>user\nHello, world! 123<|im_end|>", true, true));
      (void)tok.apply_chat_template({{"user", "Hi"}}, true);
    } catch (const saap::Error&) {
    }
  } catch (const saap::Error&) {
  }
  return 0;
}
