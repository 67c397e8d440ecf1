//! Each fused GPU kernel against its CPU kernel on the same random inputs, on a real device — the
//! comparisons the emulator tests make without a GPU, here with the real launches — and the AdamW
//! kernels against the CPU update. One JSON line per kernel and dtype.

use std::collections::BTreeMap;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use nerpos_kernels::dropout::{Masker, Noise, Rows, Site};
use nerpos_kernels::ops::attention::{self, Attention, AttentionCache, Heads};
use nerpos_kernels::ops::column_sum::ColumnSum;
use nerpos_kernels::ops::cross_entropy::CrossEntropy;
use nerpos_kernels::ops::embedding::EmbeddingGrad;
use nerpos_kernels::ops::gelu::BiasGelu;
use nerpos_kernels::ops::layer_norm::LayerNorm;
use nerpos_kernels::ops::matmul::MatMul;
use nerpos_kernels::ops::residual::BiasDropoutResidual;
use nerpos_kernels::{Kernels, Mask, RowSpans, stats};
use nerpos_model::{BertNerPos, Grad};
use nerpos_train::optim::{AdamW, AdamWConfig, GradScale, Update, squared_norm};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::setup::{ModelShape, random_init, shape_config};

/// One kernel's comparison.
#[derive(Debug, Clone, Serialize)]
pub struct KernelCheck {
    pub kernel: String,
    pub dtype: &'static str,
    /// Largest |gpu − cpu| / (1 + |cpu|).
    pub max_rel_err: f32,
    pub tolerance: f32,
    pub pass: bool,
}

fn random(rng: &mut SmallRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn host(t: &Tensor) -> anyhow::Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?)
}

/// The comparisons of one dtype: the GPU runs the fused kernels, the CPU its kernels.
struct Checker {
    dev: Device,
    dtype: DType,
    /// Small cases (for compute-sanitizer, which runs kernels 10–100× slower).
    small: bool,
    out: Vec<KernelCheck>,
}

impl Checker {
    /// The rows of the row-wise checks.
    fn rows(&self) -> usize {
        if self.small { 96 } else { 1000 }
    }
}

const GPU: Kernels = Kernels::Fused;
const CPU: Kernels = Kernels::CpuOnly;

impl Checker {
    /// `v` on the device in the checked dtype, and its values as the kernel sees them (rounded).
    fn put(&self, v: &[f32], shape: &[usize]) -> anyhow::Result<(Tensor, Tensor)> {
        let t = Tensor::from_vec(v.to_vec(), shape, &Device::Cpu)?.to_dtype(self.dtype)?;
        let seen = t.to_dtype(DType::F32)?;
        Ok((t.to_device(&self.dev)?, seen))
    }

    fn record(
        &mut self,
        kernel: &str,
        gpu: &Tensor,
        cpu: &Tensor,
        f32_tol: f32,
    ) -> anyhow::Result<()> {
        let (g, c) = (host(gpu)?, host(cpu)?);
        let err = if g.len() == c.len() {
            g.iter()
                .zip(&c)
                .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
                .fold(0.0, f32::max)
        } else {
            f32::INFINITY
        };
        let bf16 = self.dtype == DType::BF16;
        let tolerance = if bf16 { 2e-2 } else { f32_tol };
        self.out.push(KernelCheck {
            kernel: kernel.to_owned(),
            dtype: if bf16 { "bf16" } else { "f32" },
            max_rel_err: err,
            tolerance,
            // NaN compares false: a NaN anywhere fails.
            pass: err <= tolerance,
        });
        Ok(())
    }
}

/// Every comparison on `device`, in f32 and bf16, then the AdamW kernels; with `small`, small cases
/// in f32, and attention in bf16 too (its tensor-core kernels run in bf16 only): every kernel still
/// launched.
pub fn run(device: &Device, small: bool) -> anyhow::Result<Vec<KernelCheck>> {
    let mut out = Vec::new();
    let dtypes: &[DType] = if small {
        &[DType::F32]
    } else {
        &[DType::F32, DType::BF16]
    };
    for &dtype in dtypes {
        let mut c = Checker {
            dev: device.clone(),
            dtype,
            small,
            out: Vec::new(),
        };
        rows_and_columns(&mut c)?;
        residual_and_loss(&mut c)?;
        embedding_gradients(&mut c)?;
        attention_kernels(&mut c)?;
        gradient_sums(&mut c)?;
        out.append(&mut c.out);
    }
    if small {
        let mut c = Checker {
            dev: device.clone(),
            dtype: DType::BF16,
            small,
            out: Vec::new(),
        };
        attention_kernels(&mut c)?;
        out.append(&mut c.out);
    }
    out.extend(adamw(device)?);
    Ok(out)
}

