// Attention on tensor cores (bf16 storage, head sizes a multiple of 16 up to ATT_TC_MAX_DH): the same
// four passes, outputs and sentence-keyed dropout as attention.cu, with every matrix product — Q·Kᵀ,
// dropout(P)·V, dctx·Vᵀ, dZ·K, dZᵀ·Q, dropout(P)ᵀ·dctx — done by warp matrix products (wmma, 16 × 16
// × 16, bf16 operands, f32 sums) instead of one f32 multiply-add per thread. As in FlashAttention the
// probabilities and their gradient are rounded to bf16 as operands of the products that take them
// (P·V, dZ·K, dZᵀ·Q, Pᵀ·dctx); the softmax, its gradient and the kept P stay f32, as on the CPU.
//
// One block per (row, head), ATT_WARPS warps. The block stages ATT_TC_TILE rows of keys/values (or of
// queries and dctx) in shared memory as bf16; each warp takes 16-row strips of the row (queries, or keys
// for dK/dV) and multiplies them against the tile. A sentence of up to ATT_TC_TILE tokens is one tile:
// its sums are made in one go and written once, in bf16; a longer one adds tile by tile into f32
// running sums (`partial`) and its last tile writes the bf16 output — the value a cast of the f32 sum
// would give, without the f32 output and the cast's pass over it. Tiles are padded to 16 rows with
// zeros (the products read whole 16-row blocks, and shared memory starts as garbage).
#include "common.cuh"
#include "dropout.cuh"

// bf16 warp matrix products exist from sm_80 on; older GPUs never get these kernels (bf16 training
// needs sm_80), and a launch there would trap.
#if defined(NERPOS_CUDA_EMU) || __CUDA_ARCH__ >= 800
#define NERPOS_TC 1
#ifndef NERPOS_CUDA_EMU
#include <mma.h>
#endif
namespace wmma = nvcuda::wmma;

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> Acc;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> FragA;
#define TC_APITCH (ATT_TC_TILE + ATT_TC_SKEW)
#define TC_MAX_FRAGS (ATT_TC_MAX_DH / 16)
// Over the accumulator fragments of a head (dh / 16 of them): unrolled to the constant maximum with
// the bound as a test, so that every fragment index is a compile-time constant and the array stays in
// registers (a runtime index would put it in local memory).
#ifdef NERPOS_CUDA_EMU
#define TC_UNROLL
#else
#define TC_UNROLL _Pragma("unroll")
#endif
#define TC_FOR_FRAGS(n, r) \
  TC_UNROLL for (int n = 0; n < TC_MAX_FRAGS; ++n) if (n < (r).dh / 16)

// This block's row and head, and the shapes every pass uses.
struct TcRow {
  int row, hd, t0, L, H, stride, dh, pitch, warp, lane, strips;
  __device__ TcRow(const int *starts, const AttShape &s) {
    row = blockIdx.x / s.heads;
    hd = blockIdx.x % s.heads;
    t0 = starts[row];
    L = starts[row + 1] - t0;
    H = s.heads * s.dh;
    stride = 3 * H;
    dh = s.dh;
    pitch = dh + ATT_TC_SKEW;
    warp = threadIdx.y;
    lane = threadIdx.x;
    strips = (L + 15) / 16;
  }
};

// Shared memory (the Rust launch code asks for the same: `Problem::tc_shared`): `tiles` block tiles of
// ATT_TC_TILE × pitch bf16, then per warp a strip of 16 × pitch bf16 and a scratch area holding either
// two 16 × TC_APITCH bf16 operands (a0, a1) or a 16 × max(ATT_TC_TILE, dh) f32 staging tile — never
// both at once. Every offset is a multiple of 32 bytes, as the matrix loads require.
struct TcSmem {
  bf16 *tile0, *tile1, *strip, *a0, *a1;
  float *stage;
  __device__ TcSmem(float *smem, const TcRow &r, int tiles) {
    char *base = reinterpret_cast<char *>(smem);
    size_t tile_bytes = (size_t)ATT_TC_TILE * r.pitch * 2, strip_bytes = (size_t)16 * r.pitch * 2;
    size_t operands = (size_t)2 * 16 * TC_APITCH * 2;
    size_t staging = (size_t)16 * (ATT_TC_TILE > r.dh ? ATT_TC_TILE : r.dh) * 4;
    char *mine = base + tiles * tile_bytes + r.warp * (strip_bytes + (operands > staging ? operands : staging));
    tile0 = reinterpret_cast<bf16 *>(base);
    tile1 = reinterpret_cast<bf16 *>(base + tile_bytes);
    strip = reinterpret_cast<bf16 *>(mine);
    a0 = reinterpret_cast<bf16 *>(mine + strip_bytes);
    a1 = a0 + 16 * TC_APITCH;
    stage = reinterpret_cast<float *>(mine + strip_bytes);
  }
};

