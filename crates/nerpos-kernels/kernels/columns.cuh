// Deterministic column sums, the pattern every bias and LayerNorm-weight gradient uses:
// `partial[c * width + j]` = Σ over rows [c·chunk, (c+1)·chunk) of column j, then `out[j]` = Σ_c
// partial[c * width + j] in chunk order — no atomics, so a step gives the same bits every time (what
// exact resume relies on). Launch: grid (⌈width/256⌉, chunks), 256 threads; the finish kernel
// ⌈width/256⌉ blocks of 256.
#pragma once
#include "common.cuh"

// One thread's chunk of one column: the sum of `value(at)` over the chunk's rows, where `value` is
// the summed element at flat index `at` (and may also write an elementwise result there).
template <typename F>
__device__ void column_chunk(F value, float *partial, int rows, int width, int chunk) {
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= width) return;
  int r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
  float acc = 0.0f;
  for (int r = r0; r < r1; ++r) acc += value((size_t)r * width + j);
  partial[(size_t)blockIdx.y * width + j] = acc;
}

template <typename T>
__device__ void colsum_partial(const T *x, float *partial, int rows, int width, int chunk) {
  column_chunk([=](size_t at) { return ld(x, at); }, partial, rows, width, chunk);
}

// grid ⌈width/256⌉, 256 threads.
template <typename T>
__device__ void colsum_finish(const float *partial, T *out, int chunks, int width) {
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= width) return;
  float acc = 0.0f;
  for (int c = 0; c < chunks; ++c) acc += partial[(size_t)c * width + j];
  st(out, j, acc);
}