/// LayerNorm, column sums, bias + GELU and its backward.
fn rows_and_columns(c: &mut Checker) -> anyhow::Result<()> {
    let mut r = SmallRng::seed_from_u64(11);
    let (rows, h, inter) = (c.rows(), 384, 1536);
    let (xg, xc) = c.put(&random(&mut r, rows * h, 2.0), &[rows, h])?;
    let (wg, wc) = c.put(&random(&mut r, h, 1.0), &[h])?;
    let (bg, bc) = c.put(&random(&mut r, h, 1.0), &[h])?;
    let (dyg, dyc) = c.put(&random(&mut r, rows * h, 1.0), &[rows, h])?;
    let ln = LayerNorm { eps: 1e-12 };
    c.record(
        "layer_norm_fwd",
        &ln.forward(GPU, &xg, &wg, &bg)?,
        &ln.forward(CPU, &xc, &wc, &bc)?,
        1e-5,
    )?;
    let (dx, dw, db) = ln.backward(GPU, &xg, &wg, &dyg)?;
    let (rx, rw, rb) = ln.backward(CPU, &xc, &wc, &dyc)?;
    c.record("layer_norm_bwd dx", &dx, &rx, 1e-5)?;
    c.record("layer_norm_bwd dweight", &dw, &rw, 1e-4)?;
    c.record("layer_norm_bwd dbias", &db, &rb, 1e-4)?;
    c.record(
        "column_sum",
        &ColumnSum::forward(GPU, &dyg)?,
        &ColumnSum::forward(CPU, &dyc)?,
        1e-4,
    )?;

    let (yg, yc) = c.put(&random(&mut r, rows * inter, 3.0), &[rows, inter])?;
    let (ibg, ibc) = c.put(&random(&mut r, inter, 1.0), &[inter])?;
    let (u, g) = BiasGelu::forward(GPU, &yg, &ibg)?;
    let (ru, rg) = BiasGelu::forward(CPU, &yc, &ibc)?;
    c.record("bias_gelu u", &u, &ru, 1e-6)?;
    c.record("bias_gelu gelu", &g, &rg, 1e-5)?;
    let (dgg, dgc) = c.put(&random(&mut r, rows * inter, 1.0), &[rows, inter])?;
    let (du, dbi) = BiasGelu::backward(GPU, &u, &dgg)?;
    let (rdu, rdbi) = BiasGelu::backward(CPU, &ru, &dgc)?;
    c.record("gelu_colsum du", &du, &rdu, 1e-5)?;
    c.record("gelu_colsum dbias", &dbi, &rdbi, 1e-4)
}

/// Embedding-table gradients: a vocabulary's used rows (a few ids repeated, as [CLS] is) and a dense
/// table with unused rows.
fn embedding_gradients(c: &mut Checker) -> anyhow::Result<()> {
    let mut r = SmallRng::seed_from_u64(17);
    let (n, h, table) = (c.rows(), 384, 512);
    let ids: Vec<u32> = (0..n)
        .map(|i| {
            if i % 8 == 0 {
                101
            } else {
                r.random_range(0..400)
            }
        })
        .collect();
    let (dg, dc) = c.put(&random(&mut r, n * h, 1.0), &[n, h])?;
    let (_, rows) = EmbeddingGrad::rows(GPU, &ids, &dg)?;
    let (_, rrows) = EmbeddingGrad::rows(CPU, &ids, &dc)?;
    c.record("segment_sum used rows", &rows, &rrows, 1e-5)?;
    let dense = EmbeddingGrad::dense(GPU, &ids, &dg, table)?;
    let rdense = EmbeddingGrad::dense(CPU, &ids, &dc, table)?;
    c.record("segment_sum dense table", &dense, &rdense, 1e-5)
}

