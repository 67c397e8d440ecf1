// The column sum as an op of its own (the bias gradients of the QKV projection and the embeddings).
#include "columns.cuh"

NERPOS_EXPORT_TYPED(colsum_partial, (const T *x, float *partial, int rows, int width, int chunk),
                    (x, partial, rows, width, chunk))
NERPOS_EXPORT_TYPED(colsum_finish, (const float *partial, T *out, int chunks, int width),
                    (partial, out, chunks, width))
