// Dropout keyed by the sentence: the CUDA twin of src/dropout.rs (`mix`, `site_key`, `draw`), so that
// the GPU kernels keep exactly the elements the CPU kernels keep. A keep-decision is a pure function
// of the sentence's key (from the run's seed, the optimiser step and the sentence; made on the host),
// the site (layer and place) and the element's position inside the sentence — never of where the
// sentence sits in the batch. The emulator tests (src/emu_tests.rs) compare these with the Rust ones
// element for element.
#pragma once
#include "common.cuh"

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
