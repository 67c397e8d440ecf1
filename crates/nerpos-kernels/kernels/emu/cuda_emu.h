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
#include <cstdio>
#include <cstdlib>
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

using std::max;
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

// Warp matrix products (mma.h's nvcuda::wmma), the 16 × 16 × 16 shapes the tensor-core attention uses.
// A GPU spreads a fragment over the warp's lanes in an unspecified layout; here every thread holds the
// whole tile, which is the same thing to a kernel that only loads, multiplies, fills and stores
// fragments (as ours do). Loads and stores check what the GPU requires of them — ldm a multiple of 16
// bytes, the pointer 32-byte aligned (in shared memory, from the block's base) — and a store writes
// each element from one lane only, so that a missing __syncwarp before the tile is read shows up (as a
// race under the thread sanitizer) as it would on a GPU.
namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulator has the 16 × 16 × 16 shapes only");
  static constexpr int num_elements = 256;
  float x[256];  // [row][column] of the tile (A: M × K, B: K × N, accumulator: M × N)
};

namespace detail {
[[noreturn]] inline void fail(const char *what) {
  std::fprintf(stderr, "wmma (emulated): %s\n", what);
  std::abort();
}

inline void check(const void *p, unsigned ldm, size_t elem) {
  if ((ldm * elem) % 16 != 0) fail("ldm is not a multiple of 16 bytes");
  const char *c = static_cast<const char *>(p);
  const char *base = reinterpret_cast<const char *>(nerpos_emu::block->shared.data());
  const char *end = base + nerpos_emu::block->shared.size() * sizeof(float);
  size_t at = (c >= base && c < end) ? (size_t)(c - base) : (size_t)reinterpret_cast<uintptr_t>(c);
  if (at % 32 != 0) fail("the pointer is not 32-byte aligned");
}

inline float value(float v) { return v; }
inline float value(__nv_bfloat16 v) { return __bfloat162float(v); }

// Element (r, c) of a tile stored row-major (or column-major) with leading dimension ldm.
template <typename T>
inline float at(const T *p, unsigned ldm, int r, int c, bool row_major) {
  return value(row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r]);
}
}  // namespace detail

template <typename Use, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout> &f, const T *p, unsigned ldm) {
  detail::check(p, ldm, sizeof(T));
  constexpr bool row = std::is_same_v<Layout, row_major>;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = detail::at(p, ldm, r, c, row);
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p, unsigned ldm,
                             layout_t layout) {
  detail::check(p, ldm, sizeof(float));
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = detail::at(p, ldm, r, c, layout == mem_row_major);
}

inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm,
                              layout_t layout) {
  detail::check(p, ldm, sizeof(float));
  for (unsigned e = nerpos_emu::lane(); e < 256; e += 32) {
    unsigned r = e / 16, c = e % 16;
    p[layout == mem_row_major ? r * ldm + c : c * ldm + r] = f.x[e];
  }
}

template <typename Use, typename T, typename Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout> &f, float v) {
  for (float &x : f.x) x = v;
}

// d = a·b + c, in f32 (the products of bf16 values are exact in f32; the GPU's order of the sums is
// its own, so results agree to rounding, not to the bit).
template <typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, T, LA> &a,
                     const fragment<matrix_b, 16, 16, 16, T, LB> &b,
                     const fragment<accumulator, 16, 16, 16, float> &c) {
  float out[256];
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float acc = c.x[m * 16 + n];
      for (int k = 0; k < 16; ++k) acc += a.x[m * 16 + k] * b.x[k * 16 + n];
      out[m * 16 + n] = acc;
    }
  std::memcpy(d.x, out, sizeof out);
}

}  // namespace nvcuda::wmma
