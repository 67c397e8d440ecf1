// Multi-tensor kernels: one launch over every parameter of a model instead of one (or several) per
// parameter — the sum of the gradients' squares (the clipping norm) and the AdamW update. The tensors
// are cut into chunks (src/ops/multi_tensor.rs plans them); a block takes a chunk. The gradients' storage
// type is T (f32 or bf16); weights and moments are f32.
#include "common.cuh"

// Built by the Rust side as bytes (ops/multi_tensor.rs); sizes checked against layout.h.
struct Chunk {
  uint32_t tensor;  // index into the tensor table
  uint32_t pad;
  uint64_t start;   // first element of the chunk in its tensor
  uint64_t len;     // elements
};
static_assert(sizeof(Chunk) == CHUNK_SIZE, "Chunk's size differs from the Rust planner's");

struct AdamWParam {
  float *p;
  const void *g;       // T
  float *m, *v;
  uint16_t *h;         // the bf16 compute copy, or null
  float lr_wd;         // lr · weight decay of this parameter
  float step_size;     // lr / (1 − β1ᵗ)
};
static_assert(sizeof(AdamWParam) == ADAMW_PARAM_SIZE, "AdamWParam's size differs from the Rust side's");


// Sum of `v` over the block's threads, in a fixed order (the same bits every run); every thread gets it.
__device__ float block_sum(float v, float *shared) {
  int t = threadIdx.x;
  shared[t] = v;
  __syncthreads();
  for (int half = MT_THREADS / 2; half > 0; half >>= 1) {
    if (t < half) shared[t] += shared[t + half];
    __syncthreads();
  }
  float out = shared[0];
  __syncthreads();
  return out;
}

// partial[c] = Σ x² over chunk c (one block of MT_THREADS per chunk; MT_THREADS floats of shared memory).
template <typename T>
__device__ void sumsq_chunks(const uint64_t *tensors, const Chunk *chunks, float *partial) {
  NERPOS_DYNAMIC_SHARED(shared);
  const Chunk c = chunks[blockIdx.x];
  const T *x = (const T *)tensors[c.tensor];
  float acc = 0.0f;
  for (uint64_t i = threadIdx.x; i < c.len; i += MT_THREADS) {
    float v = ld(x, c.start + i);
    acc += v * v;
  }
  float total = block_sum(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// out[0] = Σ partial[0..n) (one block of MT_THREADS, fixed order; MT_THREADS floats of shared memory).
extern "C" __global__ void nerpos_sum_finish(const float *partial, unsigned long long n, float *out) {
  NERPOS_DYNAMIC_SHARED(shared);
  float acc = 0.0f;
  for (unsigned long long i = threadIdx.x; i < n; i += MT_THREADS) acc += partial[i];
  float total = block_sum(acc, shared);
  if (threadIdx.x == 0) out[0] = total;
}
NERPOS_EXPORT(nerpos_sum_finish)

// AdamW over every chunk of every parameter (one block per chunk), the gradient's factor grad_scale ·
// clip[0] (the clipping factor stays on the device), writing the bf16 copy where a parameter has one.
// A non-finite clip[0] is the step's guard (as in adamw.cu): the step is left out, nothing written.
template <typename T>
__device__ void adamw_chunks(const AdamWParam *params, const Chunk *chunks, const float *clip, float grad_scale,
                             float beta1, float beta2, float eps, float bc2_sqrt) {
  if (!finite_bits(clip[0])) return;
  const Chunk c = chunks[blockIdx.x];
  const AdamWParam a = params[c.tensor];
  const T *g = (const T *)a.g;
  float scale = grad_scale * clip[0];
  for (uint64_t k = threadIdx.x; k < c.len; k += MT_THREADS) {
    uint64_t i = c.start + k;
    float gi = ld(g, i) * scale;
    float pi = a.p[i] * (1.0f - a.lr_wd);
    float mi = a.m[i] + (1.0f - beta1) * (gi - a.m[i]);
    float vi = beta2 * a.v[i] + (1.0f - beta2) * gi * gi;
    a.m[i] = mi;
    a.v[i] = vi;
    float pn = as_on_gpu(pi - a.step_size * mi / (sqrtf(vi) / bc2_sqrt + eps));
    a.p[i] = pn;
    if (a.h) a.h[i] = bf16_bits(pn);
  }
}

NERPOS_EXPORT_TYPED(sumsq_chunks, (const uint64_t *tensors, const Chunk *chunks, float *partial),
                    (tensors, chunks, partial))
NERPOS_EXPORT_TYPED(adamw_chunks,
                    (const AdamWParam *params, const Chunk *chunks, const float *clip, float grad_scale,
                     float beta1, float beta2, float eps, float bc2_sqrt),
                    (params, chunks, clip, grad_scale, beta1, beta2, eps, bc2_sqrt))
