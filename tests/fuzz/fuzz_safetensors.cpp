// libFuzzer target for the safetensors artifact reader (header length, header JSON, dtypes, shapes,
// data offsets, the saap metadata): any input must either parse or raise saap::Error. A parsed
// file must be self-consistent (each tensor holds exactly numel * element size bytes, and its
// typed view agrees with its dtype), and check_artifact must judge its header without crashing.
// Anything else (a sanitizer report, another exception type, an abort) is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "saap/core/error.h"
#include "saap/core/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const saap::SafetensorsFile f = saap::SafetensorsFile::parse(data, size, "fuzz");
    for (const auto& [name, t] : f.tensors()) {
      const size_t element = t.dtype == "I64" ? 8 : 4;
      if (t.bytes.size() != size_t(t.numel()) * element) std::abort();  // the reader's own promise
      try {
        (void)(t.dtype == "F32" ? static_cast<const void*>(t.f32()) : static_cast<const void*>(t.i32()));
        if (t.dtype == "I64") std::abort();  // i32() must refuse an I64 tensor
      } catch (const saap::Error&) {
        if (t.dtype != "I64") std::abort();
      }
      (void)f.tensor(name, t.shape);
    }
    saap::ArtifactIdentity id;
    id.method = "saap";
    try {
      saap::check_artifact(f.header(), id, "fuzz");
    } catch (const saap::Error&) {
    }
  } catch (const saap::Error&) {
  }
  return 0;
}
