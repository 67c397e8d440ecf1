//! The attention op's tests: the CPU kernel against the padded reference and against finite
//! differences, the emulated CUDA launches against the CPU kernel, and a row's result independent of
//! the batch around it.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use super::gpu::{Problem, Tables, backward_launches, forward_launches};
use super::*;
use crate::dropout::Noise;
use crate::emu::{self, EmuExec, HostBuf};
use crate::launch::Elem;
use crate::ops::testing::{cpu, flat, random, rng};

/// The masks of a batch of rows of these lengths (sentences `ids`), at step 5 of seed 77.
fn masks(lengths: &[usize], ids: &[u64]) -> Masker {
    let rows = RowSpans::new(lengths.to_vec());
    Masker::new(
        Noise { seed: 77, step: 5 },
        ids,
        &rows,
        &[],
        &Device::Cpu,
        crate::Kernels::Fused,
    )
    .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The fused CPU kernel (forward and backward) equals the padded tensor-op path, without dropout
/// and with it (the same sentence-keyed masks in either layout).
#[test]
fn cpu_kernel_matches_the_padded_path() {
    let lengths = [5, 1, 9, 3];
    let m = masks(&lengths, &[0, 1, 2, 3]);
    for p in [0.0, 0.3] {
        let dropout = Dropout {
            masks: &m,
            layer: 2,
            p,
        };
        kernel_matches_padded(&lengths, Some(dropout));
    }
}

fn kernel_matches_padded(lengths: &[usize], dropout: Option<Dropout>) {
    let rows = RowSpans::new(lengths.to_vec());
    let shape = Heads {
        heads: 3,
        head_dim: 4,
    };
    let (n, h) = (rows.tokens(), shape.hidden());
    let mut r = rand::rngs::SmallRng::seed_from_u64(5);
    let mut random = |len: usize| -> Tensor {
        let v: Vec<f32> = (0..len).map(|_| r.random_range(-2.0f32..2.0)).collect();
        Tensor::from_vec(v, len, &Device::Cpu).unwrap()
    };
    let qkv = random(n * 3 * h).reshape((n, 3 * h)).unwrap();
    let dctx = random(n * h).reshape((n, h)).unwrap();
    let run = |k: Kernels, keep: bool| {
        Attention::forward(k, (&qkv, None), (&rows, None), shape, dropout, keep).unwrap()
    };
    let (ctx_cpu, cache_cpu) = run(Kernels::CpuOnly, true);
    let (ctx_pad, cache_pad) = run(Kernels::Reference, true);
    assert!(max_diff(&ctx_cpu, &ctx_pad) < 1e-5);
    let d_cpu = Attention::backward(&dctx, &qkv, &rows, shape, &cache_cpu.unwrap()).unwrap();
    let d_pad = Attention::backward(&dctx, &qkv, &rows, shape, &cache_pad.unwrap()).unwrap();
    assert!(
        max_diff(&d_cpu, &d_pad) < 1e-5,
        "{}",
        max_diff(&d_cpu, &d_pad)
    );
    // Nothing kept gives the same context.
    let (ctx_eval, none) = run(Kernels::CpuOnly, false);
    assert!(none.is_none());
    assert_eq!(max_diff(&ctx_eval, &ctx_cpu), 0.0);
}

/// Inference (nothing kept, no dropout) on MiniLM's head shape, rows of 1 to 130 tokens, against the
/// padded tensor-op path.
#[test]
fn cpu_inference_matches_the_padded_path() {
    let rows = RowSpans::new(vec![27, 1, 16, 64, 130, 33]);
    let shape = Heads {
        heads: 12,
        head_dim: 32,
    };
    let (n, h) = (rows.tokens(), shape.hidden());
    let qkv = cpu(&random(&mut rng(7), n * 3 * h, 2.0), &[n, 3 * h]);
    let run = |k: Kernels| {
        Attention::forward(k, (&qkv, None), (&rows, None), shape, None, false).unwrap()
    };
    let (ours, none) = run(Kernels::CpuOnly);
    assert!(none.is_none());
    let d = max_diff(&ours, &run(Kernels::Reference).0);
    assert!(d < 1e-5, "{d}");
}

/// With dropout, the CPU kernel's backward is the gradient of its forward (finite differences).
#[test]
fn cpu_kernel_backward_with_dropout_is_the_gradient() {
    let rows = RowSpans::new(vec![4, 6]);
    let shape = Heads {
        heads: 2,
        head_dim: 3,
    };
    let (n, h) = (rows.tokens(), shape.hidden());
    let mut r = rand::rngs::SmallRng::seed_from_u64(9);
    let x: Vec<f32> = (0..n * 3 * h)
        .map(|_| r.random_range(-1.0f32..1.0))
        .collect();
    let g: Vec<f32> = (0..n * h).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let dctx = Tensor::from_vec(g.clone(), (n, h), &Device::Cpu).unwrap();
    // The loss Σ g ⊙ ctx(x), with the same masks every time.
    let m = masks(&[4, 6], &[0, 1]);
    let dropout = Some(Dropout {
        masks: &m,
        layer: 0,
        p: 0.3,
    });
    let loss = |x: &[f32]| -> f64 {
        let qkv = Tensor::from_vec(x.to_vec(), (n, 3 * h), &Device::Cpu).unwrap();
        let (ctx, _) = Attention::forward(
            Kernels::CpuOnly,
            (&qkv, None),
            (&rows, None),
            shape,
            dropout,
            false,
        )
        .unwrap();
        let c = ctx.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        c.iter().zip(&g).map(|(a, b)| f64::from(a * b)).sum()
    };
    let qkv = Tensor::from_vec(x.clone(), (n, 3 * h), &Device::Cpu).unwrap();
    let (_, cache) = Attention::forward(
        Kernels::CpuOnly,
        (&qkv, None),
        (&rows, None),
        shape,
        dropout,
        true,
    )
    .unwrap();
    let grad = flat(&Attention::backward(&dctx, &qkv, &rows, shape, &cache.unwrap()).unwrap());
    for i in (0..x.len()).step_by(7) {
        let eps = 1e-2f32;
        let (mut up, mut down) = (x.clone(), x.clone());
        up[i] += eps;
        down[i] -= eps;
        let numeric = (loss(&up) - loss(&down)) / f64::from(2.0 * eps);
        assert!(
            (numeric - f64::from(grad[i])).abs() < 2e-3,
            "d/dx[{i}]: numeric {numeric}, kernel {}",
            grad[i]
        );
    }
}

/// The emulated launches of one problem in f32: (context, probabilities) and dqkv.
fn emulate(
    rows: &RowSpans,
    shape: Heads,
    dropout: Option<(u64, f64)>,
    keys: &[u64],
    qkv: &[f32],
    dctx: &[f32],
) -> Option<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    emulate_in(Elem::F32, rows, shape, dropout, keys, (qkv, None), dctx)
}

