// The identity of a model file that trained artifacts record and are checked against
// (ArtifactIdentity::model_identity): the same string whichever runner (CPU LlamaModel or the CUDA
// runner) reads the file.
#pragma once
#include <string>

#include "saap/model/gguf.h"

namespace saap {

struct LlamaConfig;

// "<name>|<architecture> L<layers> E<embd> H<heads>/<kv heads> D<head dim> F<ff> V<vocab>|gguf:<hash>",
// the hash an FNV-1a over the file's metadata and tensor directory (it changes when the file's
// content description does). config is the file's configuration as the runner read it.
std::string model_identity(const GGUFFile& file, const LlamaConfig& config);

}  // namespace saap
