//! The CPU's vector tier: which instruction set the CPU kernels run at.
//!
//! The row kernels are one portable source each, compiled three times ([`dispatch!`](crate::host)):
//! for the x86-64 baseline (SSE2), for x86-64-v3 (AVX2 + FMA: most laptops, AMD Zen 2/3, most Intel
//! client parts) and for AVX-512 — and the widest the CPU has runs, unless `NERPOS_CPU_TIER` caps it
//! (`baseline`, `avx2`, `avx512`), so that an AVX-512 machine can measure the AVX2 path and the tests
//! run every tier the CPU has.
//!
//! The matrix products are gemm's, which picks AVX-512 or AVX2 + FMA (or scalar code) at run time by
//! itself; the environment variable does not reach it. Its AVX-512 kernels are compiled in unless the
//! build sets `RUSTFLAGS="--cfg nerpos_gemm_avx2"` (nerpos-kernels' Cargo.toml): the build the AVX2
//! benchmarks use on an AVX-512 machine, whose products then run as on an AVX2 CPU.

use std::sync::OnceLock;

use crate::error::{KernelError, Result};

/// The environment variable that caps the tier.
pub const TIER_ENV: &str = "NERPOS_CPU_TIER";

/// A CPU vector tier, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// x86-64's baseline (SSE2), and every CPU that is not x86-64.
    Baseline,
    /// AVX2 with FMA (x86-64-v3).
    Avx2,
    /// AVX-512 F and VL with AVX2 and FMA.
    Avx512,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Baseline, Tier::Avx2, Tier::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Baseline => "baseline",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.name() == s.trim())
    }

    /// The widest tier this CPU runs.
    pub fn detected() -> Tier {
        static DETECTED: OnceLock<Tier> = OnceLock::new();
        *DETECTED.get_or_init(detect)
    }

    /// The cap `NERPOS_CPU_TIER` sets (none when unset or empty); an error naming the variable for
    /// any other value.
    pub fn cap() -> Result<Option<Tier>> {
        match std::env::var(TIER_ENV) {
            Ok(v) if v.trim().is_empty() => Ok(None),
            Ok(v) => Tier::parse(&v).map(Some).ok_or_else(|| {
                KernelError::Input(format!(
                    "{TIER_ENV}={v:?}: expected baseline, avx2 or avx512"
                ))
            }),
            Err(_) => Ok(None),
        }
    }

    /// The tier the kernels run at: the CPU's, capped by `NERPOS_CPU_TIER` (a value it does not know
    /// is ignored here: binaries refuse it at start-up, [`Tier::check_env`]).
    pub fn active() -> Tier {
        static ACTIVE: OnceLock<Tier> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let cap = Tier::cap().ok().flatten().unwrap_or(Tier::Avx512);
            Tier::detected().min(cap)
        })
    }

    /// Every tier this CPU can run, narrowest first (the tests compare each with the baseline).
    pub fn available() -> Vec<Tier> {
        Tier::ALL
            .into_iter()
            .filter(|&t| t <= Tier::detected())
            .collect()
    }

    /// Checks `NERPOS_CPU_TIER` (binaries call it first: a typo must not silently run another tier).
    pub fn check_env() -> Result<Tier> {
        Tier::cap()?;
        Ok(Tier::active())
    }

    /// The tier gemm's matrix products run at: AVX-512 where the CPU has it and the build has its
    /// kernels, else AVX2 + FMA where the CPU has them (whatever `NERPOS_CPU_TIER` says).
    pub fn products() -> Tier {
        let built = if cfg!(nerpos_gemm_avx2) {
            Tier::Avx2
        } else {
            Tier::Avx512
        };
        Tier::detected().min(built)
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Tier {
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        Tier::Avx512
    } else if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        Tier::Avx2
    } else {
        Tier::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Tier {
    Tier::Baseline
}

/// The CPU's model name with its family and model numbers (Linux: /proc/cpuinfo; a virtual machine
/// often shows a generic name, the numbers still tell the part), for benchmark records.
pub fn cpu_model() -> String {
    let Ok(text) = std::fs::read_to_string("/proc/cpuinfo") else {
        return std::env::consts::ARCH.to_owned();
    };
    let field = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_owned())
    };
    let name = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    match (field("cpu family"), field("model")) {
        (Some(f), Some(m)) => format!("{name} (family {f}, model {m})"),
        _ => name,
    }
}