/// The emulated launches of one problem with qkv (and the bias folded into it, if any) and dctx
/// stored as `elem`: the context and dqkv (stored as `elem` too, returned as f32) and the
/// probabilities (f32).
fn emulate_in(
    elem: Elem,
    rows: &RowSpans,
    shape: Heads,
    dropout: Option<(u64, f64)>,
    keys: &[u64],
    (qkv, bias): (&[f32], Option<&[f32]>),
    dctx: &[f32],
) -> Option<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let lib = emu::emulator("attention::tests (emulated launches)")?;
    let pr = Problem::new(rows, shape, dropout).unwrap();
    let t = Tables {
        starts: emu::ptr(&pr.starts),
        offsets: emu::ptr(&pr.offsets),
    };
    let (n, h) = (rows.tokens(), shape.hidden());
    let keys_at = if dropout.is_some() {
        emu::ptr(keys)
    } else {
        crate::launch::Ptr::NULL
    };
    let (qkv, dctx) = (HostBuf::new(elem, qkv), HostBuf::new(elem, dctx));
    let bias = bias.map(|b| HostBuf::new(elem, b));
    let bias_at = bias.as_ref().map_or(crate::launch::Ptr::NULL, HostBuf::ptr);
    let (mut ctx, mut probs) = (
        HostBuf::zeros(elem, n * h),
        HostBuf::zeros(Elem::F32, pr.probs()),
    );
    let outs = [ctx.ptr_mut(), probs.ptr_mut()];
    forward_launches(
        &mut EmuExec::new(lib),
        elem,
        &pr,
        &t,
        [qkv.ptr(), bias_at, keys_at, outs[0], outs[1]],
        n * h,
    )
    .unwrap();
    let (ctx, probs) = (ctx.values(), probs.values());
    let mut dqkv = HostBuf::zeros(elem, n * 3 * h);
    let ptrs = [
        qkv.ptr(),
        bias_at,
        dctx.ptr(),
        keys_at,
        emu::ptr(&probs),
        dqkv.ptr_mut(),
    ];
    backward_launches(&mut EmuExec::new(lib), elem, &pr, &t, ptrs, n * 3 * h).unwrap();
    Some((ctx, probs, dqkv.values()))
}

/// Relative tolerances (as [`emu::close`]) of the probabilities, the context and dqkv.
struct Tolerances {
    probs: f32,
    ctx: f32,
    dqkv: f32,
}

