// Asynchronous global -> shared copies (cp.async, sm_80+): the copies are issued without holding
// registers, so a kernel can start fetching data that does not depend on the previous kernel
// (weights, tables) before it waits for that kernel (wait_prior_grid), and overlap the fetch with
// its own work until cp_async_wait_all().
#pragma once
#include <cstdint>

namespace saap::cuda {

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16 bytes, both addresses 16-byte aligned; bypasses L1 (read once).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(shared_address(smem)), "l"(gmem) : "memory");
}
// 4 bytes, both addresses 4-byte aligned.
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(shared_address(smem)), "l"(gmem) : "memory");
}
// Waits for this thread's copies; a __syncthreads() after it publishes every thread's.
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
// Groups: cp_async_commit() closes the thread's copies issued since the last commit into a group;
// cp_async_wait<N>() waits until at most the N most recent groups are still pending.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

}  // namespace saap::cuda