/// One line for logs and benchmark records: the CPU, the kernels' tier (and its cap) and the
/// products' tier.
pub fn describe() -> String {
    let (active, detected) = (Tier::active(), Tier::detected());
    let capped = if active < detected {
        format!(" ({TIER_ENV}; the CPU has {detected})")
    } else {
        String::new()
    };
    format!(
        "{}: kernels {active}{capped}, matrix products {}",
        cpu_model(),
        Tier::products()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::adamw::{AdamWStep, adamw_span_at};
    use crate::ops::column_sum::add_rows_at;
    use crate::ops::gelu::{bias_gelu_in_place_at, gelu_bwd_at, gelu_fwd_at};
    use crate::ops::layer_norm::{Rows, ln_bwd_at, ln_fwd_at, ln_residual_fwd_at};
    use crate::ops::math::softmax_at;
    use crate::ops::matmul::{add_bias_rows_at, bf16::round_row_at};
    use crate::ops::residual::{mask_span_at, residual_bwd_rows_at, residual_rows_at};
    use crate::ops::testing::{random, rng};

    /// Random rows and everything the kernels take.
    struct Data {
        h: usize,
        x: Vec<f32>,
        y: Vec<f32>,
        res: Vec<f32>,
        g: Vec<f32>,
        w: Vec<f32>,
        b: Vec<f32>,
        keep: Vec<u8>,
    }

    impl Data {
        fn new(rows: usize, h: usize) -> Data {
            let mut r = rng(41);
            let n = rows * h;
            Data {
                h,
                x: random(&mut r, n, 3.0),
                y: random(&mut r, n, 2.0),
                res: random(&mut r, n, 2.0),
                g: random(&mut r, n, 1.0),
                w: random(&mut r, h, 1.5),
                b: random(&mut r, h, 0.5),
                keep: (0..n).map(|i| u8::from(i % 3 != 0)).collect(),
            }
        }
    }

    /// GELU, bias, LayerNorm and softmax outputs at tier `t`.
    fn row_kernels(t: Tier, d: &Data) -> Vec<Vec<f32>> {
        let (mut out, mut o) = (Vec::new(), vec![0f32; d.x.len()]);
        gelu_fwd_at(t, &d.x, &mut o);
        out.push(o.clone());
        gelu_bwd_at(t, &d.x, &d.g, &mut o);
        out.push(o.clone());
        let mut v = d.y.clone();
        bias_gelu_in_place_at(t, &mut v, &d.b);
        out.push(v);
        let mut v = d.y.clone();
        add_bias_rows_at(t, &mut v, &d.b);
        out.push(v);
        ln_fwd_at(t, &d.x, &d.w, &d.b, &mut o, 1e-12);
        out.push(o.clone());
        let (mut acc, mut xhat) = (vec![0f32; 2 * d.h], vec![0f32; d.h]);
        ln_bwd_at(t, &d.x, &d.w, &d.g, &mut o, &mut acc, &mut xhat, 1e-12);
        out.extend([o.clone(), acc]);
        let rows = Rows {
            y: &d.y,
            bias: &d.b,
            r: &d.res,
        };
        ln_residual_fwd_at(t, rows, &d.w, &d.b, &mut o, 1e-12);
        out.push(o);
        let mut v = d.x.clone();
        for row in v.chunks_mut(d.h) {
            softmax_at(t, row);
        }
        out.push(v);
        out
    }

    /// Column sums, dropout, bias + dropout + residual, AdamW and the sum of squares at tier `t`.
    fn other_kernels(t: Tier, d: &Data) -> Vec<Vec<f32>> {
        let (mut out, mut o) = (Vec::new(), vec![0f32; d.x.len()]);
        let mut acc = vec![0f32; d.h];
        add_rows_at(t, &d.x, &mut acc);
        out.push(acc);
        mask_span_at(t, &d.x, &d.keep, 1.25, &mut o);
        out.push(o.clone());
        for m in [Some((&d.keep[..], 1.25f32)), None] {
            residual_rows_at(t, &d.y, &d.b, &d.res, m, &mut o);
            out.push(o.clone());
            let mut acc = vec![0f32; d.h];
            residual_bwd_rows_at(t, &d.g, m, &mut o, &mut acc);
            out.extend([o.clone(), acc]);
        }
        let (mut p, mut m, mut v) = (d.x.clone(), d.g.clone(), vec![0.3f32; d.x.len()]);
        let c = AdamWStep {
            grad_scale: 0.5,
            lr_wd: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step_size: 1e-3,
            bc2_sqrt: 0.05,
        };
        adamw_span_at(t, &c, &mut p, &d.y, &mut m, &mut v);
        out.extend([p, m, v]);
        out.push(vec![crate::host::squares_at(t, &d.x) as f32]);
        let mut rounded = vec![0u16; d.x.len()];
        round_row_at(t, &d.x, &mut rounded);
        out.push(rounded.into_iter().map(f32::from).collect());
        out
    }

    /// Every tier-compiled kernel, run at every tier this CPU has, gives the baseline's bits: the
    /// same code, vectorised wider, in the same order of operations (fixed running sums, no fused
    /// multiply-add the source does not ask for). On an AVX2 machine this runs baseline and AVX2; on
    /// an AVX-512 one all three.
    #[test]
    fn every_kernel_gives_the_baselines_bits_at_every_tier() {
        let d = Data::new(7, 45);
        let bits = |t: Tier| -> Vec<Vec<u32>> {
            let mut all = row_kernels(t, &d);
            all.extend(other_kernels(t, &d));
            all.iter()
                .map(|v| v.iter().map(|f| f.to_bits()).collect())
                .collect()
        };
        let base = bits(Tier::Baseline);
        for t in Tier::available() {
            for (k, (a, b)) in bits(t).iter().zip(&base).enumerate() {
                assert_eq!(
                    a, b,
                    "kernel output {k} at tier {t} differs from the baseline's"
                );
            }
        }
    }

    #[test]
    fn tiers_are_ordered_and_named() {
        assert!(Tier::Baseline < Tier::Avx2 && Tier::Avx2 < Tier::Avx512);
        for t in Tier::ALL {
            assert_eq!(Tier::parse(t.name()), Some(t));
        }
        assert_eq!(Tier::parse("sse4"), None);
        let available = Tier::available();
        assert_eq!(available[0], Tier::Baseline);
        assert_eq!(available.last(), Some(&Tier::detected()));
        assert!(Tier::active() <= Tier::detected() && Tier::products() <= Tier::detected());
        assert!(describe().contains("kernels"));
    }
}