// Rows [0, rows) of one head's dh columns into shared `dst` (pitch `pitch`) as bf16: source rows t0 ..
// t0 + count (row stride `stride`, from column col0) with the projection's bias folded in (indexed by
// the column; null: none), zeros past `count`. Threads first, first + step, ...
__device__ void tc_stage(bf16 *dst, int pitch, const bf16 *src, const bf16 *bias, int t0, int count, int rows,
                         int stride, int col0, int dh, int first, int step) {
  for (int e = first; e < rows * dh; e += step) {
    int r = e / dh, d = e % dh;
    float v = r < count ? ld_biased(src, (size_t)(t0 + r) * stride + col0 + d, bias, col0 + d) : 0.0f;
    dst[r * pitch + d] = __float2bfloat16_rn(v);
  }
}

// The whole block stages a tile.
__device__ void tc_stage_block(bf16 *dst, const TcRow &r, const bf16 *src, const bf16 *bias, int t0, int count,
                               int stride, int col0) {
  int rows = (count + 15) / 16 * 16;
  tc_stage(dst, r.pitch, src, bias, t0, count, rows, stride, col0, r.dh, r.lane + r.warp * 32, 32 * ATT_WARPS);
}

// stage[16 × kb·16] (f32, pitch ATT_TC_TILE) = strip (16 × dh) · tileᵀ (kb·16 rows × dh).
__device__ void tc_scores(const bf16 *strip, const bf16 *tile, const TcRow &r, int kb, float *stage) {
  for (int b = 0; b < kb; ++b) {
    Acc c;
    wmma::fill_fragment(c, 0.0f);
    for (int d0 = 0; d0 < r.dh; d0 += 16) {
      FragA a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> kt;
      wmma::load_matrix_sync(a, strip + d0, r.pitch);
      wmma::load_matrix_sync(kt, tile + b * 16 * r.pitch + d0, r.pitch);
      wmma::mma_sync(c, a, kt, c);
    }
    wmma::store_matrix_sync(stage + b * 16, c, ATT_TC_TILE, wmma::mem_row_major);
  }
}

// acc (16 × dh) += a (16 × kb·16, pitch TC_APITCH) · tile (kb·16 rows × dh). Inlined, like the
// loads and stores of acc below, so that the caller's fragment array stays in registers.
__device__ __forceinline__ void tc_accumulate(Acc *acc, const bf16 *a, const bf16 *tile, const TcRow &r, int kb) {
  for (int b = 0; b < kb; ++b) {
    FragA fa;
    wmma::load_matrix_sync(fa, a + b * 16, TC_APITCH);
    TC_FOR_FRAGS(n, r) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> v;
      wmma::load_matrix_sync(v, tile + b * 16 * r.pitch + n * 16, r.pitch);
      wmma::mma_sync(acc[n], fa, v, acc[n]);
    }
  }
}

// acc = zero (the first tile), else rows r0 .. r0 + count of the running sums `partial` (f32, row
// stride `ostride`, from column col0) as summed by the tiles before, through the warp's staging tile.
__device__ __forceinline__ void tc_acc_load(Acc *acc, bool first, const float *partial, int r0, int count, int ostride,
                                            int col0, const TcRow &r, float *stage) {
  if (first) {
    TC_FOR_FRAGS(n, r) wmma::fill_fragment(acc[n], 0.0f);
    return;
  }
  for (int e = r.lane; e < 16 * r.dh; e += 32) {
    int i = e / r.dh, d = e % r.dh;
    stage[i * r.dh + d] = i < count ? partial[(size_t)(r0 + i) * ostride + col0 + d] : 0.0f;
  }
  __syncwarp();
  TC_FOR_FRAGS(n, r) wmma::load_matrix_sync(acc[n], stage + n * 16, r.dh, wmma::mem_row_major);
  __syncwarp();
}

