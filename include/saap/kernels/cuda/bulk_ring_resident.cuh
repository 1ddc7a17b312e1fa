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

// Resident blocks of a bulk-ring kernel for each stage count 2..kMaxBulkStages (0 where that ring
// does not fit beside the kernel's static shared memory), and the one check of a tuning against it.
struct BulkRingResidency {
  std::array<int, kMaxBulkStages + 1> blocks{};
  size_t stage_bytes = 0;  // dynamic shared memory per stage (dense_bulk_smem is linear in stages)
  int head_dim = 0;
  bool mma = false;

  // Resident blocks for a ring of `stages` stages; InvalidArgument naming `who` where it does not fit.
  int blocks_for(int stages, const char* who) const {
    SAAP_CU_REQUIRE(stages >= 2 && stages <= kMaxBulkStages && blocks[size_t(stages)] > 0, InvalidArgument,
                    "%s bulk = %d: a ring of %zu bytes of shared memory does not fit (head dim %d%s)", who, stages,
                    size_t(stages) * stage_bytes, head_dim, mma ? ", mma" : "");
    return blocks[size_t(stages)];
  }
};

// The residency of `kernel` (a bulk-ring kernel of these template arguments; 8 stages of 32 KiB at
// head dim 128 with mma do not fit). First opts the kernel into the largest ring that fits.
template <class T, int D, int GMAX, bool MMA>
BulkRingResidency bulk_ring_resident(const void* kernel) {
  int dev = 0, optin = 0;
  SAAP_CU(cudaGetDevice(&dev));
  SAAP_CU(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  cudaFuncAttributes fa{};
  SAAP_CU(cudaFuncGetAttributes(&fa, kernel));
  const size_t most = size_t(optin) - fa.sharedSizeBytes;
  SAAP_CU(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               int(std::min(most, dense_bulk_smem<T, D, GMAX, MMA>(kMaxBulkStages)))));
  BulkRingResidency r;
  r.stage_bytes = dense_bulk_smem<T, D, GMAX, MMA>(1);
  r.head_dim = D;
  r.mma = MMA;
  for (int st = 2; st <= kMaxBulkStages; ++st)
    if (dense_bulk_smem<T, D, GMAX, MMA>(st) <= most)
      r.blocks[size_t(st)] = resident_blocks(kernel, kDecodeWarps * 32, dense_bulk_smem<T, D, GMAX, MMA>(st));
  return r;
}

}  // namespace saap::cuda
