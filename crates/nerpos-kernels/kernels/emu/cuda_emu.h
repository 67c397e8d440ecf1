// A CPU stand-in for the parts of CUDA that kernels/train.cu uses, so that the kernels' own code can
// run (and be checked against the CPU reference) on a machine without a GPU: every CUDA thread is a
// std::thread, __syncthreads a barrier of the block, warp shuffles and __syncwarp a barrier of the
// warp, shared memory one buffer per block, bf16 a 16-bit float rounded to nearest even as the GPU
// rounds it. Blocks run one after another. Slow, and meant only for small checks
// (tests/cuda_kernels.rs).
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define NERPOS_DYNAMIC_SHARED(name) float *name = nerpos_emu::shared_memory()

using std::min;

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 v) {
  uint32_t u = (uint32_t)v.bits << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return {(uint16_t)((u >> 16) | 0x40)};  // NaN stays NaN
  u += 0x7FFFu + ((u >> 16) & 1u);
  return {(uint16_t)(u >> 16)};
}

inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  std::memcpy(&u, &f, 4);
  return u;
}

namespace nerpos_emu {

struct Warp {
  std::barrier<> sync{32};
  float slots[32];
};

struct Block {
  std::unique_ptr<std::barrier<>> sync;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<float> shared;
};

inline thread_local dim3 thread_idx, block_idx;
inline thread_local Block *block = nullptr;
// Thread-local: launches from several host threads (the tests run in parallel) do not share them.
inline thread_local dim3 block_dim, grid_dim;

inline float *shared_memory() { return block->shared.data(); }

inline Warp &warp() {
  unsigned t = thread_idx.x + thread_idx.y * block_dim.x;
  return *block->warps[t / 32];
}

inline unsigned lane() { return (thread_idx.x + thread_idx.y * block_dim.x) % 32; }

// Runs `kernel` on every thread of every block of `grid`; `shared_bytes` of shared memory per block.
inline void launch(dim3 grid, dim3 blk, size_t shared_bytes, const std::function<void()> &kernel) {
  unsigned threads = blk.x * blk.y * blk.z;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block b;
        b.sync = std::make_unique<std::barrier<>>((std::ptrdiff_t)threads);
        for (unsigned w = 0; w < (threads + 31) / 32; ++w) b.warps.push_back(std::make_unique<Warp>());
        // Exactly the bytes asked for (an access past them is the address sanitizer's to catch);
        // unwritten shared memory reads as NaN.
        b.shared.assign(shared_bytes / sizeof(float), NAN);
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            grid_dim = grid;
            block_dim = blk;
            thread_idx = {t % blk.x, (t / blk.x) % blk.y, t / (blk.x * blk.y)};
            block_idx = {bx, by, bz};
            block = &b;
            kernel();
          });
        for (auto &th : pool) th.join();
      }
}

// An exported kernel, callable with cuLaunchKernel-style parameters (a pointer to each argument's
// value), with its parameters' sizes to check the caller's arguments against.
struct Entry {
  std::vector<size_t> sizes;
  std::function<void(void **)> call;
};

inline std::map<std::string, Entry> &registry() {
  static std::map<std::string, Entry> r;
  return r;
}

// Registers `f` under `name` (what NERPOS_REGISTER expands to, once per exported kernel).
template <typename... A>
struct Registrar {
  Registrar(const char *name, void (*f)(A...)) {
    registry()[name] = Entry{{sizeof(A)...}, [f](void **p) { call(f, p, std::index_sequence_for<A...>{}); }};
  }
  template <size_t... I>
  static void call(void (*f)(A...), void **p, std::index_sequence<I...>) {
    f(*static_cast<std::remove_reference_t<A> *>(p[I])...);
  }
};

}  // namespace nerpos_emu

#define threadIdx (nerpos_emu::thread_idx)
#define blockIdx (nerpos_emu::block_idx)
#define blockDim (nerpos_emu::block_dim)
#define gridDim (nerpos_emu::grid_dim)

inline void __syncthreads() { nerpos_emu::block->sync->arrive_and_wait(); }
inline void __syncwarp() { nerpos_emu::warp().sync.arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int o) {
  auto &w = nerpos_emu::warp();
  unsigned l = nerpos_emu::lane();
  w.slots[l] = v;
  w.sync.arrive_and_wait();
  float r = w.slots[l ^ (unsigned)o];
  w.sync.arrive_and_wait();
  return r;
}
