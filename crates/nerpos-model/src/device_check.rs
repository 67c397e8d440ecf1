//! Each fused GPU kernel against its CPU kernel on the same random inputs, on a real device: what
//! `nerpos-gpu-bench kernels` (and so `launch/gpu-check.sh`) reports. The emulator tests
//! (`src/emu_tests.rs`) make the same comparisons without a GPU; this one also covers the launches.

use candle_core::{DType, Device, Tensor};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::attention::{self, AttentionCache, Heads};
use crate::batch::{RowSpans, Targets};
use crate::device_ops::{self, AttentionDropout};
use crate::dropout::{Masker, Noise, Rows, Site};
use crate::error::Result;
use crate::kernels::{self, Mask};
use crate::ops;

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

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?)
}

struct Checker {
    dev: Device,
    dtype: DType,
    out: Vec<KernelCheck>,
}

impl Checker {
    /// `v` on the device in the checked dtype, and its values as the kernel sees them (rounded).
    fn put(&self, v: &[f32], shape: &[usize]) -> Result<(Tensor, Tensor)> {
        let t = Tensor::from_vec(v.to_vec(), shape, &Device::Cpu)?.to_dtype(self.dtype)?;
        let seen = t.to_dtype(DType::F32)?;
        Ok((t.to_device(&self.dev)?, seen))
    }

    fn tol(&self, f32_tol: f32) -> f32 {
        if self.dtype == DType::BF16 {
            2e-2
        } else {
            f32_tol
        }
    }

    fn record(&mut self, kernel: &str, gpu: &Tensor, cpu: &Tensor, f32_tol: f32) -> Result<()> {
        let (g, c) = (host(gpu)?, host(cpu)?);
        let err = if g.len() == c.len() {
            g.iter()
                .zip(&c)
                .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
                .fold(0.0, f32::max)
        } else {
            f32::INFINITY
        };
        let tolerance = self.tol(f32_tol);
        self.out.push(KernelCheck {
            kernel: kernel.to_owned(),
            dtype: if self.dtype == DType::BF16 {
                "bf16"
            } else {
                "f32"
            },
            max_rel_err: err,
            tolerance,
            // NaN compares false: a NaN anywhere fails.
            pass: err <= tolerance,
        });
        Ok(())
    }
}

/// Runs every comparison on `device` in f32 and bf16 (the fused kernels are turned on for the
/// duration and restored after).
pub fn run(device: &Device) -> Result<Vec<KernelCheck>> {
    let was = device_ops::fused_kernels();
    device_ops::set_fused_kernels(true);
    let result = (|| {
        let mut out = Vec::new();
        for dtype in [DType::F32, DType::BF16] {
            let mut c = Checker {
                dev: device.clone(),
                dtype,
                out: Vec::new(),
            };
            rows_and_columns(&mut c)?;
            attention_kernels(&mut c)?;
            out.append(&mut c.out);
        }
        Ok(out)
    })();
    device_ops::set_fused_kernels(was);
    result
}

