// Deterministic column sums, the pattern every bias and LayerNorm-weight gradient uses:
// `partial[c * width + j]` = Σ over rows [c·chunk, (c+1)·chunk) of column j, then `out[j]` = Σ_c
// partial[c * width + j] in a fixed order — no atomics, so a step gives the same bits every time (what
// exact resume relies on). Launch: grid (⌈width/256⌉, chunks), 256 threads; the finish kernel
// ⌈width/32⌉ blocks of 32 × FINISH_LANES.
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

// grid ⌈width/32⌉, block (32, FINISH_LANES), 32 × FINISH_LANES floats of shared memory. Lane y of
// column j sums chunks y, y + FINISH_LANES, … in order (a warp reads 32 adjacent columns), then lane
// 0 adds the lanes' sums in lane order: the same order on every run, and a serial tail of
// chunks / FINISH_LANES loads instead of `chunks` (up to 512) on a handful of blocks.
template <typename T>
__device__ void colsum_finish(const float *partial, T *out, int chunks, int width) {
  NERPOS_DYNAMIC_SHARED(lanes);
  int j = blockIdx.x * 32 + threadIdx.x;
  float acc = 0.0f;
  if (j < width)
    for (int c = threadIdx.y; c < chunks; c += FINISH_LANES) acc += partial[(size_t)c * width + j];
  lanes[threadIdx.y * 32 + threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y != 0 || j >= width) return;
  float sum = 0.0f;
  for (int y = 0; y < FINISH_LANES; ++y) sum += lanes[y * 32 + threadIdx.x];
  st(out, j, sum);
}
