//! This CPU's peak rate of the instructions a matrix product would use: AVX-512 f32 FMA
//! (`vfmadd231ps`) against AVX512-BF16's dot product (`vdpbf16ps`, two bf16 products summed into each
//! f32 lane), 16 independent accumulators on one core. Prints a Markdown table. Built and run by
//! tests/bench/cpu_peak.sh.

use std::arch::x86_64::*;
use std::time::Instant;

const ITERS: usize = 100_000_000;

#[target_feature(enable = "avx512bf16,avx512f")]
unsafe fn bf16_dot(n: usize) -> f32 {
    let a: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80)) };
    let mut c = [_mm512_setzero_ps(); 16];
    for _ in 0..n {
        for x in &mut c {
            *x = _mm512_dpbf16_ps(*x, a, a);
        }
    }
    c.iter().fold(0.0, |s, &x| s + _mm512_reduce_add_ps(x))
}

#[target_feature(enable = "avx512f")]
unsafe fn f32_fma(n: usize) -> f32 {
    let a = _mm512_set1_ps(1.0);
    let mut c = [_mm512_setzero_ps(); 16];
    for _ in 0..n {
        for x in &mut c {
            *x = _mm512_fmadd_ps(a, a, *x);
        }
    }
    c.iter().fold(0.0, |s, &x| s + _mm512_reduce_add_ps(x))
}

fn rate(flops_per_iter: f64, f: impl FnOnce() -> f32) -> f64 {
    let t = Instant::now();
    std::hint::black_box(f());
    flops_per_iter * ITERS as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn main() {
    if !is_x86_feature_detected!("avx512bf16") {
        println!("this CPU has no AVX512-BF16");
        return;
    }
    // Per iteration: 16 instructions × 16 lanes × (2 flops, or 2 products + 2 sums for bf16).
    let fma = rate(16.0 * 16.0 * 2.0, || unsafe { f32_fma(ITERS) });
    let dot = rate(16.0 * 16.0 * 4.0, || unsafe { bf16_dot(ITERS) });
    println!("| instruction (one core) | GFLOP/s | vs f32 FMA |");
    println!("|---|---:|---:|");
    println!("| vfmadd231ps zmm (f32) | {fma:.1} | 1.00× |");
    println!("| vdpbf16ps zmm (bf16 → f32) | {dot:.1} | {:.2}× |", dot / fma);
}
