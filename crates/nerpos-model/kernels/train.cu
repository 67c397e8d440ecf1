// Fused CUDA kernels of the training pass on the packed layout ([N, H] rows of real tokens), each the
// GPU twin of a CPU kernel in src/ops.rs, src/kernels.rs or src/attention.rs (the CPU code is the
// reference they are checked against: `nerpos-gpu-bench kernels`).
//
// Every kernel exists for f32 and bf16 storage (suffix _f32 / _bf16); arithmetic, statistics and
// accumulation are f32 whatever the storage. Column sums (bias and LayerNorm-weight gradients) are
// deterministic: per-chunk partial sums in a fixed order, then a fixed-order sum of the chunks — no
// atomics, so a step gives the same bits every time (what exact resume relies on).
//
// Compiled by build.rs into a fatbin (cubins for sm_80 and sm_90 and PTX for later GPUs), so nothing
// is compiled at run time. With NERPOS_CUDA_EMU defined the same code builds for the CPU against
// kernels/emu/cuda_emu.h (tests/cuda_kernels.rs runs it there against the CPU kernels).

#ifdef NERPOS_CUDA_EMU
#include "emu/cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <stdint.h>
#define NERPOS_DYNAMIC_SHARED(name) extern __shared__ float name[]
#endif

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float ld(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16 *p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float *p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16 *p, size_t i, float v) { p[i] = __float2bfloat16_rn(v); }

#include "dropout.cuh"

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

#define SQRT_HALF 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f

__device__ __forceinline__ float gelu(float u) { return 0.5f * u * (1.0f + erff(u * SQRT_HALF)); }

__device__ __forceinline__ float gelu_grad(float u) {
  float cdf = 0.5f * (1.0f + erff(u * SQRT_HALF));
  float pdf = expf(-0.5f * u * u) * INV_SQRT_2PI;
  return cdf + u * pdf;
}

// ------------------------------------------------------------------------------------------------
// Column sums: `partial[c * width + j]` = Σ over rows [c·chunk, (c+1)·chunk) of column j; then
// `out[j]` = Σ_c partial[c * width + j] in chunk order. Launch: grid (⌈width/256⌉, chunks), 256 threads.

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

// ------------------------------------------------------------------------------------------------
// LayerNorm over rows of width h: one warp per row, blockDim (32, 4). Two passes for the variance
// (no cancellation), as the CPU kernel.

struct RowStats {
  float mean, rstd;
};

// Mean and 1/std of one row (the calling warp's; every lane gets them).
template <typename T>
__device__ RowStats row_stats(const T *xr, int h, float eps, int lane) {
  float s = 0.0f;
  for (int i = lane; i < h; i += 32) s += ld(xr, i);
  float mean = warp_sum(s) / h;
  float v = 0.0f;
  for (int i = lane; i < h; i += 32) {
    float c = ld(xr, i) - mean;
    v += c * c;
  }
  return {mean, 1.0f / sqrtf(warp_sum(v) / h + eps)};
}

template <typename T>
__device__ void ln_fwd(const T *x, const T *w, const T *b, T *y, int rows, int h, float eps) {
  int r = blockIdx.x * blockDim.y + threadIdx.y, lane = threadIdx.x;
  if (r >= rows) return;
  const T *xr = x + (size_t)r * h;
  T *yr = y + (size_t)r * h;
  RowStats rs = row_stats(xr, h, eps, lane);
  float mean = rs.mean, rstd = rs.rstd;
  for (int i = lane; i < h; i += 32) st(yr, i, (ld(xr, i) - mean) * rstd * ld(w, i) + ld(b, i));
}

// dx rows (warp per row) and each row's (mean, rstd) for the column pass.
template <typename T>
__device__ void ln_bwd_rows(const T *x, const T *w, const T *dy, T *dx, float *stats, int rows, int h,
                            float eps) {
  int r = blockIdx.x * blockDim.y + threadIdx.y, lane = threadIdx.x;
  if (r >= rows) return;
  const T *xr = x + (size_t)r * h;
  const T *gr = dy + (size_t)r * h;
  T *dr = dx + (size_t)r * h;
  RowStats rs = row_stats(xr, h, eps, lane);
  float mean = rs.mean, rstd = rs.rstd;
  float m1 = 0.0f, m2 = 0.0f;
  for (int i = lane; i < h; i += 32) {
    float g = ld(gr, i) * ld(w, i);
    m1 += g;
    m2 += g * (ld(xr, i) - mean) * rstd;
  }
  m1 = warp_sum(m1) / h;
  m2 = warp_sum(m2) / h;
  for (int i = lane; i < h; i += 32) {
    float xhat = (ld(xr, i) - mean) * rstd;
    st(dr, i, rstd * (ld(gr, i) * ld(w, i) - m1 - xhat * m2));
  }
  if (lane == 0) {
    stats[2 * r] = mean;
    stats[2 * r + 1] = rstd;
  }
}

