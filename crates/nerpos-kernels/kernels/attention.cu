// Attention within each packed row, forward and backward: the GPU twin of the CPU kernel in
// src/ops/attention.rs.
#include "common.cuh"
#include "dropout.cuh"

// Attention within each packed row. One block per (row, head), 4 warps; keys and values staged in
// shared memory in tiles of ATT_TILE rows; a warp handles queries warp, warp + 4, ... The softmax
// output P (f32, heads·L² per row at `poff[row]`) is kept for the backward pass, as on the CPU.
// Dropout on P is keyed by the sentence (dropout.cuh): element h·L² + i·L + j of the row's mask at the
// layer's site, which forward and backward regenerate (nothing is stored) and which does not depend on
// the row's place in the batch. Q, K, V are read from the fused projection qkv [N, 3H], its bias [3H]
// added as they are read when `bias` is not null (the product then runs without a bias add of its own).

// ATT_TILE, ATT_WARPS and AttShape's layout come from layout.h (build.rs), which the Rust launch code
// reads too: the shared-memory size it asks for and the struct it passes cannot drift from these.
struct AttShape {
  uint64_t site;       // dropout site (Site::code; used when threshold < 65536)
  int heads, dh;
  float scale;
  uint32_t threshold;  // 65536: no dropout
  float keep_scale;    // 1/(1−p)
  uint32_t pad;
};
static_assert(sizeof(AttShape) == ATT_SHAPE_SIZE, "AttShape's size differs from the Rust launch code's");
static_assert(offsetof(AttShape, heads) == ATT_SHAPE_HEADS_OFFSET, "AttShape.heads moved");
static_assert(offsetof(AttShape, keep_scale) == ATT_SHAPE_KEEP_SCALE_OFFSET, "AttShape.keep_scale moved");

// Loads `count` rows (≤ ATT_TILE) of one head's dh columns from `src` (row stride `stride`, starting at
// token `t0`) into shared `dst` as f32 with row pitch dh + 1 (no bank conflicts on column walks), the
// projection's bias (indexed by src's column; null: none) folded in.
template <typename T>
__device__ void load_tile(float *dst, const T *src, const T *bias, int t0, int count, int stride, int col0, int dh) {
  for (int e = threadIdx.x + threadIdx.y * 32; e < count * dh; e += 32 * ATT_WARPS) {
    int rr = e / dh, d = e % dh;
    dst[rr * (dh + 1) + d] = ld_biased(src, (size_t)(t0 + rr) * stride + col0 + d, bias, col0 + d);
  }
}

// One step of a running sum over tiles, element `at`: `first` starts it, `last` stores it in the
// output's type. Between, rows longer than one tile keep it in f32 in `partial` (for f32 outputs the
// output itself), so a bf16 output is rounded once, as a cast of the f32 sum would round it, and no
// f32 copy of the output is written for the rows that fit one tile.
template <typename T>
__device__ __forceinline__ void att_sum(T *out, float *partial, size_t at, bool first, bool last, float v) {
  float sum = (first ? 0.0f : partial[at]) + v;
  if (last)
    st(out, at, sum);
  else
    partial[at] = sum;
}

// The key of this block's row at the layer's dropout site (unused without dropout, when keys is null).
__device__ __forceinline__ uint64_t row_key(const uint64_t *keys, int row, const AttShape &s) {
  return s.threshold < 65536u ? nerpos_site_key(keys[row], s.site) : 0;
}

// The softmax of each of the L × L scores' rows in place; warp w takes rows w, w + ATT_WARPS, ...
__device__ void softmax_rows(float *P, int L, int warp, int lane) {
  for (int i = warp; i < L; i += ATT_WARPS) {
    float *pr = P + (size_t)i * L;
    float m = -INFINITY;
    for (int j = lane; j < L; j += 32) m = fmaxf(m, pr[j]);
    m = warp_max(m);
    float sum = 0.0f;
    for (int j = lane; j < L; j += 32) {
      float e = expf(pr[j] - m);
      pr[j] = e;
      sum += e;
    }
    float inv = 1.0f / warp_sum(sum);
    for (int j = lane; j < L; j += 32) pr[j] *= inv;
  }
}