fn rows_and_columns(c: &mut Checker) -> Result<()> {
    let mut r = SmallRng::seed_from_u64(11);
    let (rows, h, inter) = (1000, 384, 1536);
    let x: Vec<f32> = random(&mut r, rows * h, 2.0);
    let (xg, xc) = c.put(&x, &[rows, h])?;
    let (wg, wc) = c.put(&random(&mut r, h, 1.0), &[h])?;
    let (bg, bc) = c.put(&random(&mut r, h, 1.0), &[h])?;
    let (dyg, dyc) = c.put(&random(&mut r, rows * h, 1.0), &[rows, h])?;
    let y = ops::layer_norm_fwd(&xg, &wg, &bg, 1e-12)?;
    c.record(
        "layer_norm_fwd",
        &y,
        &ops::layer_norm_fwd(&xc, &wc, &bc, 1e-12)?,
        1e-5,
    )?;
    let (dx, dw, db) = ops::layer_norm_bwd(&xg, &wg, &dyg, 1e-12)?;
    let (rx, rw, rb) = ops::layer_norm_bwd(&xc, &wc, &dyc, 1e-12)?;
    c.record("layer_norm_bwd dx", &dx, &rx, 1e-5)?;
    c.record("layer_norm_bwd dweight", &dw, &rw, 1e-4)?;
    c.record("layer_norm_bwd dbias", &db, &rb, 1e-4)?;
    c.record(
        "column_sum",
        &ops::column_sum(&dyg)?,
        &ops::column_sum(&dyc)?,
        1e-4,
    )?;

    let (yg, yc) = c.put(&random(&mut r, rows * inter, 3.0), &[rows, inter])?;
    let (ibg, ibc) = c.put(&random(&mut r, inter, 1.0), &[inter])?;
    let (u, g) = kernels::bias_gelu(&yg, &ibg)?;
    let (ru, rg) = kernels::bias_gelu(&yc, &ibc)?;
    c.record("bias_gelu u", &u, &ru, 1e-6)?;
    c.record("bias_gelu gelu", &g, &rg, 1e-5)?;
    let (dgg, dgc) = c.put(&random(&mut r, rows * inter, 1.0), &[rows, inter])?;
    let (du, dbi) = kernels::gelu_colsum(&u, &dgg)?;
    let (rdu, rdbi) = kernels::gelu_colsum(&ru, &dgc)?;
    c.record("gelu_colsum du", &du, &rdu, 1e-5)?;
    c.record("gelu_colsum dbias", &dbi, &rdbi, 1e-4)?;

    // Dropout: the same keep pattern as a device mask (scaled, the dtype) and as CPU bytes.
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
    let z = kernels::bias_dropout_residual(&xg, &bg, Some(&device_mask), &resg)?;
    let rz = kernels::bias_dropout_residual(&xc, &bc, Some(&cpu_mask), &resc)?;
    c.record("bias_dropout_residual", &z, &rz, 1e-6)?;
    let (dd, ddb) = kernels::dropout_colsum(&dyg, Some(&device_mask))?;
    let (rdd, rddb) = kernels::dropout_colsum(&dyc, Some(&cpu_mask))?;
    c.record("dropout_colsum dy", &dd, &rdd, 1e-6)?;
    c.record("dropout_colsum dbias", &ddb, &rddb, 1e-4)?;

    let (m, classes) = (500, 17);
    let (lg, lc) = c.put(&random(&mut r, m * classes, 4.0), &[m, classes])?;
    let labels: Vec<u32> = (0..m).map(|_| r.random_range(0..classes as u32)).collect();
    let targets = |dev: &Device| -> Result<Targets> {
        Ok(Targets {
            labels: Tensor::from_vec(labels.clone(), m, dev)?,
            count: m,
        })
    };
    let (loss, grad) = crate::train::cross_entropy(&lg, &targets(&c.dev)?)?;
    let (rloss, rgrad) = crate::train::cross_entropy(&lc, &targets(&Device::Cpu)?)?;
    c.record("cross_entropy grad", &grad, &rgrad, 1e-6)?;
    // The loss stays on the GPU until read (here, once).
    let as_t = |v: f64| Tensor::new(&[v as f32], &Device::Cpu);
    c.record(
        "cross_entropy loss",
        &as_t(loss.read()?)?,
        &as_t(rloss.read()?)?,
        1e-5,
    )?;
    Ok(())
}

/// The masks of a batch with rows of these lengths (sentences 0, 1, ...) on `dev`.
fn masks_on(lengths: &[usize], dev: &Device) -> Result<Masker> {
    let mut b = crate::PackedBatch::new();
    for (r, &l) in lengths.iter().enumerate() {
        b.push_row(r as u64, &vec![1; l], &vec![0; l], std::iter::empty());
    }
    let (inputs, _) = b.to_device(dev)?;
    Masker::new(Noise { seed: 77, step: 5 }, &inputs)
}

