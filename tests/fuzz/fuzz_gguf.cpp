// libFuzzer target for the GGUF reader: any input must either parse or raise saap::Error, and a
// parsed file's tensors must dequantize (or raise Unsupported) without touching memory outside
// the input. Anything else (a sanitizer report, another exception type, a crash) is a finding.
#include <cstddef>
#include <cstdint>

#include "saap/core/error.h"
#include "saap/model/gguf.h"

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
  } catch (const saap::Error&) {
  }
  return 0;
}
