//! What the CPU kernels share: the host data of a tensor, tensors from host data, and vectorised
//! reductions.

use candle_core::{Device, Layout, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use crate::error::{KernelError, Result};

/// Elements per parallel task: enough work per task to amortise scheduling.
pub(crate) const TASK: usize = 16_384;

/// Rows of width `width` per parallel task.
pub(crate) fn task_rows(width: usize) -> usize {
    (TASK / width.max(1)).max(1)
}

/// Runs `f` on the contiguous host data of `t`, a CPU tensor of element type `T` (the one way the
/// CPU kernels and the optimiser's CPU loops reach a tensor's values).
pub fn read<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    Ok(f(host_slice(&storage, layout)?))
}

/// The first of `tensors` (name, CPU tensor of any float type) holding a NaN or an infinity, with how
/// many of its values are not finite: what must never be written to disk as weights.
pub fn first_non_finite<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Option<(String, usize)>> {
    for (name, t) in tensors {
        let t = t.to_dtype(candle_core::DType::F32)?;
        let bad = read::<f32, _>(&t, |x| x.par_iter().filter(|v| !v.is_finite()).count())?;
        if bad > 0 {
            return Ok(Some((name.to_owned(), bad)));
        }
    }
    Ok(None)
}

/// As [`read`] for several f32 tensors at once: `f` gets their data in the order given (instead of
/// one closure nested in another per tensor).
pub(crate) fn read_all<const N: usize, R>(
    ts: [&Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> R,
) -> Result<R> {
    let owned = ts
        .iter()
        .map(|t| t.contiguous())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let guards: Vec<_> = owned.iter().map(|t| t.storage_and_layout()).collect();
    let slices = guards
        .iter()
        .map(|(storage, layout)| host_slice::<f32>(storage, layout))
        .collect::<Result<Vec<_>>>()?;
    let slices: [&[f32]; N] = slices
        .try_into()
        .map_err(|_| KernelError::Internal("read_all: tensors lost on the way".into()))?;
    Ok(f(slices))
}

/// The values of a contiguous CPU tensor's storage.
fn host_slice<'a, T: WithDType>(storage: &'a Storage, layout: &Layout) -> Result<&'a [T]> {
    let Storage::Cpu(cpu) = storage else {
        return Err(KernelError::Internal(
            "a CPU kernel got a device tensor".into(),
        ));
    };
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| KernelError::Internal("a CPU kernel got a strided tensor".into()))?;
    Ok(&cpu.as_slice::<T>()?[a..b])
}

/// Runs `f` on the host data of `t` as it lies in memory (from the tensor's first element) with its
/// row and column strides: for a 2-D view of any strides (a transposed weight) without a copy.
pub(crate) fn read_strided<R>(t: &Tensor, f: impl FnOnce(&[f32], [usize; 2]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(KernelError::Internal(
            "a CPU kernel got a device tensor".into(),
        ));
    };
    let &[rs, cs] = layout.stride() else {
        return Err(KernelError::Internal(format!(
            "a 2-D kernel got a tensor of shape {:?}",
            t.dims()
        )));
    };
    Ok(f(
        &cpu.as_slice::<f32>()?[layout.start_offset()..],
        [rs, cs],
    ))
}

/// `n` zeros, written by the thread pool. `vec![0f32; n]` zeroes on the calling thread while the
/// pool waits: 9 % of tagging time when every kernel's output came from it (perf, 2 cores).
pub(crate) fn zeros(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(0f32, n).with_min_len(TASK));
    v
}

/// A CPU f32 tensor of `shape` holding `data`.
pub(crate) fn tensor<S: Into<Shape>>(data: Vec<f32>, shape: S) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// Column sums of per-task partial sums, in task order (deterministic).
pub(crate) fn sum_partials(partials: Vec<Vec<f32>>, width: usize) -> Vec<f32> {
    let mut out = vec![0f32; width];
    for p in partials {
        out.iter_mut().zip(&p).for_each(|(a, v)| *a += v);
    }
    out
}

/// Defines `$name(args)`, which runs `$kernel` compiled for the active tier ([`crate::tier`]: AVX-512,
/// AVX2 + FMA, or the baseline — the same code, vectorised as wide as the tier allows), and
/// `$at(tier, args)`, which runs it at a given tier (the tests compare every tier the CPU has).
macro_rules! dispatch {
    ($name:ident, $at:ident, $kernel:ident, ($($arg:ident : $ty:ty),*)) => {
        $crate::host::dispatch!($name, $at, $kernel, ($($arg: $ty),*) -> ());
    };
    ($name:ident, $at:ident, $kernel:ident, ($($arg:ident : $ty:ty),*) -> $ret:ty) => {
        pub(crate) fn $name($($arg: $ty),*) -> $ret {
            $at($crate::tier::Tier::active(), $($arg),*)
        }

        /// `tier` at most the CPU's ([`crate::tier::Tier::detected`]); a wider one runs the widest the
        /// CPU has. (The kernel's own arguments and the tier: one more than the kernel has.)
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $at(tier: $crate::tier::Tier, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) -> $ret {
                    $kernel($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) -> $ret {
                    $kernel($($arg),*)
                }
                match tier.min($crate::tier::Tier::detected()) {
                    // SAFETY: the CPU was found to support every feature these are compiled for.
                    $crate::tier::Tier::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::tier::Tier::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::tier::Tier::Baseline => {}
                }
            }
            let _ = tier;
            $kernel($($arg),*)
        }
    };
}
pub(crate) use dispatch;

/// Σ x² of `x` (f32 partial sums of 1,024 squares, vectorised; added up in f64), by the thread pool:
/// the gradient norm of CPU gradients.
pub fn sum_of_squares(x: &[f32]) -> f64 {
    x.par_chunks(65_536).map(squares).sum()
}

#[inline(always)]
fn squares_kernel(x: &[f32]) -> f64 {
    // 16 running sums per 1,024 values (a single f32 sum is a chain the compiler may not reorder).
    x.chunks(1024).map(|k| f64::from(dot16(k, k))).sum()
}

dispatch!(squares, squares_at, squares_kernel, (x: &[f32]) -> f64);

/// Σ x with 16 running sums: the compiler vectorises it (one running sum is a chain of dependent
/// additions it may not reorder).
#[inline(always)]
pub(crate) fn sum16(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// max x (−∞ for none) with 16 running maxima, vectorised as [`sum16`] (one running maximum is a
/// chain of dependent comparisons).
#[inline(always)]
pub(crate) fn max16(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..16 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// Σ a·b, vectorised as [`sum16`].
#[inline(always)]
pub(crate) fn dot16(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
