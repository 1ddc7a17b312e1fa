// The CUDA model runner (saap/model/cuda_llama.h) as an evaluation backend (saap/eval/backend.h):
// what `--device cuda` runs. Library saap_eval_cuda, built where CUDA is; the CLI links it there.
//
// Batches: perplexity windows and passkey trials of equal length run max_batch at a time as one
// batched prefill; the NLL is computed on the GPU from the fp32 logits. Generation samples on the
// host with the CPU's Sampler from the GPU's logits, so a seed gives the same choices as the CPU
// runner given the same logits (bf16 weights make them differ slightly).
//
// Methods: the spec goes to the runner (CudaLlamaOptions::method): prefill is exact, decode steps go
// through the method; perplexity under the method (MethodEverywhere) is the runner's method_nll, and
// a greedy prompt with method_prefill is its method_prefill (teacher-forced, every position through
// the method). Every registry method has a GPU path; nothing falls back to dense. The lookup
// fraction counts K/V bytes (CudaLlamaModel::kv_reads) and, for the oracle, the K rows it scores
// to decide; the other indexes' own bytes are not counted.
#pragma once
#include <memory>
#include <string>

#include "saap/eval/backend.h"
#include "saap/methods/registry.h"

namespace saap {

// Whether this process can run the CUDA backend, and on what.
struct CudaDeviceStatus {
  bool usable = false;
  std::string name;    // the GPU's name, "" when none
  int major = 0, minor = 0;  // compute capability
  std::string reason;  // why it is not usable: "no CUDA device (...)", "compute capability 8.0 ..."
};
CudaDeviceStatus cuda_device_status();

struct CudaBackendOptions {
  int max_batch = 1;         // sequences run together
  int64_t max_context = 0;   // cached tokens per sequence; 0: the model's context length
  MethodSpec method;         // the attention method of decode steps (see above)
};

// Loads the GGUF onto the GPU. Throws Unsupported (no usable GPU: cuda_device_status's reason; a
// method the runner does not run; an architecture it does not support), BadFile, NotFound,
// InvalidArgument or OutOfMemory (the weights, cache and activations do not fit: nothing stays
// allocated).
std::unique_ptr<EvalBackend> make_cuda_eval_backend(const std::string& gguf_path, const CudaBackendOptions& options);

}  // namespace saap
