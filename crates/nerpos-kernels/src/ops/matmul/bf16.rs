//! Matrix products with bf16 inputs and f32 sums on the CPU, with AVX512-BF16's dot product
//! (`vdpbf16ps`: two bf16 products added into each f32 lane): `x·wᵀ` for inference with
//! `--precision bf16`, what PyTorch's CPU autocast runs its linear layers in. Everything around the
//! products (bias, GELU, LayerNorm, softmax) stays f32, as under autocast.
//!
//! The weight is rounded to bf16 and laid out once ([`PackedBf16`]): panels of [`NR`] output columns,
//! each holding, for every pair of input columns, the 32 bf16 pairs one `vdpbf16ps` multiplies. The
//! activation's rows are rounded per call, a task's rows at a time, into a buffer whose 32-bit pairs
//! are broadcast against the panel. A product of two bf16 values is exact in f32, so the result is
//! the f32 sum of the products of the rounded inputs, in the kernel's order.

use std::mem::MaybeUninit;
use std::ops::Range;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::{Epilogue, add_bias_rows};
use crate::error::{KernelError, Result};
use crate::host::{dispatch, read, read_strided};
use crate::ops::gelu::bias_gelu_in_place_rows;

/// Output columns per panel: two vectors of 16 f32 sums.
const NR: usize = 32;
/// Rows per tile: 2 × 12 accumulators, 2 weight vectors and a broadcast fill 27 of the 32 registers.
const MR: usize = 12;
/// Rows per parallel task: a multiple of [`MR`], enough work to amortise scheduling (a 384-wide
/// product of 96 rows is 28 MFLOP) and few enough that 2 threads get many tasks per batch.
const TASK_ROWS: usize = 8 * MR;

/// A weight `w` (out × in) rounded to bf16 and laid out for the product kernel.
pub struct PackedBf16 {
    out: usize,
    inp: usize,
    /// Input columns in pairs (the last pair padded with a zero when `inp` is odd).
    pairs: usize,
    /// Panel `p`, pair `q`, column `j`: (w[p·NR + j][2q], w[p·NR + j][2q + 1]) as bf16 bits, the
    /// first in the low half; columns past `out` are zero.
    data: Vec<u32>,
}

impl PackedBf16 {
    /// Whether this CPU runs the bf16 product kernel (AVX-512 with AVX512-BF16, the tier not capped
    /// below AVX-512).
    pub fn supported() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            crate::tier::Tier::active() == crate::tier::Tier::Avx512
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// `w` (out × in, a CPU f32 tensor) rounded to bf16 (to nearest, ties to even) and packed.
    pub fn new(w: &Tensor) -> Result<PackedBf16> {
        let (out, inp) = w.dims2()?;
        let pairs = inp.div_ceil(2);
        let mut data = vec![0u32; out.div_ceil(NR) * pairs * NR];
        read::<f32, _>(w, |w| {
            for (o, row) in w.chunks_exact(inp.max(1)).take(out).enumerate() {
                let (panel, j) = (o / NR, o % NR);
                for q in 0..pairs {
                    let lo = bf16_bits(row[2 * q]);
                    let hi = row.get(2 * q + 1).map_or(0, |&v| bf16_bits(v));
                    data[(panel * pairs + q) * NR + j] = u32::from(lo) | u32::from(hi) << 16;
                }
            }
        })?;
        Ok(PackedBf16 {
            out,
            inp,
            pairs,
            data,
        })
    }

    /// (out, in) of the weight.
    pub fn dims(&self) -> (usize, usize) {
        (self.out, self.inp)
    }

    /// Panel `p`: `pairs × NR` values.
    fn panel(&self, p: usize) -> &[u32] {
        &self.data[p * self.pairs * NR..(p + 1) * self.pairs * NR]
    }
}

/// f32 → bf16 bits, to nearest with ties to even (PyTorch's cast); NaN stays a (quiet) NaN.
#[inline(always)]
fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    if v.is_nan() {
        ((b >> 16) | 0x40) as u16
    } else {
        (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }
}

#[inline(always)]
fn round_row_kernel(src: &[f32], dst: &mut [u16]) {
    dst.iter_mut()
        .zip(src)
        .for_each(|(d, &v)| *d = bf16_bits(v));
}

dispatch!(round_row, round_row_at, round_row_kernel, (src: &[f32], dst: &mut [u16]));

