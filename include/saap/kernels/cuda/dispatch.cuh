// The one dispatch point from runtime (kv dtype, head dim, group size) to kernel templates.
// Group sizes are bucketed to 1, 2, 4, 8 and head dims are 64, 128 and 256 (Gemma-3), so each
// kernel has 24 instantiations, not 192. kMaxHeadDim: the largest head dim the calling kernel is
// built for (every decode kernel: 256); DecodeShape::check(kMaxHeadDim) refuses larger ones
// before this is reached.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "saap/kernels/cuda/decode.h"

namespace saap::cuda {

// fn(gmax): the group size g bucketed to gmax = 1, 2, 4 or 8, the kernels' padded group.
template <class Fn>
decltype(auto) dispatch_group(int g, Fn&& fn) {
  if (g <= 1) return fn(std::integral_constant<int, 1>{});
  if (g <= 2) return fn(std::integral_constant<int, 2>{});
  if (g <= 4) return fn(std::integral_constant<int, 4>{});
  return fn(std::integral_constant<int, 8>{});
}

template <int kMaxHeadDim = 256, class Fn>
void dispatch_decode(const DecodeShape& s, Fn&& fn) {
  static_assert(kMaxHeadDim == 128 || kMaxHeadDim == 256, "head dims are 64, 128 and 256");
  auto by_group = [&](auto t, auto d) { return dispatch_group(s.group(), [&](auto gmax) { return fn(t, d, gmax); }); };
  auto by_dim = [&](auto t) {
    if (s.head_dim == 64) return by_group(t, std::integral_constant<int, 64>{});
    if constexpr (kMaxHeadDim >= 256)
      if (s.head_dim == 256) return by_group(t, std::integral_constant<int, 256>{});
    return by_group(t, std::integral_constant<int, 128>{});
  };
  if (s.kv_dtype == DType::F16) return by_dim(__half{});
  return by_dim(__nv_bfloat16{});
}

}  // namespace saap::cuda