// Partial sums of dweight = Σ dy·xhat (columns 0..h) and dbias = Σ dy (columns h..2h).
template <typename T>
__device__ void ln_bwd_cols(const T *x, const T *dy, const float *stats, float *partial, int rows, int h,
                            int chunk) {
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= h) return;
  int r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
  float aw = 0.0f, ab = 0.0f;
  for (int r = r0; r < r1; ++r) {
    size_t at = (size_t)r * h + j;
    float g = ld(dy, at);
    aw += g * (ld(x, at) - stats[2 * r]) * stats[2 * r + 1];
    ab += g;
  }
  partial[(size_t)blockIdx.y * 2 * h + j] = aw;
  partial[(size_t)blockIdx.y * 2 * h + h + j] = ab;
}

// ------------------------------------------------------------------------------------------------
// Elementwise, with the bias broadcast over rows of width `width`. Grid-stride loops.

// u = y + bias, g = gelu(u); `out` holds u (n values) then g (n values).
template <typename T>
__device__ void bias_gelu(const T *y, const T *bias, T *out, size_t n, int width) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float u = ld(y, i) + ld(bias, i % width);
    st(out, i, u);
    st(out, n + i, gelu(u));
  }
}

// z = (y + bias)·mask + residual; `mask` (already scaled by 1/(1−p)) may be null (no dropout).
template <typename T>
__device__ void bias_dropout_residual(const T *y, const T *bias, const T *mask, const T *residual, T *z,
                                      size_t n, int width) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float v = ld(y, i) + ld(bias, i % width);
    if (mask) v *= ld(mask, i);
    st(z, i, v + ld(residual, i));
  }
}

// Column-chunk passes that also write an elementwise result: du = dg·gelu'(u) with partial sums of
// du; dy = dz·mask with partial sums of dy. Launch as colsum_partial.
template <typename T>
__device__ void gelu_bwd_cols(const T *u, const T *dg, T *du, float *partial, int rows, int width,
                              int chunk) {
  auto value = [=](size_t at) {
    float d = ld(dg, at) * gelu_grad(ld(u, at));
    st(du, at, d);
    return d;
  };
  column_chunk(value, partial, rows, width, chunk);
}

template <typename T>
__device__ void dropout_bwd_cols(const T *dz, const T *mask, T *dy, float *partial, int rows, int width,
                                 int chunk) {
  auto value = [=](size_t at) {
    float d = ld(dz, at);
    if (mask) d *= ld(mask, at);
    st(dy, at, d);
    return d;
  };
  column_chunk(value, partial, rows, width, chunk);
}

// ------------------------------------------------------------------------------------------------
// Attention within each packed row. One block per (row, head), 4 warps; keys and values staged in
// shared memory in tiles of ATT_TILE rows; a warp handles queries warp, warp + 4, ... The softmax
// output P (f32, heads·L² per row at `poff[row]`) is kept for the backward pass, as on the CPU.
// Dropout on P is keyed by the sentence (dropout.cuh): element h·L² + i·L + j of the row's mask at the
// layer's site, which forward and backward regenerate (nothing is stored) and which does not depend on
// the row's place in the batch. Q, K, V are read from the fused projection qkv [N, 3H].

#define ATT_TILE 32
#define ATT_WARPS 4

struct AttShape {
  int heads, dh;
  float scale;
  uint64_t site;       // dropout site (Site::code; used when threshold < 65536)
  uint32_t threshold;  // 65536: no dropout
  float keep_scale;    // 1/(1−p)
};