// Rows r0 .. r0 + count = acc, through the warp's staging tile: of `out` (bf16) after the last tile,
// else of the running sums `partial` (f32).
__device__ __forceinline__ void tc_acc_store(const Acc *acc, bf16 *out, float *partial, bool last, int r0, int count,
                                             int ostride, int col0, const TcRow &r, float *stage) {
  TC_FOR_FRAGS(n, r) wmma::store_matrix_sync(stage + n * 16, acc[n], r.dh, wmma::mem_row_major);
  __syncwarp();
  for (int e = r.lane; e < count * r.dh; e += 32) {
    int i = e / r.dh, d = e % r.dh;
    size_t at = (size_t)(r0 + i) * ostride + col0 + d;
    if (last)
      st(out, at, stage[i * r.dh + d]);
    else
      partial[at] = stage[i * r.dh + d];
  }
  __syncwarp();
}

// A probability as the products take it: dropped (decided once, from the sentence's key, for element
// `at` of the row's mask) and scaled by 1/(1−p) when kept.
__device__ __forceinline__ float tc_dropped(float p, uint64_t key, size_t at, const AttShape &s) {
  if (s.threshold < 65536u) p = nerpos_keep(key, at, s.threshold) ? p * s.keep_scale : 0.0f;
  return p;
}

// For every tile of `tsrc` rows (qkv's, `bias` folded in, from column tcol), staged in tile0 by the
// whole block, each warp's 16-row strips of the sentence: `strip(k0, kn, kb, i0, qn)` with the tile's
// first row, its rows and its 16-row blocks, the strip's first row and its rows.
template <typename Strip>
__device__ void tc_tiles_by_strips(const bf16 *tsrc, const bf16 *bias, int tcol, const TcRow &r, const TcSmem &m,
                                   Strip strip) {
  for (int k0 = 0; k0 < r.L; k0 += ATT_TC_TILE) {
    int kn = min(ATT_TC_TILE, r.L - k0), kb = (kn + 15) / 16;
    __syncthreads();
    tc_stage_block(m.tile0, r, tsrc, bias, r.t0 + k0, kn, r.stride, tcol);
    __syncthreads();
    for (int st = r.warp; st < r.strips; st += ATT_WARPS) {
      int i0 = st * 16;
      strip(k0, kn, kb, i0, min(16, r.L - i0));
    }
  }
}

// The scores of strip-by-tile products into P (forward: Q·Kᵀ·scale) or DZ (backward: dropout of
// dctx·Vᵀ): for every tile of `tsrc` rows (qkv's, `bias` folded in) and every 16-row strip of `ssrc`
// rows (qkv's too in forward: `sbias`).
template <bool BACKWARD>
__device__ void tc_score_pass(const bf16 *ssrc, const bf16 *sbias, int sstride, int scol, const bf16 *tsrc,
                              const bf16 *bias, int tcol, float *out, uint64_t key, const TcRow &r,
                              const TcSmem &m, const AttShape &s) {
  size_t local = (size_t)r.hd * r.L * r.L;
  tc_tiles_by_strips(tsrc, bias, tcol, r, m, [&](int k0, int kn, int kb, int i0, int qn) {
    tc_stage(m.strip, r.pitch, ssrc, sbias, r.t0 + i0, qn, 16, sstride, scol, r.dh, r.lane, 32);
    __syncwarp();
    tc_scores(m.strip, m.tile0, r, kb, m.stage);
    __syncwarp();
    for (int e = r.lane; e < qn * kn; e += 32) {
      int ii = e / kn, j = e % kn;
      size_t at = (size_t)(i0 + ii) * r.L + k0 + j;
      float v = m.stage[ii * ATT_TC_TILE + j];
      out[at] = BACKWARD ? tc_dropped(v, key, local + at, s) : v * s.scale;
    }
    __syncwarp();
  });
}

