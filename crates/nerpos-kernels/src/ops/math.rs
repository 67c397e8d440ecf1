//! Vectorisable f32 math the CPU kernels share: e^x on the negative axis, erf with the Gaussian, and
//! softmax of a row.
//!
//! libm's erff is accurate but scalar; these approximations are branch-free arithmetic the compiler
//! vectorises (AVX-512 where the CPU has it): exp by range reduction (x = n·ln2 + r) and a degree-6
//! polynomial (relative error < 3e-7 in f32), erf by Abramowitz & Stegun 7.1.26 (absolute error
//! 1.5e-7 in exact arithmetic, < 5e-7 in f32).

use crate::host::{dispatch, max16, sum16};

pub(crate) const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π)
pub(crate) const INV_SQRT_2PI: f32 = 0.398_942_3;

/// e^x for x in [-87, 0] (all the kernels below need).
#[inline(always)]
pub(crate) fn exp_neg(x: f32) -> f32 {
    let x = x.max(-87.0);
    // n = round(x·log2 e) by adding 1.5·2²³: the sum's low mantissa bits are then n (two's
    // complement). No float → int cast: Rust's saturating `as i32` is scalar code per lane, which
    // kept every kernel using this function from vectorising (3.4 ns per GELU element).
    let shifted = x * std::f32::consts::LOG2_E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    // Cody–Waite: ln 2 split in a part exact in few bits and a correction, so r keeps its precision.
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p: f32 = 1.0 / 720.0;
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p.mul_add(r, c);
    }
    // 2ⁿ: n + 127 in the exponent field (n ≥ −126 here, so the bits stay a normal number).
    let n_bits = shifted.to_bits().wrapping_sub(ROUND_MAGIC.to_bits());
    p * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// 1.5·2²³: adding it to a float of magnitude < 2²² rounds it to an integer held in the low bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// erf(x) and, sharing the exponential, e^(−x²).
#[inline(always)]
pub(crate) fn erf_and_gauss(x: f32) -> (f32, f32) {
    let a = x.abs();
    let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
    let mut poly = 1.061_405_4f32;
    for c in [-1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
        poly = poly.mul_add(t, c);
    }
    let g = exp_neg(-a * a);
    ((1.0 - poly * t * g).copysign(x), g)
}

#[inline(always)]
fn softmax_kernel(row: &mut [f32]) {
    let max = max16(row);
    for v in row.iter_mut() {
        *v = exp_neg(*v - max);
    }
    let inv = 1.0 / sum16(row);
    row.iter_mut().for_each(|v| *v *= inv);
}

dispatch!(softmax_dispatch, softmax_at, softmax_kernel, (row: &mut [f32]));

/// Softmax of one row, in place (vectorised where the CPU allows).
pub(crate) fn softmax_in_place(row: &mut [f32]) {
    softmax_dispatch(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_and_erf_are_accurate() {
        for i in 0..=20_000 {
            let x = -87.0 + 87.0 * i as f32 / 20_000.0;
            let (ours, exact) = (exp_neg(x) as f64, (x as f64).exp());
            assert!(
                (ours - exact).abs() <= 3e-7 * exact,
                "exp({x}): {ours} vs {exact}"
            );
        }
        for i in -20_000..=20_000 {
            let x = i as f32 / 2_000.0;
            let (ours, _) = erf_and_gauss(x);
            let exact = libm::erf(x as f64);
            assert!(
                (ours as f64 - exact).abs() < 5e-7,
                "erf({x}): {ours} vs {exact}"
            );
        }
    }
}