// The softmax's backward in place: dZ = P ⊙ (dP − Σⱼ P·dP), row by row, from dP in DZ.
__device__ void softmax_grad_rows(const float *P, float *DZ, int L, int warp, int lane) {
  for (int i = warp; i < L; i += ATT_WARPS) {
    const float *pr = P + (size_t)i * L;
    float *dr = DZ + (size_t)i * L;
    float dot = 0.0f;
    for (int j = lane; j < L; j += 32) dot += pr[j] * dr[j];
    dot = warp_sum(dot);
    for (int j = lane; j < L; j += 32) dr[j] = pr[j] * (dr[j] - dot);
  }
}

// Forward: P (softmax of the scaled scores) into `probs`, context (summed in f32 over the tiles of
// values: `att_sum`) into `ctx` [N, H].
template <typename T>
__device__ void attn_fwd(const T *qkv, const T *bias, const int *starts, const uint64_t *keys, const long long *poff,
                         float *probs, T *ctx, float *partial, AttShape s) {
  NERPOS_DYNAMIC_SHARED(smem);
  int row = blockIdx.x / s.heads, hd = blockIdx.x % s.heads;
  int t0 = starts[row], L = starts[row + 1] - t0;
  int H = s.heads * s.dh, stride = 3 * H, dh = s.dh;
  int warp = threadIdx.y, lane = threadIdx.x;
  float *tile = smem;  // ATT_TILE × (dh + 1)
  // This warp's query row (scores), then its row of dropped probabilities (context): max(dh, ATT_TILE).
  float *qrow = smem + ATT_TILE * (dh + 1) + warp * (dh > ATT_TILE ? dh : ATT_TILE);
  float *P = probs + poff[row] + (size_t)hd * L * L;
  uint64_t key = row_key(keys, row, s);
  // Scores, tile by tile of keys.
  for (int k0 = 0; k0 < L; k0 += ATT_TILE) {
    int kn = min(ATT_TILE, L - k0);
    __syncthreads();
    load_tile(tile, qkv, bias, t0 + k0, kn, stride, H + hd * dh, dh);
    __syncthreads();
    for (int i = warp; i < L; i += ATT_WARPS) {
      for (int d = lane; d < dh; d += 32)
        qrow[d] = ld_biased(qkv, (size_t)(t0 + i) * stride + hd * dh + d, bias, hd * dh + d);
      __syncwarp();
      for (int j = lane; j < kn; j += 32) {
        float acc = 0.0f;
        for (int d = 0; d < dh; ++d) acc += qrow[d] * tile[j * (dh + 1) + d];
        P[(size_t)i * L + k0 + j] = acc * s.scale;
      }
      __syncwarp();
    }
  }
  __syncthreads();
  softmax_rows(P, L, warp, lane);
  __syncthreads();
  // Context = dropout(P)·V, tile by tile of values; lane owns output dims lane, lane + 32, ...
  for (int k0 = 0; k0 < L; k0 += ATT_TILE) {
    int kn = min(ATT_TILE, L - k0);
    __syncthreads();
    load_tile(tile, qkv, bias, t0 + k0, kn, stride, 2 * H + hd * dh, dh);
    __syncthreads();
    for (int i = warp; i < L; i += ATT_WARPS) {
      const float *pr = P + (size_t)i * L + k0;
      size_t mrow = (size_t)hd * L * L + (size_t)i * L + k0;
      // The dropout decision once per probability (lane j), not once per output dimension.
      float *pd = qrow;
      for (int j = lane; j < kn; j += 32) {
        float p = pr[j];
        if (s.threshold < 65536u) p = nerpos_keep(key, mrow + j, s.threshold) ? p * s.keep_scale : 0.0f;
        pd[j] = p;
      }
      __syncwarp();
      for (int d = lane; d < dh; d += 32) {
        float acc = 0.0f;
        for (int j = 0; j < kn; ++j) acc += pd[j] * tile[j * (dh + 1) + d];
        att_sum(ctx, partial, (size_t)(t0 + i) * H + hd * dh + d, k0 == 0, k0 + ATT_TILE >= L, acc);
      }
      __syncwarp();
    }
  }
}

