// One CUDA thread block emulated on the CPU, so that a kernel body written against the CUDA
// built-ins can be tested where there is no GPU (CI): a std::thread per CUDA thread, a barrier for
// __syncthreads(), and for each warp a barrier and a 32-slot buffer through which the warp-wide
// intrinsics (shuffles, reductions, ballots) exchange values. Only what quest_select.cuh and
// reduce.cuh use. Include it before the kernel header: it defines the CUDA qualifiers away and
// __shared__ as `static`, so a function's shared variables are one per process (one block at a
// time runs). Not a model of performance or of memory ordering beyond the barriers.
#pragma once
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __noinline__
#define __restrict__
#define __shared__ static
#define __launch_bounds__(...)

struct emu_dim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local emu_dim3 threadIdx, blockIdx;
inline emu_dim3 blockDim, gridDim;
struct float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
struct int2 {
  int x, y;
};
inline int2 make_int2(int x, int y) { return {x, y}; }
using std::max;
using std::min;

// A reusable barrier for `count` threads.
class EmuBarrier {
 public:
  explicit EmuBarrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const unsigned long long gen = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != gen; });
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int count_, arrived_ = 0;
  unsigned long long generation_ = 0;
};

struct EmuWarp {
  EmuBarrier bar{32};
  unsigned long long slot[32];
};
struct EmuBlock {
  std::unique_ptr<EmuBarrier> bar;
  std::vector<std::unique_ptr<EmuWarp>> warps;
};
inline thread_local EmuBlock* emu_block = nullptr;  // the calling thread's block

inline void __syncthreads() { emu_block->bar->wait(); }

// Every lane of the calling warp publishes v, then each gets lane src(lane)'s (its own when src is
// outside the warp). Called by all 32 lanes, as the *_sync intrinsics require.
template <class T, class Src>
T emu_exchange(T v, Src src) {
  static_assert(sizeof(T) <= 8, "one slot per lane");
  EmuWarp& w = *emu_block->warps[threadIdx.x >> 5];
  const int lane = threadIdx.x & 31;
  std::memcpy(&w.slot[lane], &v, sizeof(T));
  w.bar.wait();
  const int s = src(lane);
  T r = v;
  if (s >= 0 && s < 32) std::memcpy(&r, &w.slot[s], sizeof(T));
  w.bar.wait();
  return r;
}
template <class T>
T __shfl_up_sync(unsigned, T v, int o) {
  return emu_exchange(v, [&](int l) { return l >= o ? l - o : l; });
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int o) {
  return emu_exchange(v, [&](int l) { return l ^ o; });
}
template <class T>
T __shfl_sync(unsigned, T v, int s) {
  return emu_exchange(v, [&](int) { return s; });
}
// The 32 lanes' values of v, to every lane.
inline std::vector<uint32_t> emu_gather(uint32_t v) {
  EmuWarp& w = *emu_block->warps[threadIdx.x >> 5];
  w.slot[threadIdx.x & 31] = v;
  w.bar.wait();
  std::vector<uint32_t> all(w.slot, w.slot + 32);
  w.bar.wait();
  return all;
}
inline uint32_t __reduce_min_sync(unsigned, uint32_t v) {
  const auto a = emu_gather(v);
  return *std::min_element(a.begin(), a.end());
}
inline uint32_t __reduce_max_sync(unsigned, uint32_t v) {
  const auto a = emu_gather(v);
  return *std::max_element(a.begin(), a.end());
}
inline unsigned __ballot_sync(unsigned, int pred) {
  const auto a = emu_gather(pred ? 1u : 0u);
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= a[size_t(i)] << i;
  return r;
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
template <class T>
T __ldcg(const T* p) {
  return *p;
}
inline uint32_t __float_as_uint(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Runs body() as block b of nt threads (a multiple of 32); returns when every thread has.
inline void emu_run_block(int nt, int b, const std::function<void()>& body) {
  EmuBlock blk;
  blk.bar = std::make_unique<EmuBarrier>(nt);
  for (int w = 0; w < nt / 32; ++w) blk.warps.push_back(std::make_unique<EmuWarp>());
  emu_block = &blk;
  blockDim.x = unsigned(nt);
  std::vector<std::thread> threads;
  for (int t = 0; t < nt; ++t)
    threads.emplace_back([&, t] {
      emu_block = &blk;
      threadIdx.x = unsigned(t);
      blockIdx.x = unsigned(b);
      body();
    });
  for (auto& t : threads) t.join();
  emu_block = nullptr;
}

// Runs body(r) as the blocks r = 0 .. C - 1 of one thread-block cluster, nt threads each, all at
// once; returns when every thread has. What the blocks share across the cluster (barrier, the
// mapping of shared memory) is the caller's.
inline void emu_run_cluster(int C, int nt, const std::function<void(int)>& body) {
  std::vector<EmuBlock> blks(static_cast<size_t>(C));
  for (auto& blk : blks) {
    blk.bar = std::make_unique<EmuBarrier>(nt);
    for (int w = 0; w < nt / 32; ++w) blk.warps.push_back(std::make_unique<EmuWarp>());
  }
  blockDim.x = unsigned(nt);
  std::vector<std::thread> threads;
  for (int r = 0; r < C; ++r)
    for (int t = 0; t < nt; ++t)
      threads.emplace_back([&, r, t] {
        emu_block = &blks[size_t(r)];
        threadIdx.x = unsigned(t);
        blockIdx.x = unsigned(r);
        body(r);
      });
  for (auto& t : threads) t.join();
}