/// The dropout-mask kernels (hidden-state and padded attention masks) against the CPU's masks of the
/// same sentences: element for element.
fn dropout_masks(c: &mut Checker, lengths: &[usize]) -> Result<()> {
    let (gpu, cpu) = (masks_on(lengths, &c.dev)?, masks_on(lengths, &Device::Cpu)?);
    let n: usize = lengths.iter().sum();
    let p = 0.1;
    let like = Tensor::zeros((n, 384), c.dtype, &c.dev)?;
    let scaled = |m: Option<Mask>| -> Result<Tensor> {
        let m = m.ok_or_else(|| crate::ModelError::Config("no mask at p > 0".into()))?;
        let t = m.tensor.to_dtype(DType::F32)?;
        Ok(if m.tensor.dtype() == DType::U8 {
            (t * (1.0 / (1.0 - m.p)))?
        } else {
            t
        })
    };
    let site = Site::FeedForwardOutput(3);
    let g = scaled(gpu.tokens(&like, Rows::Tokens, site, p)?)?;
    let r = scaled(cpu.tokens(&like.to_device(&Device::Cpu)?, Rows::Tokens, site, p)?)?;
    c.record("dropout_mask tokens", &g, &r, 1e-6)?;
    let t = lengths.iter().copied().max().unwrap_or(0);
    let like = Tensor::zeros((lengths.len(), 12, t, t), c.dtype, &c.dev)?;
    let g = scaled(gpu.attention_padded(&like, 3, p)?)?;
    let r = scaled(cpu.attention_padded(&like.to_device(&Device::Cpu)?, 3, p)?)?;
    c.record("dropout_mask padded attention", &g, &r, 1e-6)?;
    Ok(())
}

/// Attention with and without dropout, on rows of 1 to 512 tokens (BERT's longest; many key tiles), for
/// MiniLM's and BERT-base's heads.
fn attention_kernels(c: &mut Checker) -> Result<()> {
    let mut r = SmallRng::seed_from_u64(12);
    let lengths = [9, 1, 33, 64, 128, 47, 20, 2, 300, 512];
    let rows = RowSpans::new(lengths.to_vec());
    dropout_masks(c, &lengths)?;
    let (gpu, cpu) = (
        masks_on(&lengths, &c.dev)?,
        masks_on(&lengths, &Device::Cpu)?,
    );
    for head_dim in [32, 64] {
        let shape = Heads {
            heads: 12,
            head_dim,
        };
        let (n, h) = (rows.tokens(), 12 * head_dim);
        let (qg, qc) = c.put(&random(&mut r, n * 3 * h, 1.5), &[n, 3 * h])?;
        let (gg, gc) = c.put(&random(&mut r, n * h, 1.0), &[n, h])?;
        for p in [0.0, 0.1] {
            let layer = 2;
            let cpu_mask = cpu
                .attention_bytes(12, layer, p)
                .map(|bytes| (bytes, (1.0 / (1.0 - p)) as f32));
            let dropout = match gpu.gpu() {
                Some(keys) if p > 0.0 => Some(AttentionDropout {
                    keys: keys.keys.clone(),
                    site: Site::Attention(layer).code(),
                    p,
                }),
                _ => None,
            };
            let (ctx, probs) =
                device_ops::attention_forward(&qg, &rows.starts, 12, head_dim, dropout.clone())?;
            let (rctx, cache) = attention::cpu_forward(&qc, &rows, shape, cpu_mask, true)?;
            let what = format!("attention dh {head_dim} p {p}");
            c.record(&format!("{what} context"), &ctx, &rctx, 1e-5)?;
            let Some(cache) = cache else {
                continue;
            };
            if let AttentionCache::Cpu { probs: rp, .. } = &cache {
                let rp = Tensor::from_slice(rp, rp.len(), &Device::Cpu)?;
                c.record(&format!("{what} probabilities"), &probs, &rp, 1e-6)?;
            }
            let dqkv = device_ops::attention_backward(
                &gg,
                &qg,
                &probs,
                &rows.starts,
                12,
                head_dim,
                dropout,
            )?;
            let rdqkv = attention::backward(&gc, &qc, &rows, shape, &cache)?;
            c.record(&format!("{what} dqkv"), &dqkv, &rdqkv, 1e-5)?;
        }
    }
    Ok(())
}
