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

// Bulk copies (cp.async.bulk, sm_90): one thread moves a whole contiguous block of global memory
// into shared memory through the copy engine, and the copy completes on an mbarrier in shared
// memory by the number of bytes it delivered (transaction count). So a block keeps several tiles
// in flight with no registers and one instruction per tile, the way the read floor does with many
// threads. Both addresses 16-byte aligned, the size a multiple of 16.
namespace saap::cuda {

// An mbarrier that completes a phase after `count` arrivals and the bytes they announced.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(shared_address(bar)), "r"(count) : "memory");
}
// Makes mbarrier_init visible to the copy engine (the async proxy); a __syncthreads() after it
// publishes the barriers to the block's threads.
__device__ __forceinline__ void fence_mbarrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
// One arrival that also announces `bytes` more to come by bulk copies in the current phase.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(shared_address(bar)), "r"(bytes)
               : "memory");
}
// Whether the phase of parity `parity` has completed (try_wait may suspend the thread a while first).
__device__ __forceinline__ bool mbarrier_try_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n\t.reg .pred p;\n\t"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
      "selp.u32 %0, 1, 0, p;\n}"
      : "=r"(done)
      : "r"(shared_address(bar)), "r"(parity)
      : "memory");
  return done != 0;
}
// Waits until the phase of parity `parity` (0, 1, 0, ... for the barrier's 1st, 2nd, 3rd phase)
// has completed; then the bytes of the copies counted in that phase are visible to this thread.
// A phase that never completes (bytes announced but never copied: a bug) traps after 2^24 polls
// (a tenth of a second at the least; a real copy takes microseconds), so the launch fails instead
// of hanging the process.
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  for (uint32_t polls = 0; !mbarrier_try_wait(bar, parity);)
    if (++polls == (1u << 24)) __trap();
}
// `bytes` from gmem to smem by the copy engine, counted on `bar` when they land.
__device__ __forceinline__ void bulk_copy_to_shared(void* smem, const void* gmem, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   shared_address(smem)),
               "l"(gmem), "r"(bytes), "r"(shared_address(bar))
               : "memory");
}

}  // namespace saap::cuda