/// Bias + dropout + residual with the same keep pattern as a device mask (scaled, the dtype) and as
/// CPU bytes, its backward, and the cross-entropy (its loss left on the device until read, here once).
fn residual_and_loss(c: &mut Checker) -> anyhow::Result<()> {
    let mut r = SmallRng::seed_from_u64(13);
    let (rows, h) = (c.rows(), 384);
    let (xg, xc) = c.put(&random(&mut r, rows * h, 2.0), &[rows, h])?;
    let (bg, bc) = c.put(&random(&mut r, h, 1.0), &[h])?;
    let (dyg, dyc) = c.put(&random(&mut r, rows * h, 1.0), &[rows, h])?;
    let p = 0.1;
    let keep: Vec<u8> = (0..rows * h)
        .map(|_| u8::from(r.random::<f32>() >= p as f32))
        .collect();
    let scaled: Vec<f32> = keep
        .iter()
        .map(|&k| f32::from(k) / (1.0 - p as f32))
        .collect();
    let device_mask = Mask {
        tensor: c.put(&scaled, &[rows, h])?.0,
        p,
    };
    let cpu_mask = Mask {
        tensor: Tensor::from_vec(keep, (rows, h), &Device::Cpu)?,
        p,
    };
    let (resg, resc) = c.put(&random(&mut r, rows * h, 1.0), &[rows, h])?;
    let z = BiasDropoutResidual::forward(GPU, &xg, &bg, Some(&device_mask), &resg)?;
    let rz = BiasDropoutResidual::forward(CPU, &xc, &bc, Some(&cpu_mask), &resc)?;
    c.record("bias_dropout_residual", &z, &rz, 1e-6)?;
    let (dd, ddb) = BiasDropoutResidual::backward(GPU, &dyg, Some(&device_mask))?;
    let (rdd, rddb) = BiasDropoutResidual::backward(CPU, &dyc, Some(&cpu_mask))?;
    c.record("dropout_colsum dy", &dd, &rdd, 1e-6)?;
    c.record("dropout_colsum dbias", &ddb, &rddb, 1e-4)?;

    let (m, classes) = (500, 17);
    let (lg, lc) = c.put(&random(&mut r, m * classes, 4.0), &[m, classes])?;
    let labels: Vec<u32> = (0..m).map(|_| r.random_range(0..classes as u32)).collect();
    let on = |dev: &Device| Tensor::from_vec(labels.clone(), m, dev);
    let (loss, grad) = CrossEntropy::forward_backward(GPU, &lg, &on(&c.dev)?)?;
    let (rloss, rgrad) = CrossEntropy::forward_backward(CPU, &lc, &on(&Device::Cpu)?)?;
    c.record("cross_entropy grad", &grad, &rgrad, 1e-6)?;
    let as_t = |v: f64| Tensor::new(&[v as f32], &Device::Cpu);
    c.record(
        "cross_entropy loss",
        &as_t(loss.read()?)?,
        &as_t(rloss.read()?)?,
        1e-5,
    )
}

/// The masks of a batch with rows of these lengths (sentences 0, 1, ...) on `dev`.
fn masks_on(lengths: &[usize], dev: &Device) -> anyhow::Result<Masker> {
    let ids: Vec<u64> = (0..lengths.len() as u64).collect();
    let rows = RowSpans::new(lengths.to_vec());
    Ok(Masker::new(
        Noise { seed: 77, step: 5 },
        &ids,
        &rows,
        &[],
        dev,
        nerpos_kernels::Kernels::Fused,
    )?)
}

