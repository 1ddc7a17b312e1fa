// Error reporting for the CUDA kernels' host code: saap::Error (core/error.h) with printf-style
// messages that name the calling function, and CUDA error codes turned into error kinds.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdio>
#include <string>

#include "saap/core/error.h"

namespace saap::cuda {

template <class... A>
[[noreturn]] inline void fail(ErrorKind kind, const char* func, const char* fmt, A... args) {
  char buf[512];
  std::snprintf(buf, sizeof buf, fmt, args...);
  throw Error(kind, std::string(func) + ": " + buf);
}

inline void check_cuda(cudaError_t e, const char* what, const char* func) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear a sticky-free error so the caller may recover
  fail(e == cudaErrorMemoryAllocation ? ErrorKind::OutOfMemory : ErrorKind::Unsupported, func, "%s failed: %s", what,
       cudaGetErrorString(e));
}

}  // namespace saap::cuda

#define SAAP_CU(expr) ::saap::cuda::check_cuda((expr), #expr, __func__)
#define SAAP_CU_LAUNCHED() ::saap::cuda::check_cuda(cudaGetLastError(), "kernel launch", __func__)
#define SAAP_CU_REQUIRE(cond, kind, ...)                                            \
  do {                                                                              \
    if (!(cond)) ::saap::cuda::fail(::saap::ErrorKind::kind, __func__, __VA_ARGS__); \
  } while (0)
