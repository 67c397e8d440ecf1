// LayerNorm forward and backward: the GPU twin of nerpos-kernels' CPU LayerNorm (src/ops/layer_norm.rs).
#include "columns.cuh"

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

NERPOS_EXPORT_TYPED(ln_fwd, (const T *x, const T *w, const T *b, T *y, int rows, int h, float eps),
                    (x, w, b, y, rows, h, eps))
NERPOS_EXPORT_TYPED(ln_bwd_rows,
                    (const T *x, const T *w, const T *dy, T *dx, float *stats, int rows, int h, float eps),
                    (x, w, dy, dx, stats, rows, h, eps))
NERPOS_EXPORT_TYPED(ln_bwd_cols,
                    (const T *x, const T *dy, const float *stats, float *partial, int rows, int h, int chunk),
                    (x, dy, stats, partial, rows, h, chunk))