/// The dropout-mask kernels against the CPU's masks of the same sentences: element for element.
fn dropout_masks(c: &mut Checker, lengths: &[usize]) -> anyhow::Result<()> {
    let (gpu, cpu) = (masks_on(lengths, &c.dev)?, masks_on(lengths, &Device::Cpu)?);
    let n: usize = lengths.iter().sum();
    let p = 0.1;
    let scaled = |m: Option<Mask>| -> anyhow::Result<Tensor> {
        let m = m.context("no mask at p > 0")?;
        let t = m.tensor.to_dtype(DType::F32)?;
        Ok(if m.tensor.dtype() == DType::U8 {
            (t * (1.0 / (1.0 - m.p)))?
        } else {
            t
        })
    };
    let like = Tensor::zeros((n, 384), c.dtype, &c.dev)?;
    let site = Site::FeedForwardOutput(3);
    let g = scaled(gpu.tokens(&like, Rows::Tokens, site, p)?)?;
    let r = scaled(cpu.tokens(&like.to_device(&Device::Cpu)?, Rows::Tokens, site, p)?)?;
    c.record("dropout_mask tokens", &g, &r, 1e-6)?;
    let t = lengths.iter().copied().max().unwrap_or(0);
    let like = Tensor::zeros((lengths.len(), 12, t, t), c.dtype, &c.dev)?;
    let g = scaled(gpu.attention_padded(&like, 3, p)?)?;
    let r = scaled(cpu.attention_padded(&like.to_device(&Device::Cpu)?, 3, p)?)?;
    c.record("dropout_mask padded attention", &g, &r, 1e-6)
}

/// Attention with and without dropout, on rows of 1 to 512 tokens (BERT's longest; many key tiles),
/// for MiniLM's and BERT-base's heads (in bf16 the tensor-core kernels, whose P and dZ operands are
/// bf16: within bf16's tolerance).
fn attention_kernels(c: &mut Checker) -> anyhow::Result<()> {
    let mut r = SmallRng::seed_from_u64(12);
    let lengths: &[usize] = if c.small {
        &[9, 1, 33, 70]
    } else {
        &[9, 1, 33, 64, 128, 47, 20, 2, 300, 512]
    };
    let rows = RowSpans::new(lengths.to_vec());
    dropout_masks(c, lengths)?;
    let (gpu, cpu) = (masks_on(lengths, &c.dev)?, masks_on(lengths, &Device::Cpu)?);
    for head_dim in [32, 64] {
        let shape = Heads {
            heads: 12,
            head_dim,
        };
        let (n, h) = (rows.tokens(), 12 * head_dim);
        let (qg, qc) = c.put(&random(&mut r, n * 3 * h, 1.5), &[n, 3 * h])?;
        let (gg, gc) = c.put(&random(&mut r, n * h, 1.0), &[n, h])?;
        // The projection's bias folded into the kernels, against the CPU kernel on qkv + bias
        // (rounded to the dtype as a separate bias add would round it).
        let (bg, bc) = c.put(&random(&mut r, 3 * h, 0.5), &[3 * h])?;
        let qcb = qc
            .broadcast_add(&bc)?
            .to_dtype(c.dtype)?
            .to_dtype(DType::F32)?;
        for (p, folded) in [(0.0, false), (0.1, false), (0.1, true)] {
            let d = |masks| Some(attention::Dropout { masks, layer: 2, p });
            let (gin, qc) = if folded {
                ((&qg, Some(&bg)), &qcb)
            } else {
                ((&qg, None), &qc)
            };
            let (ctx, gcache) = Attention::forward(GPU, gin, (&rows, None), shape, d(&gpu), true)?;
            let (rctx, rcache) =
                Attention::forward(CPU, (qc, None), (&rows, None), shape, d(&cpu), true)?;
            let (gcache, rcache) = (gcache.context("a cache")?, rcache.context("a cache")?);
            let what = format!(
                "attention dh {head_dim} p {p}{}",
                if folded { " bias folded" } else { "" }
            );
            c.record(&format!("{what} context"), &ctx, &rctx, 1e-5)?;
            if let (AttentionCache::Device { probs, .. }, AttentionCache::Cpu { probs: rp, .. }) =
                (&gcache, &rcache)
            {
                let rp = Tensor::from_slice(rp, rp.len(), &Device::Cpu)?;
                c.record(&format!("{what} probabilities"), probs, &rp, 1e-6)?;
            }
            let dqkv = Attention::backward(&gg, &qg, &rows, shape, &gcache)?;
            let rdqkv = Attention::backward(&gc, qc, &rows, shape, &rcache)?;
            c.record(&format!("{what} dqkv"), &dqkv, &rdqkv, 1e-5)?;
        }
    }
    Ok(())
}

