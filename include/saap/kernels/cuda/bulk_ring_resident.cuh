// How many blocks of a bulk-ring decode kernel (dense_decode_bulk_kernel, saap_decode_bulk_kernel,
// quest_attend_bulk_kernel) the device runs at once, per ring depth: the ring's dynamic shared
// memory bounds them.
#pragma once
#include <algorithm>
#include <array>

#include "saap/kernels/cuda/bulk_ring.cuh"
#include "saap/kernels/cuda/check.h"
#include "saap/kernels/cuda/decode.h"

namespace saap::cuda {

// Resident blocks of `kernel` (a bulk-ring kernel of these template arguments) for each stage count
// 2..kMaxBulkStages, 0 where that ring does not fit beside the kernel's static shared memory (8
// stages of 32 KiB at head dim 128 with mma). First opts the kernel into the largest ring that fits.
template <class T, int D, int GMAX, bool MMA>
std::array<int, kMaxBulkStages + 1> bulk_ring_resident(const void* kernel) {
  int dev = 0, optin = 0;
  SAAP_CU(cudaGetDevice(&dev));
  SAAP_CU(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  cudaFuncAttributes fa{};
  SAAP_CU(cudaFuncGetAttributes(&fa, kernel));
  const size_t most = size_t(optin) - fa.sharedSizeBytes;
  SAAP_CU(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               int(std::min(most, dense_bulk_smem<T, D, GMAX, MMA>(kMaxBulkStages)))));
  std::array<int, kMaxBulkStages + 1> r{};
  for (int st = 2; st <= kMaxBulkStages; ++st)
    if (dense_bulk_smem<T, D, GMAX, MMA>(st) <= most)
      r[st] = resident_blocks(kernel, kDecodeWarps * 32, dense_bulk_smem<T, D, GMAX, MMA>(st));
  return r;
}

}  // namespace saap::cuda