// Loads `count` rows (≤ ATT_TILE) of one head's dh columns from `src` (row stride `stride`, starting at
// token `t0`) into shared `dst` as f32 with row pitch dh + 1 (no bank conflicts on column walks).
template <typename T>
__device__ void load_tile(float *dst, const T *src, int t0, int count, int stride, int col0, int dh) {
  for (int e = threadIdx.x + threadIdx.y * 32; e < count * dh; e += 32 * ATT_WARPS) {
    int rr = e / dh, d = e % dh;
    dst[rr * (dh + 1) + d] = ld(src, (size_t)(t0 + rr) * stride + col0 + d);
  }
}

// Forward: P (softmax of the scaled scores) into `probs`, context accumulated in f32 into `ctx` [N, H].
// The key of this block's row at the layer's dropout site (unused without dropout, when keys is null).
__device__ __forceinline__ uint64_t row_key(const uint64_t *keys, int row, const AttShape &s) {
  return s.threshold < 65536u ? nerpos_site_key(keys[row], s.site) : 0;
}

template <typename T>
__device__ void attn_fwd(const T *qkv, const int *starts, const uint64_t *keys, const long long *poff,
                         float *probs, float *ctx, AttShape s) {
  NERPOS_DYNAMIC_SHARED(smem);
  int row = blockIdx.x / s.heads, hd = blockIdx.x % s.heads;
  int t0 = starts[row], L = starts[row + 1] - t0;
  int H = s.heads * s.dh, stride = 3 * H, dh = s.dh;
  int warp = threadIdx.y, lane = threadIdx.x;
  float *tile = smem;                                  // ATT_TILE × (dh + 1)
  float *qrow = smem + ATT_TILE * (dh + 1) + warp * dh;  // this warp's query
  float *P = probs + poff[row] + (size_t)hd * L * L;
  uint64_t key = row_key(keys, row, s);
  // Scores, tile by tile of keys.
  for (int k0 = 0; k0 < L; k0 += ATT_TILE) {
    int kn = min(ATT_TILE, L - k0);
    __syncthreads();
    load_tile(tile, qkv, t0 + k0, kn, stride, H + hd * dh, dh);
    __syncthreads();
    for (int i = warp; i < L; i += ATT_WARPS) {
      for (int d = lane; d < dh; d += 32) qrow[d] = ld(qkv, (size_t)(t0 + i) * stride + hd * dh + d);
      __syncwarp();
      for (int j = lane; j < kn; j += 32) {
        float acc = 0.0f;
        for (int d = 0; d < dh; ++d) acc += qrow[d] * tile[j * (dh + 1) + d];
        P[(size_t)i * L + k0 + j] = acc * s.scale;
      }
      __syncwarp();
    }
  }
  __syncthreads();
  // Softmax of each query's row.
  for (int i = warp; i < L; i += ATT_WARPS) {
    float *pr = P + (size_t)i * L;
    float m = -INFINITY;
    for (int j = lane; j < L; j += 32) m = fmaxf(m, pr[j]);
    m = warp_max(m);
    float sum = 0.0f;
    for (int j = lane; j < L; j += 32) {
      float e = expf(pr[j] - m);
      pr[j] = e;
      sum += e;
    }
    float inv = 1.0f / warp_sum(sum);
    for (int j = lane; j < L; j += 32) pr[j] *= inv;
  }
  __syncthreads();
  // Context = dropout(P)·V, tile by tile of values; lane owns output dims lane, lane + 32, ...
  for (int k0 = 0; k0 < L; k0 += ATT_TILE) {
    int kn = min(ATT_TILE, L - k0);
    __syncthreads();
    load_tile(tile, qkv, t0 + k0, kn, stride, 2 * H + hd * dh, dh);
    __syncthreads();
    for (int i = warp; i < L; i += ATT_WARPS) {
      const float *pr = P + (size_t)i * L + k0;
      size_t mrow = (size_t)hd * L * L + (size_t)i * L + k0;
      for (int d = lane; d < dh; d += 32) {
        float acc = 0.0f;
        for (int j = 0; j < kn; ++j) {
          float p = pr[j];
          if (s.threshold < 65536u) p = nerpos_keep(key, mrow + j, s.threshold) ? p * s.keep_scale : 0.0f;
          acc += p * tile[j * (dh + 1) + d];
        }
        float *c = ctx + (size_t)(t0 + i) * H + hd * dh + d;
        *c = (k0 == 0 ? 0.0f : *c) + acc;
      }
    }
  }
}

