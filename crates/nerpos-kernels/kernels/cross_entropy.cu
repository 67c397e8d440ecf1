// Softmax cross-entropy on the device: the GPU twin of src/ops/cross_entropy.rs.
#include "common.cuh"

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

NERPOS_EXPORT_TYPED(cross_entropy, (const T *logits, const uint32_t *labels, float *loss, T *grad, int m, int c),
                    (logits, labels, loss, grad, m, c))
