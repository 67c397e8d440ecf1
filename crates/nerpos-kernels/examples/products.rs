//! Benchmark: the CPU matrix products on MiniLM's shapes (4,096 rows), f32 (gemm) against bf16 inputs
//! with f32 sums (AVX512-BF16, `--precision bf16`), in GFLOP/s; prints a Markdown table.
//! `cargo run --release -j2 -p nerpos-kernels --example products` on an otherwise idle machine.

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use nerpos_kernels::Kernels;
use nerpos_kernels::ops::matmul::{Epilogue, MatMul, PackedBf16};

/// GFLOP/s of `f` (one product of `flops`), the best of 5 rounds of 10 calls after a warm-up.
fn rate(flops: f64, mut f: impl FnMut() -> nerpos_kernels::Result<Tensor>) -> anyhow::Result<f64> {
    f()?;
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..10 {
            f()?;
        }
        best = best.min(t.elapsed() / 10);
    }
    Ok(flops / best.as_secs_f64() / 1e9)
}

fn main() -> anyhow::Result<()> {
    if !PackedBf16::supported() {
        println!("this CPU has no AVX512-BF16: nothing to compare");
        return Ok(());
    }
    println!("| product (rows × in → out) | f32 GFLOP/s | bf16 GFLOP/s | bf16 / f32 |");
    println!("|---|---:|---:|---:|");
    let m = 4096;
    for (name, inp, out) in [
        ("query/key/value", 384, 1152),
        ("attention output", 384, 384),
        ("FFN intermediate", 384, 1536),
        ("FFN output", 1536, 384),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, inp), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 1.0, (out, inp), &Device::Cpu)?;
        let (wt, packed) = (w.t()?.contiguous()?, PackedBf16::new(&w)?);
        let flops = 2.0 * (m * inp * out) as f64;
        let f32s = rate(flops, || {
            MatMul::forward(Kernels::CpuOnly, &x, &wt, Epilogue::None)
        })?;
        let bf16s = rate(flops, || MatMul::forward_bf16(&x, &packed, Epilogue::None))?;
        println!(
            "| {name} ({m} × {inp} → {out}) | {f32s:.0} | {bf16s:.0} | {:.2}× |",
            bf16s / f32s
        );
    }
    Ok(())
}
