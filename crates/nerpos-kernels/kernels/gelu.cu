// Bias + GELU (the exact, erf form) and its backward with the bias gradient: the GPU twin of
// src/ops/gelu.rs. Elementwise kernels broadcast the bias over rows of `width`, in grid-stride loops.
#include "columns.cuh"

#define SQRT_HALF 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f

__device__ __forceinline__ float gelu(float u) { return 0.5f * u * (1.0f + erff(u * SQRT_HALF)); }

__device__ __forceinline__ float gelu_grad(float u) {
  float cdf = 0.5f * (1.0f + erff(u * SQRT_HALF));
  float pdf = expf(-0.5f * u * u) * INV_SQRT_2PI;
  return cdf + u * pdf;
}

// u = y + bias, g = gelu(u); `out` holds u (n values) then g (n values).
template <typename T>
__device__ void bias_gelu(const T *y, const T *bias, T *out, size_t n, int width) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float u = ld(y, i) + ld(bias, i % width);
    st(out, i, u);
    st(out, n + i, gelu(u));
  }
}

// du = dg·gelu'(u) with the partial column sums of du (the bias gradient). Launch as colsum_partial.
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

NERPOS_EXPORT_TYPED(bias_gelu, (const T *y, const T *bias, T *out, unsigned long long n, int width),
                    (y, bias, out, n, width))
NERPOS_EXPORT_TYPED(gelu_bwd_cols, (const T *u, const T *dg, T *du, float *partial, int rows, int width, int chunk),
                    (u, dg, du, partial, rows, width, chunk))
