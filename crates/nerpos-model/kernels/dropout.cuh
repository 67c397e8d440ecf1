// Dropout keyed by the sentence: the CUDA twin of src/dropout.rs (`mix`, `site_key`, `draw`), so that
// the GPU kernels keep exactly the elements the CPU kernels keep. A keep-decision is a pure function
// of the sentence's key (from the run's seed, the optimiser step and the sentence; made on the host),
// the site (layer and place) and the element's position inside the sentence — never of where the
// sentence sits in the batch. The emulator tests (src/emu_tests.rs) compare these with the Rust ones
// element for element.
#pragma once

#define NERPOS_GOLDEN 0x9E3779B97F4A7C15ull

// SplitMix64's finaliser.
__device__ __forceinline__ uint64_t nerpos_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The key of `site` (Site::code) for a sentence's key.
__device__ __forceinline__ uint64_t nerpos_site_key(uint64_t sentence, uint64_t site) {
  return nerpos_mix(sentence ^ nerpos_mix((site + 1) * NERPOS_GOLDEN));
}

// Element i's keep-decision under `key`: its 16-bit draw (one hash serves four consecutive elements)
// below `threshold` = (1 − p)·2¹⁶ rounded.
__device__ __forceinline__ bool nerpos_keep(uint64_t key, uint64_t i, uint32_t threshold) {
  uint64_t z = nerpos_mix(key + (i / 4 + 1) * NERPOS_GOLDEN);
  return (uint32_t)((z >> (16 * (i % 4))) & 0xFFFFu) < threshold;
}

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
