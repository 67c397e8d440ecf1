// Bias + dropout + residual and, backward, the gradient through dropout with the bias gradient: the
// GPU twin of src/ops/residual.rs. The mask comes scaled by 1/(1−p) in the storage type (drawn by the
// mask kernels, dropout_masks.cu), or null without dropout.
#include "columns.cuh"

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

// dy = dz·mask with the partial column sums of dy. Launch as colsum_partial.
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

NERPOS_EXPORT_TYPED(bias_dropout_residual,
                    (const T *y, const T *bias, const T *mask, const T *residual, T *z, unsigned long long n,
                     int width),
                    (y, bias, mask, residual, z, n, width))
NERPOS_EXPORT_TYPED(dropout_bwd_cols, (const T *dz, const T *mask, T *dy, float *partial, int rows, int width,
                                       int chunk),
                    (dz, mask, dy, partial, rows, width, chunk))