/// The emulated launches with qkv and dctx stored as `elem`, against the CPU kernel on the values
/// the kernels see (bf16-rounded in bf16), without dropout and with it (the GPU kernel drawing its
/// mask from the sentences' keys, the CPU kernel given the Rust masks of the same sentences), for
/// each (heads, head size); with `bias`, the projection's bias folded into the kernels against the
/// CPU kernel given qkv + bias (rounded as a bias add in `elem` rounds it). `None` without the
/// emulator.
fn launches_match_the_cpu_kernel(
    (elem, bias): (Elem, bool),
    lengths: &[usize],
    shapes: &[(usize, usize)],
    tol: Tolerances,
) -> Option<()> {
    let mut r = rng(3);
    let ids: Vec<u64> = (0..lengths.len() as u64)
        .map(|i| (i * 7 + 3) % 41)
        .collect();
    let rows = RowSpans::new(lengths.to_vec());
    let m = masks(lengths, &ids);
    let keys = Noise { seed: 77, step: 5 }.keys(&ids);
    for &(heads, head_dim) in shapes {
        let shape = Heads { heads, head_dim };
        let (n, h) = (rows.tokens(), shape.hidden());
        let qkv = emu::seen(elem, &random(&mut r, n * 3 * h, 1.5));
        let b = bias.then(|| emu::seen(elem, &random(&mut r, 3 * h, 0.5)));
        let dctx = emu::seen(elem, &random(&mut r, n * h, 1.0));
        // What the CPU kernel is given: qkv with its bias added, as the kernels read it.
        let biased: Vec<f32> = match &b {
            Some(b) => emu::seen(
                elem,
                &qkv.iter()
                    .enumerate()
                    .map(|(i, v)| v + b[i % (3 * h)])
                    .collect::<Vec<_>>(),
            ),
            None => qkv.clone(),
        };
        for p in [0.0f64, 0.1] {
            let layer = 4;
            let dropout = (p > 0.0).then_some((Site::Attention(layer).code(), p));
            let (ctx, probs, dqkv) = emulate_in(
                elem,
                &rows,
                shape,
                dropout,
                &keys,
                (&qkv, b.as_deref()),
                &dctx,
            )?;
            let d = Dropout {
                masks: &m,
                layer,
                p,
            };
            let q = Tensor::from_vec(biased.clone(), (n, 3 * h), &Device::Cpu).unwrap();
            let (rctx, cache) = Attention::forward(
                Kernels::CpuOnly,
                (&q, None),
                (&rows, None),
                shape,
                Some(d),
                true,
            )
            .unwrap();
            let cache = cache.unwrap();
            let AttentionCache::Cpu { probs: rp, .. } = &cache else {
                unreachable!("the CPU kernel keeps a CPU cache")
            };
            let what = format!("attention {heads}×{head_dim} ({elem:?}, bias {bias}), p {p}");
            emu::close(&format!("{what}: probabilities"), &probs, rp, tol.probs);
            // The context and dqkv are stored as `elem`: their own rounding is allowed beyond `tol`.
            emu::close_stored(
                &format!("{what}: context"),
                elem,
                &ctx,
                &flat(&rctx),
                tol.ctx,
            );
            let g = Tensor::from_vec(dctx.clone(), (n, h), &Device::Cpu).unwrap();
            let rdqkv = Attention::backward(&g, &q, &rows, shape, &cache).unwrap();
            let rdqkv = flat(&rdqkv);
            emu::close_stored(&format!("{what}: dqkv"), elem, &dqkv, &rdqkv, tol.dqkv);
        }
    }
    Some(())
}

/// The CUDA-core kernels on the emulator against the CPU kernel in f32, for rows shorter and longer
/// than a key tile (32) and head sizes below and above a warp's width.
#[test]
fn emulated_launches_match_the_cpu_kernel() {
    let tol = Tolerances {
        probs: 1e-6,
        ctx: 1e-5,
        dqkv: 1e-5,
    };
    let lengths = [5, 1, 40, 33, 64, 7];
    launches_match_the_cpu_kernel((Elem::F32, false), &lengths, &[(3, 20), (2, 40)], tol);
}

/// The tensor-core kernels (bf16, head sizes 16, 32 and 64) on the emulator against the CPU kernel
/// given the same bf16 inputs: rows within one 16-row block, of several blocks, of exactly one tile
/// (64) and of three tiles (130). The scores' products are exact in f32 (only their order differs);
/// the context and the gradients take P and dZ rounded to bf16 as operands, as FlashAttention does,
/// so they agree to bf16's precision — a wrong mask, tile or block shows up as errors of order 1.
#[test]
fn emulated_tensor_core_launches_match_the_cpu_kernel() {
    let tol = Tolerances {
        probs: 1e-6,
        ctx: 6e-3,
        dqkv: 6e-3,
    };
    let lengths = [5, 1, 40, 17, 64, 130, 16];
    launches_match_the_cpu_kernel(
        (Elem::Bf16, false),
        &lengths,
        &[(2, 32), (1, 64), (3, 16)],
        tol,
    );
}

