// Dropout masks drawn on the GPU from the sentences' keys (dropout.cuh): the GPU twin of the CPU
// masks in src/dropout.rs, element for element.
#include "dropout.cuh"

// A scaled keep-mask of a [count, width] tensor whose row e is position pos[e] of sentence row[e]:
// out[e, c] = 1/(1−p) if element pos[e]·width + c of that sentence's mask at `site` is kept, else 0.
// Grid-stride over count·width elements.
template <typename T>
__device__ void dropout_mask(T *out, const uint64_t *keys, const uint32_t *row, const uint32_t *pos,
                             unsigned long long count, int width, uint64_t site, uint32_t threshold,
                             float scale) {
  unsigned long long n = count * (unsigned long long)width;
  for (unsigned long long at = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; at < n;
       at += (unsigned long long)gridDim.x * blockDim.x) {
    unsigned long long e = at / width, c = at % width;
    uint64_t key = nerpos_site_key(keys[row[e]], site);
    st(out, at, nerpos_keep(key, (uint64_t)pos[e] * width + c, threshold) ? scale : 0.0f);
  }
}

// The same for attention probabilities gathered into a padded [B, heads, T, T] block: element
// (b, h, i, j) is element h·L² + i·L + j of sentence b's mask (L its length); padding is 0.
// One block per (b, h).
template <typename T>
__device__ void attn_dropout_mask_padded(T *out, const uint64_t *keys, const int *starts, int heads, int t,
                                         uint64_t site, uint32_t threshold, float scale) {
  int b = blockIdx.x / heads, h = blockIdx.x % heads;
  int len = starts[b + 1] - starts[b];
  uint64_t key = nerpos_site_key(keys[b], site);
  T *o = out + (size_t)blockIdx.x * t * t;
  for (int e = threadIdx.x; e < t * t; e += blockDim.x) {
    int i = e / t, j = e % t;
    bool kept = i < len && j < len &&
                nerpos_keep(key, (uint64_t)h * len * len + (uint64_t)i * len + j, threshold);
    st(o, e, kept ? scale : 0.0f);
  }
}

NERPOS_EXPORT_TYPED(dropout_mask,
                    (T *out, const uint64_t *keys, const uint32_t *row, const uint32_t *pos, unsigned long long count,
                     int width, uint64_t site, uint32_t threshold, float scale),
                    (out, keys, row, pos, count, width, site, threshold, scale))
NERPOS_EXPORT_TYPED(attn_dropout_mask_padded,
                    (T *out, const uint64_t *keys, const int *starts, int heads, int t, uint64_t site,
                     uint32_t threshold, float scale),
                    (out, keys, starts, heads, t, site, threshold, scale))