// For every tile of `tsrc` rows (qkv's, `bias` folded in, from column tcol) and every 16-row strip of
// the row: the strip rows (row stride `ostride`, from column ocol) += A·tile, with A's element (i, j) —
// strip row i, tile row j, both numbered within the sentence — given by `a_of` (zero outside the
// sentence) and rounded to bf16. The first tile starts the sums, the last writes them to `out`.
template <typename AOf>
__device__ void tc_product_pass(const bf16 *tsrc, const bf16 *bias, int tcol, bf16 *out, float *partial, int ostride,
                                int ocol, const TcRow &r, const TcSmem &m, AOf a_of) {
  tc_tiles_by_strips(tsrc, bias, tcol, r, m, [&](int k0, int kn, int kb, int i0, int qn) {
    Acc acc[TC_MAX_FRAGS];
    tc_acc_load(acc, k0 == 0, partial, r.t0 + i0, qn, ostride, ocol, r, m.stage);
    for (int e = r.lane; e < 16 * kb * 16; e += 32) {
      int ii = e / (kb * 16), j = e % (kb * 16);
      float a = ii < qn && j < kn ? a_of(i0 + ii, k0 + j) : 0.0f;
      m.a0[ii * TC_APITCH + j] = __float2bfloat16_rn(a);
    }
    __syncwarp();
    tc_accumulate(acc, m.a0, m.tile0, r, kb);
    __syncwarp();
    tc_acc_store(acc, out, partial, k0 + ATT_TC_TILE >= r.L, r.t0 + i0, qn, ostride, ocol, r, m.stage);
  });
}
#endif  // NERPOS_TC

// Forward: P (f32, kept for the backward pass) and ctx (bf16) = dropout(P)·V.
template <typename T>
__device__ void attn_tc_fwd ATT_FWD_PARAMS {
#ifdef NERPOS_TC
  NERPOS_DYNAMIC_SHARED(smem);
  TcRow r(starts, s);
  TcSmem m(smem, r, 1);
  float *P = probs + poff[r.row] + (size_t)r.hd * r.L * r.L;
  uint64_t key = row_key(keys, r.row, s);
  tc_score_pass<false>(qkv, bias, r.stride, r.hd * r.dh, qkv, bias, r.H + r.hd * r.dh, P, key, r, m, s);
  __syncthreads();
  softmax_rows(P, r.L, r.warp, r.lane);
  size_t local = (size_t)r.hd * r.L * r.L;
  // ctx = dropout(P)·V, each probability's dropout decided once.
  tc_product_pass(qkv, bias, 2 * r.H + r.hd * r.dh, ctx, partial, r.H, r.hd * r.dh, r, m, [&](int i, int j) {
    size_t at = (size_t)i * r.L + j;
    return tc_dropped(P[at], key, local + at, s);
  });
#else
  __trap();
#endif
}

// Backward, phase 1: dZ = P ⊙ (dP − Σⱼ P·dP) with dP = mask ⊙ (dctx·Vᵀ), into `dz` (P's layout).
template <typename T>
__device__ void attn_tc_bwd_scores ATT_SCORES_PARAMS {
#ifdef NERPOS_TC
  NERPOS_DYNAMIC_SHARED(smem);
  TcRow r(starts, s);
  TcSmem m(smem, r, 1);
  size_t base = poff[r.row] + (size_t)r.hd * r.L * r.L;
  uint64_t key = row_key(keys, r.row, s);
  tc_score_pass<true>(dctx, nullptr, r.H, r.hd * r.dh, qkv, bias, 2 * r.H + r.hd * r.dh, dz + base, key, r, m, s);
  __syncthreads();
  softmax_grad_rows(probs + base, dz + base, r.L, r.warp, r.lane);
#else
  __trap();
#endif
}

// Backward, phase 2: dQ = (scale·dZ)·K into dqkv's Q columns.
template <typename T>
__device__ void attn_tc_bwd_dq ATT_DQ_PARAMS {
#ifdef NERPOS_TC
  NERPOS_DYNAMIC_SHARED(smem);
  TcRow r(starts, s);
  TcSmem m(smem, r, 1);
  const float *DZ = dz + poff[r.row] + (size_t)r.hd * r.L * r.L;
  tc_product_pass(qkv, bias, r.H + r.hd * r.dh, dqkv, partial, r.stride, r.hd * r.dh, r, m,
                  [&](int i, int j) { return DZ[(size_t)i * r.L + j] * s.scale; });
#else
  __trap();
#endif
}