// Backward, phase 1: dZ (into `dz`, the same layout as P) = P ⊙ (dP − Σⱼ P·dP) with dP = mask ⊙ (dctx·Vᵀ).
template <typename T>
__device__ void attn_bwd_scores(const T *qkv, const T *bias, const T *dctx, const int *starts, const uint64_t *keys,
                                const long long *poff, const float *probs, float *dz, AttShape s) {
  NERPOS_DYNAMIC_SHARED(smem);
  int row = blockIdx.x / s.heads, hd = blockIdx.x % s.heads;
  int t0 = starts[row], L = starts[row + 1] - t0;
  int H = s.heads * s.dh, stride = 3 * H, dh = s.dh;
  int warp = threadIdx.y, lane = threadIdx.x;
  float *tile = smem;
  float *grow = smem + ATT_TILE * (dh + 1) + warp * dh;
  size_t local = (size_t)hd * L * L, base = poff[row] + local;
  uint64_t key = row_key(keys, row, s);
  const float *P = probs + base;
  float *DZ = dz + base;
  for (int k0 = 0; k0 < L; k0 += ATT_TILE) {
    int kn = min(ATT_TILE, L - k0);
    __syncthreads();
    load_tile(tile, qkv, bias, t0 + k0, kn, stride, 2 * H + hd * dh, dh);
    __syncthreads();
    for (int i = warp; i < L; i += ATT_WARPS) {
      for (int d = lane; d < dh; d += 32) grow[d] = ld(dctx, (size_t)(t0 + i) * H + hd * dh + d);
      __syncwarp();
      for (int j = lane; j < kn; j += 32) {
        float acc = 0.0f;
        for (int d = 0; d < dh; ++d) acc += grow[d] * tile[j * (dh + 1) + d];
        size_t at = (size_t)i * L + k0 + j;
        if (s.threshold < 65536u) acc = nerpos_keep(key, local + at, s.threshold) ? acc * s.keep_scale : 0.0f;
        DZ[at] = acc;
      }
      __syncwarp();
    }
  }
  __syncthreads();
  softmax_grad_rows(P, DZ, L, warp, lane);
}

// Backward, phase 2: dQ = scale·dZ·K (rows of queries) into dqkv [N, 3H], columns of Q (summed as in
// the forward pass).
template <typename T>
__device__ void attn_bwd_dq(const T *qkv, const T *bias, const int *starts, const long long *poff, const float *dz,
                            T *dqkv, float *partial, AttShape s) {
  NERPOS_DYNAMIC_SHARED(smem);
  int row = blockIdx.x / s.heads, hd = blockIdx.x % s.heads;
  int t0 = starts[row], L = starts[row + 1] - t0;
  int H = s.heads * s.dh, stride = 3 * H, dh = s.dh;
  int warp = threadIdx.y, lane = threadIdx.x;
  float *tile = smem;
  const float *DZ = dz + poff[row] + (size_t)hd * L * L;
  for (int k0 = 0; k0 < L; k0 += ATT_TILE) {
    int kn = min(ATT_TILE, L - k0);
    __syncthreads();
    load_tile(tile, qkv, bias, t0 + k0, kn, stride, H + hd * dh, dh);
    __syncthreads();
    for (int i = warp; i < L; i += ATT_WARPS) {
      const float *dr = DZ + (size_t)i * L + k0;
      for (int d = lane; d < dh; d += 32) {
        float acc = 0.0f;
        for (int j = 0; j < kn; ++j) acc += dr[j] * tile[j * (dh + 1) + d];
        att_sum(dqkv, partial, (size_t)(t0 + i) * stride + hd * dh + d, k0 == 0, k0 + ATT_TILE >= L, acc * s.scale);
      }
    }
  }
}