/// `x (m × in) · wᵀ` then `epilogue`, with bf16 inputs and f32 sums. `x` is a CPU f32 tensor of any
/// strides; the caller checks [`PackedBf16::supported`] first.
pub(super) fn forward(x: &Tensor, w: &PackedBf16, epilogue: Epilogue) -> Result<Tensor> {
    let (m, inp) = x.dims2()?;
    if inp != w.inp || !PackedBf16::supported() {
        return Err(KernelError::Internal(format!(
            "bf16 product of {:?} by a packed {:?} weight (AVX512-BF16: {})",
            x.dims(),
            w.dims(),
            PackedBf16::supported()
        )));
    }
    let n = w.out;
    let bias = match epilogue {
        Epilogue::None => None,
        Epilogue::Bias(b) => Some((b, false)),
        Epilogue::BiasGelu(b) => Some((b, true)),
        // The packed products serve inference, which sums no gradients.
        Epilogue::Add(_) => {
            return Err(KernelError::Internal(
                "a packed bf16 product adds no matrix".into(),
            ));
        }
    };
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    if m > 0 && n > 0 {
        read_strided(x, |x, strides| {
            with_bias(bias, |bias| {
                let tasks = y.spare_capacity_mut()[..m * n].par_chunks_mut(TASK_ROWS * n);
                tasks.enumerate().for_each(|(i, out)| {
                    let rows = i * TASK_ROWS..(m.min((i + 1) * TASK_ROWS));
                    task(Source { x, strides }, rows, w, out, bias);
                });
            })
        })??;
    }
    // SAFETY: every task wrote each of its rows' n values (`task`), and the tasks cover all m rows.
    unsafe { y.set_len(m * n) };
    Ok(Tensor::from_vec(y, (m, n), &Device::Cpu)?)
}

/// Runs `f` with the epilogue's bias as host data (and whether GELU follows).
fn with_bias<R>(
    bias: Option<(&Tensor, bool)>,
    f: impl FnOnce(Option<(&[f32], bool)>) -> R,
) -> Result<R> {
    match bias {
        None => Ok(f(None)),
        Some((b, gelu)) => read::<f32, _>(b, |b| f(Some((b, gelu)))),
    }
}

/// The activation as it lies in memory, with its row and column strides.
#[derive(Clone, Copy)]
struct Source<'a> {
    x: &'a [f32],
    strides: [usize; 2],
}

impl Source<'_> {
    /// Rows `rows` rounded to bf16 into `dst` (`2·pairs` values per row; the padding stays zero).
    fn round_rows(&self, rows: Range<usize>, inp: usize, dst: &mut [u16]) {
        let [rs, cs] = self.strides;
        let width = dst.len() / rows.len().max(1);
        for (r, d) in rows.zip(dst.chunks_exact_mut(width)) {
            if cs == 1 {
                round_row(&self.x[r * rs..r * rs + inp], &mut d[..inp]);
            } else {
                for (c, v) in d[..inp].iter_mut().enumerate() {
                    *v = bf16_bits(self.x[r * rs + c * cs]);
                }
            }
        }
    }
}