/// A layer's two input gradients summed by the product (cuBLAS accumulating into the second, β = 1)
/// against the CPU's product then sum; and that the accumulation ran (one counted launch), not the
/// composed fallback.
fn gradient_sums(c: &mut Checker) -> anyhow::Result<()> {
    let mut r = SmallRng::seed_from_u64(19);
    let (rows, h, inter) = (c.rows(), 384, 1536);
    let (ag, ac) = c.put(&random(&mut r, rows * inter, 1.0), &[rows, inter])?;
    let (wg, wc) = c.put(&random(&mut r, inter * h, 0.05), &[inter, h])?;
    let (zg, zc) = c.put(&random(&mut r, rows * h, 1.0), &[rows, h])?;
    let before = stats::launches();
    let sum = MatMul::forward_add(GPU, &ag, &wg, zg)?;
    let accumulated = stats::launches() - before == 1;
    c.record(
        "matmul + c (cuBLAS, β = 1)",
        &sum,
        &MatMul::forward_add(CPU, &ac, &wc, zc)?,
        1e-3,
    )?;
    if let Some(last) = c.out.last_mut().filter(|_| !accumulated) {
        last.kernel
            .push_str(": the composed fallback ran, not the accumulation");
        last.pass = false;
    }
    Ok(())
}

/// The AdamW kernels on the GPU against the CPU update: three steps of a MiniLM-shaped model on random
/// gradients large enough to be clipped, the clipping factor computed and read on the device; then the
/// bf16 copy the kernel writes against the new weights cast to bf16 (bit for bit).
fn adamw(dev: &Device) -> anyhow::Result<Vec<KernelCheck>> {
    let config = shape_config(ModelShape::Minilm, 9, 7, false)?;
    let (cpu, gpu) = (
        BertNerPos::new(config.clone(), &Device::Cpu)?,
        BertNerPos::new(config.clone(), dev)?,
    );
    random_init(&cpu, 5)?;
    random_init(&gpu, 5)?;
    let half = BertNerPos::with_dtype(config, dev, DType::BF16)?;
    let cfg = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        decay_all: false,
    };
    let mut on_cpu = AdamW::new(cpu.params.with_roles(), cfg, Update::Fused)?;
    let mut on_gpu = AdamW::new(gpu.params.with_roles(), cfg, Update::Fused)?;
    anyhow::ensure!(
        on_gpu.write_compute_copy(&half)?,
        "the AdamW kernel does not take the bf16 copy"
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
    for step in 0..3 {
        let (mut g_cpu, mut g_gpu) = (BTreeMap::new(), BTreeMap::new());
        for (name, var) in cpu.params.iter() {
            let v: Vec<f32> = (0..var.elem_count())
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            let t = Tensor::from_vec(v, var.shape(), &Device::Cpu)?;
            g_gpu.insert(name.to_owned(), Grad::Dense(t.to_device(dev)?));
            g_cpu.insert(name.to_owned(), Grad::Dense(t));
        }
        // Norm ≈ 5 after the 1/500 scale: clipped to 1.
        let lr = 1e-3 * (step + 1) as f64;
        for (opt, grads) in [(&mut on_cpu, &g_cpu), (&mut on_gpu, &g_gpu)] {
            let (scale, _) =
                GradScale::clipped(1.0 / 500.0, &squared_norm(grads.values(), true)?, 1.0)?;
            opt.step(grads, &scale, lr, lr)?;
        }
    }
    let (mut err, mut copy_err) = (0f32, 0f32);
    for (name, var) in cpu.params.iter() {
        let want = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let got = gpu.params.get(name).context("a parameter")?.as_tensor();
        let copy = host(half.params.get(name).context("a parameter")?.as_tensor())?;
        let cast = host(&got.to_dtype(DType::BF16)?)?;
        for ((g, w), (c, h)) in host(got)?.iter().zip(&want).zip(cast.iter().zip(&copy)) {
            err = err.max((g - w).abs() / (1.0 + w.abs()));
            copy_err = copy_err.max((c - h).abs());
        }
    }
    let check = |kernel: &str, dtype, max_rel_err: f32, tolerance: f32| KernelCheck {
        kernel: kernel.to_owned(),
        dtype,
        max_rel_err,
        tolerance,
        pass: max_rel_err <= tolerance,
    };
    Ok(vec![
        check("adamw, 3 steps, clipping on the device", "f32", err, 1e-5),
        check("adamw bf16 copy = new weights cast", "bf16", copy_err, 0.0),
    ])
}