#ifdef NERPOS_TC
// dK and dV of one 16-key strip (keys j0 .. j0 + jn) against one tile of qn queries (Q in tile0, dctx in
// tile1): a0 = (scale·dZ)ᵀ, a1 = dropout(P)ᵀ, each probability's dropout decided once.
__device__ void tc_dkv_strip(int j0, int jn, int q0, int qn, const float *P, const float *DZ, uint64_t key,
                             bf16 *dqkv, float *partial, const TcRow &r, const TcSmem &m, const AttShape &s) {
  int qb = (qn + 15) / 16, kcol = r.H + r.hd * r.dh, vcol = 2 * r.H + r.hd * r.dh;
  size_t local = (size_t)r.hd * r.L * r.L;
  Acc ak[TC_MAX_FRAGS], av[TC_MAX_FRAGS];
  tc_acc_load(ak, q0 == 0, partial, r.t0 + j0, jn, r.stride, kcol, r, m.stage);
  tc_acc_load(av, q0 == 0, partial, r.t0 + j0, jn, r.stride, vcol, r, m.stage);
  // Lanes walk 16 keys of one query row at a time: contiguous reads of P and dZ.
  for (int e = r.lane; e < 16 * qb * 16; e += 32) {
    int jj = e % 16, ii = e / 16;
    size_t at = (size_t)(q0 + ii) * r.L + j0 + jj;
    bool in = ii < qn && jj < jn;
    m.a0[jj * TC_APITCH + ii] = __float2bfloat16_rn(in ? DZ[at] * s.scale : 0.0f);
    m.a1[jj * TC_APITCH + ii] = __float2bfloat16_rn(in ? tc_dropped(P[at], key, local + at, s) : 0.0f);
  }
  __syncwarp();
  tc_accumulate(ak, m.a0, m.tile0, r, qb);
  tc_accumulate(av, m.a1, m.tile1, r, qb);
  __syncwarp();
  bool last = q0 + ATT_TC_TILE >= r.L;
  tc_acc_store(ak, dqkv, partial, last, r.t0 + j0, jn, r.stride, kcol, r, m.stage);
  tc_acc_store(av, dqkv, partial, last, r.t0 + j0, jn, r.stride, vcol, r, m.stage);
}
#endif

// Backward, phase 3: dK = (scale·dZ)ᵀ·Q and dV = dropout(P)ᵀ·dctx into dqkv's K and V columns, tile by
// tile of queries (Q and dctx staged together), a warp per 16-key strip.
template <typename T>
__device__ void attn_tc_bwd_dkv ATT_DKV_PARAMS {
#ifdef NERPOS_TC
  NERPOS_DYNAMIC_SHARED(smem);
  TcRow r(starts, s);
  TcSmem m(smem, r, 2);
  size_t base = poff[r.row] + (size_t)r.hd * r.L * r.L;
  uint64_t key = row_key(keys, r.row, s);
  for (int q0 = 0; q0 < r.L; q0 += ATT_TC_TILE) {
    int qn = min(ATT_TC_TILE, r.L - q0);
    __syncthreads();
    tc_stage_block(m.tile0, r, qkv, bias, r.t0 + q0, qn, r.stride, r.hd * r.dh);
    tc_stage_block(m.tile1, r, dctx, nullptr, r.t0 + q0, qn, r.H, r.hd * r.dh);
    __syncthreads();
    for (int st = r.warp; st < r.strips; st += ATT_WARPS) {
      int j0 = st * 16;
      tc_dkv_strip(j0, min(16, r.L - j0), q0, qn, probs + base, dz + base, key, dqkv, partial, r, m, s);
    }
  }
#else
  __trap();
#endif
}

// bf16 storage only: the f32 kernels of attention.cu serve f32.
#define NERPOS_EXPORT_BF16(name, params, args) NERPOS_EXPORT_ONE(name, bf16, bf16, params, args)
NERPOS_EXPORT_BF16(attn_tc_fwd, ATT_FWD_PARAMS, ATT_FWD_ARGS)
NERPOS_EXPORT_BF16(attn_tc_bwd_scores, ATT_SCORES_PARAMS, ATT_SCORES_ARGS)
NERPOS_EXPORT_BF16(attn_tc_bwd_dq, ATT_DQ_PARAMS, ATT_DQ_ARGS)
NERPOS_EXPORT_BF16(attn_tc_bwd_dkv, ATT_DKV_PARAMS, ATT_DKV_ARGS)