/// Rows `rows` of the product into `out` (their `rows.len() × n` values), then the epilogue on them.
fn task(
    x: Source,
    rows: Range<usize>,
    w: &PackedBf16,
    out: &mut [MaybeUninit<f32>],
    bias: Option<(&[f32], bool)>,
) {
    let (count, n, pairs) = (rows.len(), w.out, w.pairs);
    // Whole tiles of rounded rows (the rows past `count` are zero), as the 32-bit pairs broadcast.
    let tiles = count.div_ceil(MR);
    let mut a = vec![0u32; tiles * MR * pairs];
    x.round_rows(
        rows,
        w.inp,
        bytemuck::cast_slice_mut(&mut a[..count * pairs]),
    );
    let mut scratch = [0f32; MR * NR];
    for p in 0..n.div_ceil(NR) {
        let panel = w.panel(p);
        let cols = NR.min(n - p * NR);
        for t in 0..tiles {
            let a = &a[t * MR * pairs..(t + 1) * MR * pairs];
            let tile_rows = MR.min(count - t * MR);
            // SAFETY: `forward` checked the CPU's features; `a` holds MR rows of `pairs` values and
            // `panel` pairs × NR; `scratch` has room for the MR × NR tile.
            unsafe { kernel::tile(a, panel, pairs, &mut scratch) };
            for (r, sums) in scratch.chunks_exact(NR).take(tile_rows).enumerate() {
                let at = (t * MR + r) * n + p * NR;
                for (o, &s) in out[at..at + cols].iter_mut().zip(sums) {
                    o.write(s);
                }
            }
        }
    }
    // SAFETY: the loops above wrote every row's n values (all panels, all tiles' valid rows).
    let out: &mut [f32] = unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) };
    match bias {
        None => {}
        Some((bias, true)) => bias_gelu_in_place_rows(out, bias),
        Some((bias, false)) => add_bias_rows(out, bias),
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// One MR × NR tile: `out[r][j] = Σ_q a[r][q] · panel[q][j]` over bf16 pairs, f32 sums.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512-BF16; `a` holds MR × `pairs` values, `panel` `pairs` × NR.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile(a: &[u32], panel: &[u32], pairs: usize, out: &mut [f32; MR * NR]) {
        debug_assert!(a.len() >= MR * pairs && panel.len() >= pairs * NR);
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for q in 0..pairs {
            // SAFETY: q < pairs, so the 32 values at q·NR lie in `panel` (checked by the caller).
            let (b0, b1) = unsafe {
                let at = panel.as_ptr().add(q * NR).cast::<__m512i>();
                (
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(at)),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(at.add(1))),
                )
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: r < MR and q < pairs, inside `a` (checked by the caller).
                let pair = unsafe { *a.get_unchecked(r * pairs + q) };
                // SAFETY: both are 512-bit vectors; any bits are valid bf16 pairs.
                let av = unsafe {
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair as i32))
                };
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
        }
        for (row, acc) in out.chunks_exact_mut(NR).zip(&acc) {
            // SAFETY: each row of `out` holds NR = 2 × 16 values.
            unsafe {
                _mm512_storeu_ps(row.as_mut_ptr(), acc[0]);
                _mm512_storeu_ps(row.as_mut_ptr().add(16), acc[1]);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    use super::{MR, NR};

    /// Never called: [`super::PackedBf16::supported`] is false off x86-64.
    pub(super) unsafe fn tile(_: &[u32], _: &[u32], _: usize, _: &mut [f32; MR * NR]) {
        unreachable!("the bf16 product kernel needs AVX512-BF16")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gelu::BiasGelu;
    use crate::ops::matmul::MatMul;
    use crate::ops::testing::{cpu, flat, random, rng};
    use crate::{Kernels, emu};
    use half::bf16;

    /// x·wᵀ in f64 over x and w rounded to bf16 by the `half` crate: what the kernel computes, up to
    /// the order of its f32 sums.
    fn reference(x: &[f32], w: &[f32], (m, inp, n): (usize, usize, usize)) -> Vec<f32> {
        let r = |v: f32| f64::from(bf16::from_f32(v).to_f32());
        let mut y = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..inp)
                    .map(|c| r(x[i * inp + c]) * r(w[j * inp + c]))
                    .sum();
                y[i * n + j] = s as f32;
            }
        }
        y
    }

    /// Shapes with partial tiles, partial panels, odd widths and several tasks; plain and transposed
    /// activations; every epilogue against the f32 ops applied to the reference product.
    #[test]
    fn bf16_products_match_the_rounded_reference() {
        if !PackedBf16::supported() {
            let test = "bf16_products_match_the_rounded_reference";
            nerpos_testdata::skip_hardware(test, "this CPU has no AVX512-BF16");
            return;
        }
        let mut g = rng(9);
        for (m, inp, n) in [(1, 1, 1), (13, 7, 33), (200, 50, 64), (97, 384, 100)] {
            let x = random(&mut g, m * inp, 2.0);
            let w = random(&mut g, n * inp, 1.0);
            let bias = cpu(&random(&mut g, n, 1.0), &[n]);
            let packed = PackedBf16::new(&cpu(&w, &[n, inp])).unwrap();
            let want = cpu(&reference(&x, &w, (m, inp, n)), &[m, n]);
            let xt = cpu(&x, &[m, inp]).t().unwrap().contiguous().unwrap();
            for xs in [cpu(&x, &[m, inp]), xt.t().unwrap()] {
                for e in [
                    Epilogue::None,
                    Epilogue::Bias(&bias),
                    Epilogue::BiasGelu(&bias),
                ] {
                    let ours = MatMul::forward_bf16(&xs, &packed, e).unwrap();
                    let expect = match e {
                        Epilogue::None => want.clone(),
                        Epilogue::Bias(b) => want.broadcast_add(b).unwrap(),
                        Epilogue::BiasGelu(b) => {
                            BiasGelu::forward(Kernels::Reference, &want, b).unwrap().1
                        }
                        Epilogue::Add(_) => unreachable!("not among the epilogues tried"),
                    };
                    let label = format!("{m}x{inp}x{n} {e:?}");
                    emu::close(&label, &flat(&ours), &flat(&expect), 2e-5);
                }
            }
        }
    }

    /// The rounding is PyTorch's (and `half`'s): to nearest, ties to even, including the carry into
    /// the exponent and infinities.
    #[test]
    fn rounding_matches_half() {
        let mut g = rng(3);
        let mut values = random(&mut g, 10_000, 1e4);
        values.extend([
            0.0,
            -0.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            f32::MAX,
            f32::INFINITY,
        ]);
        values.extend([
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE / 3.0,
            1.003_906_3,
            -1.011_718_8,
        ]);
        for v in values {
            assert_eq!(bf16_bits(v), bf16::from_f32(v).to_bits(), "{v:e}");
        }
        assert!(f32::from(bf16::from_bits(bf16_bits(f32::NAN))).is_nan());
    }
}