// Backward, phase 3: dK = scale·dZᵀ·Q and dV = dropout(P)ᵀ·dctx (rows of keys), tile by tile of
// queries (two tiles in shared memory: Q and dctx).
template <typename T>
__device__ void attn_bwd_dkv(const T *qkv, const T *bias, const T *dctx, const int *starts, const uint64_t *keys,
                             const long long *poff, const float *probs, const float *dz, T *dqkv, float *partial,
                             AttShape s) {
  NERPOS_DYNAMIC_SHARED(smem);
  int row = blockIdx.x / s.heads, hd = blockIdx.x % s.heads;
  int t0 = starts[row], L = starts[row + 1] - t0;
  int H = s.heads * s.dh, stride = 3 * H, dh = s.dh;
  int warp = threadIdx.y, lane = threadIdx.x;
  float *qt = smem;
  float *gt = smem + ATT_TILE * (dh + 1);
  // This warp's column of dropped probabilities and of dZ for its key j (ATT_TILE each).
  float *pc = smem + 2 * ATT_TILE * (dh + 1) + warp * 2 * ATT_TILE;
  float *zc = pc + ATT_TILE;
  size_t local = (size_t)hd * L * L, base = poff[row] + local;
  uint64_t key = row_key(keys, row, s);
  const float *P = probs + base;
  const float *DZ = dz + base;
  for (int q0 = 0; q0 < L; q0 += ATT_TILE) {
    int qn = min(ATT_TILE, L - q0);
    __syncthreads();
    load_tile(qt, qkv, bias, t0 + q0, qn, stride, hd * dh, dh);
    load_tile(gt, dctx, (const T *)nullptr, t0 + q0, qn, H, hd * dh, dh);
    __syncthreads();
    for (int j = warp; j < L; j += ATT_WARPS) {
      // The dropout decision once per probability (lane ii), not once per output dimension.
      for (int ii = lane; ii < qn; ii += 32) {
        size_t at = (size_t)(q0 + ii) * L + j;
        float p = P[at];
        if (s.threshold < 65536u) p = nerpos_keep(key, local + at, s.threshold) ? p * s.keep_scale : 0.0f;
        pc[ii] = p;
        zc[ii] = DZ[at];
      }
      __syncwarp();
      for (int d = lane; d < dh; d += 32) {
        float ak = 0.0f, av = 0.0f;
        for (int ii = 0; ii < qn; ++ii) {
          ak += zc[ii] * qt[ii * (dh + 1) + d];
          av += pc[ii] * gt[ii * (dh + 1) + d];
        }
        size_t at = (size_t)(t0 + j) * stride + hd * dh + d;
        bool first = q0 == 0, last = q0 + ATT_TILE >= L;
        att_sum(dqkv, partial, at + H, first, last, ak * s.scale);
        att_sum(dqkv, partial, at + 2 * H, first, last, av);
      }
      __syncwarp();
    }
  }
}

// The four passes' parameter lists, shared with the tensor-core kernels (attention_tc.cu): the Rust
// launch code passes the same arguments to either. Outputs are in the storage type T; `partial` holds
// the f32 running sums of rows longer than one tile (see att_sum).
#define ATT_FWD_PARAMS \
  (const T *qkv, const T *bias, const int *starts, const uint64_t *keys, const long long *poff, float *probs, \
   T *ctx, float *partial, AttShape s)
#define ATT_FWD_ARGS (qkv, bias, starts, keys, poff, probs, ctx, partial, s)
#define ATT_SCORES_PARAMS \
  (const T *qkv, const T *bias, const T *dctx, const int *starts, const uint64_t *keys, const long long *poff, \
   const float *probs, float *dz, AttShape s)
#define ATT_SCORES_ARGS (qkv, bias, dctx, starts, keys, poff, probs, dz, s)
#define ATT_DQ_PARAMS \
  (const T *qkv, const T *bias, const int *starts, const long long *poff, const float *dz, T *dqkv, float *partial, \
   AttShape s)
#define ATT_DQ_ARGS (qkv, bias, starts, poff, dz, dqkv, partial, s)
#define ATT_DKV_PARAMS \
  (const T *qkv, const T *bias, const T *dctx, const int *starts, const uint64_t *keys, const long long *poff, \
   const float *probs, const float *dz, T *dqkv, float *partial, AttShape s)
#define ATT_DKV_ARGS (qkv, bias, dctx, starts, keys, poff, probs, dz, dqkv, partial, s)

NERPOS_EXPORT_TYPED(attn_fwd, ATT_FWD_PARAMS, ATT_FWD_ARGS)
NERPOS_EXPORT_TYPED(attn_bwd_scores, ATT_SCORES_PARAMS, ATT_SCORES_ARGS)
NERPOS_EXPORT_TYPED(attn_bwd_dq, ATT_DQ_PARAMS, ATT_DQ_ARGS)
NERPOS_EXPORT_TYPED(attn_bwd_dkv, ATT_DKV_PARAMS, ATT_DKV_ARGS)
