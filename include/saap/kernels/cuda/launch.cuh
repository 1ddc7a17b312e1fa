// Programmatic dependent launch (Hopper): a kernel launched with launch_dependent() may have its
// blocks scheduled while the previous kernel in the stream drains, instead of after it has fully
// retired, which hides the launch gap between the short dependent kernels of one decode step.
// Such a kernel must call wait_prior_grid() before it touches memory the previous kernel reads or
// writes; the call returns once that kernel has finished and its writes are visible (and at once
// when the kernel was launched the ordinary way).
#pragma once
#include <cuda_runtime.h>

#include <utility>

#include "saap/kernels/cuda/check.h"

namespace saap::cuda {

__device__ __forceinline__ void wait_prior_grid() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
// Lets the next kernel's blocks be scheduled (they still wait_prior_grid() for this grid's end and
// its writes) once every block of this grid has called it or exited: called where a block's last
// memory work is under way, it hides the next launch behind this kernel's tail.
__device__ __forceinline__ void allow_next_grid() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

// Fetches the 128-byte line holding p into L2 without reading it: a kernel may call it before
// wait_prior_grid() on memory an earlier kernel of the stream wrote (L2 is the point of coherence,
// and no value reaches a register), so that the loads after the wait hit L2 instead of DRAM.
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

template <class... Params, class... Args>
void launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                      Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  SAAP_CU(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

}  // namespace saap::cuda