// Backward, phase 1: dZ (into `dz`, the same layout as P) = P ⊙ (dP − Σⱼ P·dP) with dP = mask ⊙ (dctx·Vᵀ).
template <typename T>
__device__ void attn_bwd_scores(const T *qkv, const T *dctx, const int *starts, const uint64_t *keys,
                                const long long *poff, const float *probs, float *dz, AttShape s) {
  NERPOS_DYNAMIC_SHARED(smem);
  int row = blockIdx.x / s.heads, hd = blockIdx.x % s.heads;
  int t0 = starts[row], L = starts[row + 1] - t0;
  int H = s.heads * s.dh, stride = 3 * H, dh = s.dh;
  int warp = threadIdx.y, lane = threadIdx.x;
  float *tile = smem;
  float *grow = smem + ATT_TILE * (dh + 1) + warp * dh;
  size_t local = (size_t)hd * L * L, base = poff[row] + local;
  uint64_t key = row_key(keys, row, s);
  const float *P = probs + base;
  float *DZ = dz + base;
  for (int k0 = 0; k0 < L; k0 += ATT_TILE) {
    int kn = min(ATT_TILE, L - k0);
    __syncthreads();
    load_tile(tile, qkv, t0 + k0, kn, stride, 2 * H + hd * dh, dh);
    __syncthreads();
    for (int i = warp; i < L; i += ATT_WARPS) {
      for (int d = lane; d < dh; d += 32) grow[d] = ld(dctx, (size_t)(t0 + i) * H + hd * dh + d);
      __syncwarp();
      for (int j = lane; j < kn; j += 32) {
        float acc = 0.0f;
        for (int d = 0; d < dh; ++d) acc += grow[d] * tile[j * (dh + 1) + d];
        size_t at = (size_t)i * L + k0 + j;
        if (s.threshold < 65536u) acc = nerpos_keep(key, local + at, s.threshold) ? acc * s.keep_scale : 0.0f;
        DZ[at] = acc;
      }
      __syncwarp();
    }
  }
  __syncthreads();
  for (int i = warp; i < L; i += ATT_WARPS) {
    const float *pr = P + (size_t)i * L;
    float *dr = DZ + (size_t)i * L;
    float dot = 0.0f;
    for (int j = lane; j < L; j += 32) dot += pr[j] * dr[j];
    dot = warp_sum(dot);
    for (int j = lane; j < L; j += 32) dr[j] = pr[j] * (dr[j] - dot);
  }
}

// Backward, phase 2: dQ = scale·dZ·K (rows of queries) into dqkv [N, 3H] (f32), columns of Q.
template <typename T>
__device__ void attn_bwd_dq(const T *qkv, const int *starts, const long long *poff, const float *dz,
                            float *dqkv, AttShape s) {
  NERPOS_DYNAMIC_SHARED(smem);
  int row = blockIdx.x / s.heads, hd = blockIdx.x % s.heads;
  int t0 = starts[row], L = starts[row + 1] - t0;
  int H = s.heads * s.dh, stride = 3 * H, dh = s.dh;
  int warp = threadIdx.y, lane = threadIdx.x;
  float *tile = smem;
  const float *DZ = dz + poff[row] + (size_t)hd * L * L;
  for (int k0 = 0; k0 < L; k0 += ATT_TILE) {
    int kn = min(ATT_TILE, L - k0);
    __syncthreads();
    load_tile(tile, qkv, t0 + k0, kn, stride, H + hd * dh, dh);
    __syncthreads();
    for (int i = warp; i < L; i += ATT_WARPS) {
      const float *dr = DZ + (size_t)i * L + k0;
      for (int d = lane; d < dh; d += 32) {
        float acc = 0.0f;
        for (int j = 0; j < kn; ++j) acc += dr[j] * tile[j * (dh + 1) + d];
        float *o = dqkv + (size_t)(t0 + i) * stride + hd * dh + d;
        *o = (k0 == 0 ? 0.0f : *o) + acc * s.scale;
      }
    }
  }
}

