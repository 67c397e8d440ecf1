// Embedding-table gradients as segment sums: the GPU twin of src/ops/embedding.rs. One block per row
// of the table's gradient, threads over its columns; each row is the sum, in a fixed order, of the
// gradient rows that looked it up — deterministic, no atomics, and every output row written (zero when
// nothing looked it up), so the output needs no zero-fill. `segments` is the host's grouping of the
// source rows by destination: rows + 1 starts, then the source rows (each group in increasing order).
// (candle's index_add runs one thread per column over every id in turn: 14 ms a BERT-base step.)
#include "common.cuh"

template <typename T>
__device__ void segment_sum(const T *d, const unsigned *segments, T *out, int rows, int dim) {
  const unsigned *order = segments + rows + 1;
  const int row = blockIdx.x;
  const unsigned from = segments[row], to = segments[row + 1];
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    float acc = 0.0f;
#pragma unroll 4
    for (unsigned i = from; i < to; ++i) acc += ld(d, (size_t)order[i] * dim + c);
    st(out, (size_t)row * dim + c, acc);
  }
}

NERPOS_EXPORT_TYPED(segment_sum, (const T *d, const unsigned *segments, T *out, int rows, int dim),
                    (d, segments, out, rows, dim))