/// In bf16 with a head size the tensor-core tiles do not divide (40) or beyond their shared memory
/// (80), the CUDA-core kernels run, and match the CPU kernel too.
#[test]
fn emulated_bf16_cuda_core_launches_match_the_cpu_kernel() {
    let rows = RowSpans::new(vec![3]);
    let tc = |head_dim, elem| {
        let shape = Heads { heads: 1, head_dim };
        Problem::new(&rows, shape, None).unwrap().tensor_cores(elem)
    };
    assert!(tc(64, Elem::Bf16) && tc(32, Elem::Bf16) && tc(16, Elem::Bf16));
    assert!(!tc(64, Elem::F32) && !tc(40, Elem::Bf16) && !tc(80, Elem::Bf16));
    let tol = Tolerances {
        probs: 1e-5,
        ctx: 1e-5,
        dqkv: 1e-5,
    };
    launches_match_the_cpu_kernel((Elem::Bf16, false), &[5, 40, 33], &[(2, 40), (1, 80)], tol);
}

/// The projection's bias folded into the kernels as they read Q, K and V — the CUDA-core kernels
/// (f32, and bf16 at a head size the tiles do not divide) and the tensor-core ones — gives what the
/// CPU kernel gives on qkv with the bias added (rounded as a separate bias add rounds it).
#[test]
fn emulated_launches_fold_the_bias() {
    let exact = || Tolerances {
        probs: 1e-6,
        ctx: 1e-5,
        dqkv: 1e-5,
    };
    let lengths = [5, 1, 40, 70];
    launches_match_the_cpu_kernel((Elem::F32, true), &lengths, &[(2, 20)], exact());
    launches_match_the_cpu_kernel((Elem::Bf16, true), &lengths, &[(1, 40)], exact());
    let bf16 = Tolerances {
        probs: 1e-6,
        ctx: 6e-3,
        dqkv: 6e-3,
    };
    launches_match_the_cpu_kernel((Elem::Bf16, true), &lengths, &[(2, 32)], bf16);
}

/// A bias is folded in only where the CUDA kernels run: elsewhere the product adds it.
#[test]
fn a_bias_is_refused_where_it_cannot_be_folded() {
    let rows = RowSpans::new(vec![3]);
    let shape = Heads {
        heads: 1,
        head_dim: 4,
    };
    let qkv = Tensor::zeros((3, 12), candle_core::DType::F32, &Device::Cpu).unwrap();
    let bias = Tensor::zeros(12, candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(!Attention::folds_bias(Kernels::Fused, &qkv, shape));
    let folded = (&qkv, Some(&bias));
    let err = Attention::forward(Kernels::Fused, folded, (&rows, None), shape, None, false)
        .err()
        .expect("refused on the CPU");
    assert!(
        err.to_string().contains("only in the CUDA kernels"),
        "{err}"
    );
}

/// A sentence's context from the emulated forward kernel is the same in two batches that hold it at
/// different places beside other sentences: its probabilities' dropout is keyed by the sentence, not
/// by the offset of its block in the batch.
#[test]
fn emulated_dropout_is_keyed_by_the_sentence() {
    let shape = Heads {
        heads: 2,
        head_dim: 8,
    };
    let h = shape.hidden();
    let p = 0.25;
    let site = Site::Attention(0).code();
    let own = random(&mut rng(8), 6 * 3 * h, 1.5);
    // Sentence 7 (length 6) first in one batch, last in another.
    let context_of_7 = |lengths: &[usize], ids: &[u64], first: usize| -> Option<Vec<f32>> {
        let rows = RowSpans::new(lengths.to_vec());
        let n = rows.tokens();
        let mut qkv = random(&mut rng(9), n * 3 * h, 1.5);
        qkv[first * 3 * h..(first + 6) * 3 * h].copy_from_slice(&own);
        let keys = Noise { seed: 77, step: 5 }.keys(ids);
        let dctx = vec![0f32; n * h];
        let (ctx, _, _) = emulate(&rows, shape, Some((site, p)), &keys, &qkv, &dctx)?;
        Some(ctx[first * h..(first + 6) * h].to_vec())
    };
    let (Some(a), Some(b)) = (
        context_of_7(&[6, 3, 9], &[7, 2, 11], 0),
        context_of_7(&[4, 3, 6], &[30, 2, 7], 7),
    ) else {
        return;
    };
    assert_eq!(a, b);
}
