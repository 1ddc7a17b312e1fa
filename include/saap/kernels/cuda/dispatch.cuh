// The one dispatch point from runtime (kv dtype, head dim, group size) to kernel templates.
// Group sizes are bucketed to 1, 2, 4, 8 so each kernel has 16 instantiations, not 64.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "saap/kernels/cuda/decode.h"

namespace saap::cuda {

template <class Fn>
void dispatch_decode(const DecodeShape& s, Fn&& fn) {
  auto by_group = [&](auto t, auto d) {
    const int g = s.group();
    if (g <= 1) return fn(t, d, std::integral_constant<int, 1>{});
    if (g <= 2) return fn(t, d, std::integral_constant<int, 2>{});
    if (g <= 4) return fn(t, d, std::integral_constant<int, 4>{});
    return fn(t, d, std::integral_constant<int, 8>{});
  };
  auto by_dim = [&](auto t) {
    if (s.head_dim == 64) return by_group(t, std::integral_constant<int, 64>{});
    return by_group(t, std::integral_constant<int, 128>{});
  };
  if (s.kv_dtype == DType::F16) return by_dim(__half{});
  return by_dim(__nv_bfloat16{});
}

}  // namespace saap::cuda
