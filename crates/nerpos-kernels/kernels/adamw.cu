// AdamW for f32 master weights (PyTorch's algorithm, decoupled weight decay), one launch per
// parameter, in place: the GPU twin of the CPU update in src/ops/adamw.rs, with the same operations
// in the same order.
#include "common.cuh"

// One element's update in place; returns the new weight. The gradient's factor is grad_scale · clip[0]
// (the kernels below fold it once): the clipping factor stays on the device. A non-finite clip[0] is
// the step's guard (a NaN loss or gradient norm, src/optim/clip.rs in nerpos-train): the kernels then
// leave the step out — weights, moments and the bf16 copy untouched — with no read-back to the host.
__device__ __forceinline__ float adamw_one(float *p, const float *g, float *m, float *v, unsigned long long i,
    float grad_scale, float lr_wd, float beta1, float beta2, float eps, float step_size, float bc2_sqrt) {
  float gi = g[i] * grad_scale;
  float pi = p[i] * (1.0f - lr_wd);
  float mi = m[i] + (1.0f - beta1) * (gi - m[i]);
  float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  float pn = as_on_gpu(pi - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps));
  p[i] = pn;
  return pn;
}

extern "C" __global__ void nerpos_adamw(float *p, const float *g, float *m, float *v, const float *clip,
    unsigned long long n, float grad_scale, float lr_wd, float beta1, float beta2, float eps,
    float step_size, float bc2_sqrt) {
  if (!finite_bits(clip[0])) return;
  grad_scale *= clip[0];
  NERPOS_GRID_STRIDE(i, n) {
    adamw_one(p, g, m, v, i, grad_scale, lr_wd, beta1, beta2, eps, step_size, bc2_sqrt);
  }
}
NERPOS_EXPORT(nerpos_adamw)

// The same update, also writing the new value rounded to bf16 (nearest even, as a cast) into h.
extern "C" __global__ void nerpos_adamw_half(float *p, const float *g, float *m, float *v,
    const float *clip, unsigned short *h, unsigned long long n, float grad_scale, float lr_wd,
    float beta1, float beta2, float eps, float step_size, float bc2_sqrt) {
  if (!finite_bits(clip[0])) return;
  grad_scale *= clip[0];
  NERPOS_GRID_STRIDE(i, n) {
    float pn = adamw_one(p, g, m, v, i, grad_scale, lr_wd, beta1, beta2, eps, step_size, bc2_sqrt);
    h[i] = bf16_bits(pn);
  }
}
NERPOS_EXPORT(nerpos_adamw_half)