// Backward, phase 3: dK = scale·dZᵀ·Q and dV = dropout(P)ᵀ·dctx (rows of keys), tile by tile of
// queries (two tiles in shared memory: Q and dctx).
template <typename T>
__device__ void attn_bwd_dkv(const T *qkv, const T *dctx, const int *starts, const uint64_t *keys,
                             const long long *poff, const float *probs, const float *dz, float *dqkv,
                             AttShape s) {
  NERPOS_DYNAMIC_SHARED(smem);
  int row = blockIdx.x / s.heads, hd = blockIdx.x % s.heads;
  int t0 = starts[row], L = starts[row + 1] - t0;
  int H = s.heads * s.dh, stride = 3 * H, dh = s.dh;
  int warp = threadIdx.y, lane = threadIdx.x;
  float *qt = smem;
  float *gt = smem + ATT_TILE * (dh + 1);
  size_t local = (size_t)hd * L * L, base = poff[row] + local;
  uint64_t key = row_key(keys, row, s);
  const float *P = probs + base;
  const float *DZ = dz + base;
  for (int q0 = 0; q0 < L; q0 += ATT_TILE) {
    int qn = min(ATT_TILE, L - q0);
    __syncthreads();
    load_tile(qt, qkv, t0 + q0, qn, stride, hd * dh, dh);
    load_tile(gt, dctx, t0 + q0, qn, H, hd * dh, dh);
    __syncthreads();
    for (int j = warp; j < L; j += ATT_WARPS) {
      for (int d = lane; d < dh; d += 32) {
        float ak = 0.0f, av = 0.0f;
        for (int ii = 0; ii < qn; ++ii) {
          size_t at = (size_t)(q0 + ii) * L + j;
          float p = P[at];
          if (s.threshold < 65536u) p = nerpos_keep(key, local + at, s.threshold) ? p * s.keep_scale : 0.0f;
          ak += DZ[at] * qt[ii * (dh + 1) + d];
          av += p * gt[ii * (dh + 1) + d];
        }
        float *ok = dqkv + (size_t)(t0 + j) * stride + H + hd * dh + d;
        float *ov = dqkv + (size_t)(t0 + j) * stride + 2 * H + hd * dh + d;
        *ok = (q0 == 0 ? 0.0f : *ok) + ak * s.scale;
        *ov = (q0 == 0 ? 0.0f : *ov) + av;
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Softmax cross-entropy of logits [M, C] against labels [M]: per-row loss (f32) and d(loss)/d(logits).
// One warp per row, blockDim (32, 4).
template <typename T>
__device__ void cross_entropy(const T *logits, const uint32_t *labels, float *loss, T *grad, int m, int c) {
  int r = blockIdx.x * blockDim.y + threadIdx.y, lane = threadIdx.x;
  if (r >= m) return;
  const T *z = logits + (size_t)r * c;
  float mx = -INFINITY;
  for (int j = lane; j < c; j += 32) mx = fmaxf(mx, ld(z, j));
  mx = warp_max(mx);
  float sum = 0.0f;
  for (int j = lane; j < c; j += 32) sum += expf(ld(z, j) - mx);
  sum = warp_sum(sum);
  int label = (int)labels[r];
  for (int j = lane; j < c; j += 32) {
    float p = expf(ld(z, j) - mx) / sum;
    st(grad, (size_t)r * c + j, p - (j == label ? 1.0f : 0.0f));
  }
  if (lane == 0) loss[r] = logf(sum) - (ld(z, label) - mx);
}

// ------------------------------------------------------------------------------------------------
// Exported entry points, one per kernel and storage type.

#define EXPORT(T, S)                                                                                     \
  extern "C" __global__ void nerpos_colsum_partial_##S(const T *x, float *partial, int rows, int width,   \
                                                       int chunk) {                                      \
    colsum_partial<T>(x, partial, rows, width, chunk);                                                    \
  }                                                                                                      \
  extern "C" __global__ void nerpos_colsum_finish_##S(const float *partial, T *out, int chunks, int width) { \
    colsum_finish<T>(partial, out, chunks, width);                                                        \
  }                                                                                                      \
  extern "C" __global__ void nerpos_ln_fwd_##S(const T *x, const T *w, const T *b, T *y, int rows, int h,  \
                                               float eps) {                                              \
    ln_fwd<T>(x, w, b, y, rows, h, eps);                                                                  \
  }                                                                                                      \
  extern "C" __global__ void nerpos_ln_bwd_rows_##S(const T *x, const T *w, const T *dy, T *dx,          \
                                                    float *stats, int rows, int h, float eps) {          \
    ln_bwd_rows<T>(x, w, dy, dx, stats, rows, h, eps);                                                    \
  }                                                                                                      \
  extern "C" __global__ void nerpos_ln_bwd_cols_##S(const T *x, const T *dy, const float *stats,         \
                                                    float *partial, int rows, int h, int chunk) {        \
    ln_bwd_cols<T>(x, dy, stats, partial, rows, h, chunk);                                                \
  }                                                                                                      \
  extern "C" __global__ void nerpos_bias_gelu_##S(const T *y, const T *bias, T *out, unsigned long long n, \
                                                  int width) {                                           \
    bias_gelu<T>(y, bias, out, n, width);                                                                 \
  }                                                                                                      \
  extern "C" __global__ void nerpos_bias_dropout_residual_##S(const T *y, const T *bias, const T *mask,  \
                                                              const T *residual, T *z,                   \
                                                              unsigned long long n, int width) {         \
    bias_dropout_residual<T>(y, bias, mask, residual, z, n, width);                                       \
  }                                                                                                      \
  extern "C" __global__ void nerpos_gelu_bwd_cols_##S(const T *u, const T *dg, T *du, float *partial,    \
                                                      int rows, int width, int chunk) {                  \
    gelu_bwd_cols<T>(u, dg, du, partial, rows, width, chunk);                                             \
  }                                                                                                      \
  extern "C" __global__ void nerpos_dropout_bwd_cols_##S(const T *dz, const T *mask, T *dy,              \
                                                         float *partial, int rows, int width, int chunk) { \
    dropout_bwd_cols<T>(dz, mask, dy, partial, rows, width, chunk);                                       \
  }                                                                                                      \
  extern "C" __global__ void nerpos_attn_fwd_##S(const T *qkv, const int *starts, const uint64_t *keys,  \
                                                 const long long *poff, float *probs, float *ctx,        \
                                                 AttShape s) {                                           \
    attn_fwd<T>(qkv, starts, keys, poff, probs, ctx, s);                                                  \
  }                                                                                                      \
  extern "C" __global__ void nerpos_attn_bwd_scores_##S(const T *qkv, const T *dctx, const int *starts,  \
                                                        const uint64_t *keys, const long long *poff,     \
                                                        const float *probs, float *dz, AttShape s) {     \
    attn_bwd_scores<T>(qkv, dctx, starts, keys, poff, probs, dz, s);                                      \
  }                                                                                                      \
  extern "C" __global__ void nerpos_attn_bwd_dq_##S(const T *qkv, const int *starts,                     \
                                                    const long long *poff, const float *dz, float *dqkv, \
                                                    AttShape s) {                                        \
    attn_bwd_dq<T>(qkv, starts, poff, dz, dqkv, s);                                                       \
  }                                                                                                      \
  extern "C" __global__ void nerpos_attn_bwd_dkv_##S(const T *qkv, const T *dctx, const int *starts,     \
                                                     const uint64_t *keys, const long long *poff,        \
                                                     const float *probs, const float *dz, float *dqkv,   \
                                                     AttShape s) {                                       \
    attn_bwd_dkv<T>(qkv, dctx, starts, keys, poff, probs, dz, dqkv, s);                                   \
  }                                                                                                      \
  extern "C" __global__ void nerpos_dropout_mask_##S(T *out, const uint64_t *keys, const uint32_t *row,   \
                                                     const uint32_t *pos, unsigned long long count,      \
                                                     int width, uint64_t site, uint32_t threshold,       \
                                                     float scale) {                                      \
    dropout_mask<T>(out, keys, row, pos, count, width, site, threshold, scale);                           \
  }                                                                                                      \
  extern "C" __global__ void nerpos_attn_dropout_mask_padded_##S(T *out, const uint64_t *keys,            \
                                                                 const int *starts, int heads, int t,    \
                                                                 uint64_t site, uint32_t threshold,      \
                                                                 float scale) {                          \
    attn_dropout_mask_padded<T>(out, keys, starts, heads, t, site, threshold, scale);                     \
  }                                                                                                      \
  extern "C" __global__ void nerpos_cross_entropy_##S(const T *logits, const uint32_t *labels,           \
                                                      float *loss, T *grad, int m, int c) {              \
    cross_entropy<T>(logits, labels, loss, grad, m, c);                                                   \
  }

EXPORT(float, f32)
EXPORT(bf16, bf16)

// The optimiser's kernels live in the same fatbin (one module to load, nothing compiled at run time).
#include "adamw.cu"
