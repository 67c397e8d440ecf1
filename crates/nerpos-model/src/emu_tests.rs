//! The CUDA kernels (`kernels/train.cu`) checked on a machine without a GPU: the same source is built
//! for the CPU against a CUDA stand-in (`kernels/emu/cuda_emu.h`: a thread per CUDA thread, barriers
//! for `__syncthreads`, `__syncwarp` and warp shuffles), driven by `kernels/emu/harness.cpp` with the
//! launches `src/cuda.rs` makes, and compared with the CPU kernels — the reference every GPU kernel is
//! held to. On a GPU, `nerpos-gpu-bench kernels` makes the same comparison with the real launches.
//!
//! Needs a C++20 compiler (`CXX`, else `g++`); without one the tests are reported as skipped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::attention::{self, AttentionCache, Heads};
use crate::batch::{RowSpans, Targets};
use crate::dropout::{Masker, Noise, Rows, Site};
use crate::kernels::{self, Mask};
use crate::ops;

/// The harness binary, built once per test run; `None` (a skip) without a C++ compiler.
fn harness(test: &str) -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    let bin = BIN.get_or_init(|| {
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
        if Command::new(&cxx).arg("--version").output().is_err() {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("nerpos-cuda-emu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let bin = dir.join("harness");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/emu/harness.cpp");
        let out = Command::new(&cxx)
            .args(["-std=c++20", "-O2", "-pthread", "-Wall", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .expect("runs the C++ compiler");
        assert!(
            out.status.success(),
            "the CUDA kernels do not build for the emulator:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(bin)
    });
    if bin.is_none() {
        nerpos_testdata::skip(
            test,
            "no C++20 compiler (CXX or g++) to build the CUDA emulator",
        );
    }
    bin.as_deref()
}

/// One operation on the emulator: scalars, f32 (or i32/u32) arrays in; named f32 arrays out.
struct Job {
    op: &'static str,
    scalars: Vec<(&'static str, String)>,
    arrays: Vec<(&'static str, Vec<u8>)>,
}

impl Job {
    fn new(op: &'static str) -> Job {
        Job {
            op,
            scalars: Vec::new(),
            arrays: Vec::new(),
        }
    }

    fn set(mut self, k: &'static str, v: impl ToString) -> Job {
        self.scalars.push((k, v.to_string()));
        self
    }

    fn f32(mut self, k: &'static str, v: &[f32]) -> Job {
        self.arrays
            .push((k, v.iter().flat_map(|x| x.to_le_bytes()).collect()));
        self
    }

    fn u64(mut self, k: &'static str, v: &[u64]) -> Job {
        self.arrays
            .push((k, v.iter().flat_map(|x| x.to_le_bytes()).collect()));
        self
    }

    fn u32(mut self, k: &'static str, v: &[u32]) -> Job {
        self.arrays
            .push((k, v.iter().flat_map(|x| x.to_le_bytes()).collect()));
        self
    }

    fn run(self, bin: &Path, outputs: &[&str]) -> HashMap<String, Vec<f32>> {
        let dir = tempfile::tempdir().unwrap();
        let mut text = format!("{}\n", self.op);
        for (k, v) in &self.scalars {
            text.push_str(&format!("{k} {v}\n"));
        }
        std::fs::write(dir.path().join("job.txt"), text).unwrap();
        for (k, bytes) in &self.arrays {
            std::fs::write(dir.path().join(format!("{k}.bin")), bytes).unwrap();
        }
        let out = Command::new(bin).arg(dir.path()).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            self.op,
            String::from_utf8_lossy(&out.stderr)
        );
        outputs
            .iter()
            .map(|name| {
                let bytes = std::fs::read(dir.path().join(format!("{name}.bin"))).unwrap();
                let v = bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                (name.to_string(), v)
            })
            .collect()
    }
}

fn random(rng: &mut SmallRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn cpu(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest |a − b| / (1 + |b|).
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f32::max)
}

fn close(what: &str, gpu: &[f32], reference: &[f32], tol: f32) {
    let e = rel_err(gpu, reference);
    assert!(e <= tol, "{what}: max relative error {e:.2e} > {tol:.0e}");
}

/// Values rounded to bf16, as a bf16 kernel's inputs are.
fn bf16_rounded(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

#[test]
fn layer_norm_forward_and_backward() {
    let Some(bin) = harness("emu_tests::layer_norm_forward_and_backward") else {
        return;
    };
    let mut r = SmallRng::seed_from_u64(1);
    let (rows, h) = (100, 72);
    let x: Vec<f32> = random(&mut r, rows * h, 2.0)
        .iter()
        .map(|v| v + 0.5)
        .collect();
    let w = random(&mut r, h, 1.0);
    let b = random(&mut r, h, 1.0);
    let dy = random(&mut r, rows * h, 1.0);
    for dtype in ["f32", "bf16"] {
        let (xs, ws, bs, dys) = if dtype == "f32" {
            (x.clone(), w.clone(), b.clone(), dy.clone())
        } else {
            (
                bf16_rounded(&x),
                bf16_rounded(&w),
                bf16_rounded(&b),
                bf16_rounded(&dy),
            )
        };
        let tol = if dtype == "f32" { 2e-5 } else { 1e-2 };
        let y_ref = ops::layer_norm_fwd(
            &cpu(&xs, &[rows, h]),
            &cpu(&ws, &[h]),
            &cpu(&bs, &[h]),
            1e-12,
        )
        .unwrap();
        let got = Job::new("ln_fwd")
            .set("dtype", dtype)
            .set("eps", 1e-12)
            .f32("x", &x)
            .f32("w", &w)
            .f32("b", &b)
            .run(bin, &["y"]);
        close(
            &format!("LayerNorm forward {dtype}"),
            &got["y"],
            &flat(&y_ref),
            tol,
        );

        let (dx, dw, db) = ops::layer_norm_bwd(
            &cpu(&xs, &[rows, h]),
            &cpu(&ws, &[h]),
            &cpu(&dys, &[rows, h]),
            1e-12,
        )
        .unwrap();
        let got = Job::new("ln_bwd")
            .set("dtype", dtype)
            .set("eps", 1e-12)
            .f32("x", &x)
            .f32("w", &w)
            .f32("dy", &dy)
            .run(bin, &["out"]);
        let out = &got["out"];
        close(
            &format!("LayerNorm dx {dtype}"),
            &out[..rows * h],
            &flat(&dx),
            tol,
        );
        // Summed over 100 rows: compare relative to the column's magnitude.
        close(
            &format!("LayerNorm dweight {dtype}"),
            &out[rows * h..(rows + 1) * h],
            &flat(&dw),
            tol * 4.0,
        );
        close(
            &format!("LayerNorm dbias {dtype}"),
            &out[(rows + 1) * h..],
            &flat(&db),
            tol * 4.0,
        );
    }
}

#[test]
fn column_sums_bias_gelu_and_dropout() {
    let Some(bin) = harness("emu_tests::column_sums_bias_gelu_and_dropout") else {
        return;
    };
    let mut r = SmallRng::seed_from_u64(2);
    // 130 rows: five chunks of 32 rows (the last one short); 300 columns: two blocks of 256.
    let (rows, width) = (130, 300);
    let x = random(&mut r, rows * width, 3.0);
    let got = Job::new("colsum")
        .set("rows", rows)
        .set("width", width)
        .f32("x", &x)
        .run(bin, &["out"]);
    close(
        "column sum",
        &got["out"],
        &flat(&ops::column_sum(&cpu(&x, &[rows, width])).unwrap()),
        1e-5,
    );

    let bias = random(&mut r, width, 1.0);
    let (u, g) = kernels::bias_gelu(&cpu(&x, &[rows, width]), &cpu(&bias, &[width])).unwrap();
    let got = Job::new("bias_gelu")
        .f32("y", &x)
        .f32("bias", &bias)
        .run(bin, &["out"]);
    let n = rows * width;
    close("bias + GELU: u", &got["out"][..n], &flat(&u), 1e-6);
    close("bias + GELU: gelu(u)", &got["out"][n..], &flat(&g), 2e-6);

    let dg = random(&mut r, n, 1.0);
    let (du, db) = kernels::gelu_colsum(&u, &cpu(&dg, &[rows, width])).unwrap();
    let got = Job::new("gelu_colsum")
        .set("width", width)
        .f32("a", &flat(&u))
        .f32("b", &dg)
        .run(bin, &["out"]);
    close("GELU backward: du", &got["out"][..n], &flat(&du), 2e-6);
    close("GELU backward: dbias", &got["out"][n..], &flat(&db), 1e-5);

    // Dropout with a fixed byte mask: the GPU form of the same mask is the f32 keep-scale mask.
    let p = 0.1;
    let bytes: Vec<u8> = (0..n).map(|_| u8::from(r.random::<f32>() >= 0.1)).collect();
    let scaled: Vec<f32> = bytes
        .iter()
        .map(|&k| f32::from(k) / (1.0 - p as f32))
        .collect();
    let mask = Mask {
        tensor: Tensor::from_vec(bytes, (rows, width), &Device::Cpu).unwrap(),
        p,
    };
    let residual = random(&mut r, n, 1.0);
    for with_mask in [true, false] {
        let m = with_mask.then_some(&mask);
        let z = kernels::bias_dropout_residual(
            &cpu(&x, &[rows, width]),
            &cpu(&bias, &[width]),
            m,
            &cpu(&residual, &[rows, width]),
        )
        .unwrap();
        let mut job = Job::new("bias_dropout_residual")
            .set("has_mask", u8::from(with_mask))
            .f32("y", &x)
            .f32("bias", &bias)
            .f32("residual", &residual);
        if with_mask {
            job = job.f32("mask", &scaled);
        }
        close(
            &format!("bias + dropout + residual (mask {with_mask})"),
            &job.run(bin, &["z"])["z"],
            &flat(&z),
            1e-6,
        );

        let (dy, db) = kernels::dropout_colsum(&cpu(&dg, &[rows, width]), m).unwrap();
        let mut job = Job::new("dropout_colsum")
            .set("has_mask", u8::from(with_mask))
            .set("width", width)
            .f32("a", &dg);
        if with_mask {
            job = job.f32("b", &scaled);
        }
        let got = job.run(bin, &["out"]);
        close(
            &format!("dropout backward: dy (mask {with_mask})"),
            &got["out"][..n],
            &flat(&dy),
            1e-6,
        );
        close(
            &format!("dropout backward: dbias (mask {with_mask})"),
            &got["out"][n..],
            &flat(&db),
            1e-5,
        );
    }
}

/// A batch of rows of these lengths (sentences `ids`), its inputs on the CPU and its masks at step 5
/// of seed 77.
fn batch_of(lengths: &[usize], ids: &[u64]) -> (crate::Inputs, Masker) {
    let mut b = crate::PackedBatch::new();
    for (&l, &id) in lengths.iter().zip(ids) {
        b.push_row(id, &vec![1; l], &vec![0; l], std::iter::empty());
    }
    let (inputs, _) = b.to_device(&Device::Cpu).unwrap();
    let masks = Masker::new(Noise { seed: 77, step: 5 }, &inputs).unwrap();
    (inputs, masks)
}

/// The attention kernels against the CPU kernel: probabilities, context and dqkv, with and without
/// dropout (the GPU kernel drawing its mask from the sentences' keys in CUDA, the CPU kernel given the
/// Rust masks of the same sentences), for rows shorter and longer than a key tile (32) and head sizes
/// below and above a warp's width.
#[test]
fn attention_forward_and_backward() {
    let Some(bin) = harness("emu_tests::attention_forward_and_backward") else {
        return;
    };
    let mut r = SmallRng::seed_from_u64(3);
    let lengths = [5, 1, 40, 33, 64, 7];
    let rows = RowSpans::new(lengths.to_vec());
    let (inputs, masks) = batch_of(&lengths, &[8, 3, 12, 0, 5, 40]);
    let keys = Noise { seed: 77, step: 5 }.keys(&inputs.host.sentences);
    for (heads, head_dim) in [(3, 20), (2, 40)] {
        let shape = Heads { heads, head_dim };
        let (n, h) = (rows.tokens(), heads * head_dim);
        let qkv = random(&mut r, n * 3 * h, 1.5);
        let dctx = random(&mut r, n * h, 1.0);
        let starts: Vec<u32> = rows.starts.iter().map(|&s| s as u32).collect();
        for p in [0.0f64, 0.1] {
            let layer = 4;
            let keep_scale = (1.0 / (1.0 - p)) as f32;
            let job = |op: &'static str| {
                Job::new(op)
                    .set("heads", heads)
                    .set("head_dim", head_dim)
                    .set("site", Site::Attention(layer).code())
                    .set("threshold", crate::dropout::threshold(p))
                    .set("keep_scale", keep_scale)
                    .f32("qkv", &qkv)
                    .u32("starts", &starts)
                    .u64("keys", &keys)
            };
            let mask = masks
                .attention_bytes(heads, layer, p)
                .map(|bytes| (bytes, keep_scale));
            let (ctx, cache) =
                attention::cpu_forward(&cpu(&qkv, &[n, 3 * h]), &rows, shape, mask, true).unwrap();
            let cache = cache.unwrap();
            let AttentionCache::Cpu { probs, .. } = &cache else {
                unreachable!("the CPU kernel keeps a CPU cache")
            };
            let fwd = job("attn_fwd").run(bin, &["ctx", "probs"]);
            let what = format!("attention {heads}×{head_dim}, p {p}");
            close(
                &format!("{what}: probabilities"),
                &fwd["probs"],
                probs,
                1e-6,
            );
            close(&format!("{what}: context"), &fwd["ctx"], &flat(&ctx), 1e-5);

            let dqkv = attention::backward(
                &cpu(&dctx, &[n, h]),
                &cpu(&qkv, &[n, 3 * h]),
                &rows,
                shape,
                &cache,
            )
            .unwrap();
            let bwd = job("attn_bwd")
                .f32("dctx", &dctx)
                .f32("probs", &fwd["probs"])
                .run(bin, &["dqkv"]);
            close(&format!("{what}: dqkv"), &bwd["dqkv"], &flat(&dqkv), 1e-5);
        }
    }
}

/// The mask kernels of `kernels/dropout.cuh` draw the Rust masks element for element (hidden-state
/// rows of all tokens and of the head positions, padded attention blocks), and a sentence's masks
/// do not depend on the batch around it: the same sentence in another batch, at another place and
/// beside other sentences, gets the same mask — in the mask kernel and in the attention kernel.
#[test]
fn dropout_masks_are_the_cpu_masks_and_keyed_by_the_sentence() {
    let Some(bin) = harness("emu_tests::dropout_masks_are_the_cpu_masks_and_keyed_by_the_sentence")
    else {
        return;
    };
    let p = 0.25;
    let noise = Noise { seed: 77, step: 5 };
    let scale = (1.0 / (1.0 - p)) as f32;
    let kernel_mask = |inputs: &crate::Inputs, at: &[crate::dropout::TokenAt], width: usize| {
        Job::new("dropout_mask")
            .set("width", width)
            .set("site", Site::Head.code())
            .set("threshold", crate::dropout::threshold(p))
            .set("keep_scale", scale)
            .u64("keys", &noise.keys(&inputs.host.sentences))
            .u32("rows", &at.iter().map(|a| a.row).collect::<Vec<_>>())
            .u32("pos", &at.iter().map(|a| a.position).collect::<Vec<_>>())
            .run(bin, &["mask"])
            .remove("mask")
            .unwrap()
    };
    let bytes = |m: Option<Mask>| -> Vec<f32> {
        flat(&m.unwrap().tensor.to_dtype(DType::F32).unwrap())
            .iter()
            .map(|&k| k * scale)
            .collect()
    };
    // Sentence 7 (length 6) first in one batch, last in another; sentence 2 in both.
    let (a, masks_a) = batch_of(&[6, 3, 9], &[7, 2, 11]);
    let (b, masks_b) = batch_of(&[4, 3, 6], &[30, 2, 7]);
    let width = 24;
    for (inputs, masks) in [(&a, &masks_a), (&b, &masks_b)] {
        let n = inputs.rows.tokens();
        let like = Tensor::zeros((n, width), DType::F32, &Device::Cpu).unwrap();
        let got = kernel_mask(inputs, &inputs.token_at(), width);
        let want = bytes(masks.tokens(&like, Rows::Tokens, Site::Head, p).unwrap());
        assert_eq!(got, want, "token mask kernel vs the Rust mask");
        let t = (0..inputs.rows.rows())
            .map(|r| inputs.rows.len(r))
            .max()
            .unwrap();
        let starts: Vec<u32> = inputs.rows.starts.iter().map(|&s| s as u32).collect();
        let got = Job::new("attn_dropout_mask_padded")
            .set("heads", 2)
            .set("site", Site::Attention(1).code())
            .set("threshold", crate::dropout::threshold(p))
            .set("keep_scale", scale)
            .u64("keys", &noise.keys(&inputs.host.sentences))
            .u32("starts", &starts)
            .run(bin, &["mask"])
            .remove("mask")
            .unwrap();
        let rows = inputs.rows.rows();
        let like = Tensor::zeros((rows, 2, t, t), DType::F32, &Device::Cpu).unwrap();
        let want = bytes(masks.attention_padded(&like, 1, p).unwrap());
        assert_eq!(got, want, "padded attention mask kernel vs the Rust mask");
    }
    // Sentence 7's six token rows: the first six of batch a, the last six of batch b.
    let ma = kernel_mask(&a, &a.token_at(), width);
    let mb = kernel_mask(&b, &b.token_at(), width);
    assert_eq!(ma[..6 * width], mb[mb.len() - 6 * width..]);
    assert_ne!(ma[..6 * width], ma[6 * width..12 * width]);

    // The attention kernel: sentence 7's context is the same in both batches (its probabilities'
    // dropout keyed by the sentence, not by the offset of its block in the batch).
    let (heads, head_dim) = (2, 8);
    let h = heads * head_dim;
    let mut r = SmallRng::seed_from_u64(8);
    let own = random(&mut r, 6 * 3 * h, 1.5);
    let context_of_7 = |inputs: &crate::Inputs, first: usize| -> Vec<f32> {
        let n = inputs.rows.tokens();
        let mut qkv = random(&mut r.clone(), n * 3 * h, 1.5);
        qkv[first * 3 * h..(first + 6) * 3 * h].copy_from_slice(&own);
        let starts: Vec<u32> = inputs.rows.starts.iter().map(|&s| s as u32).collect();
        let ctx = Job::new("attn_fwd")
            .set("heads", heads)
            .set("head_dim", head_dim)
            .set("site", Site::Attention(0).code())
            .set("threshold", crate::dropout::threshold(p))
            .set("keep_scale", scale)
            .f32("qkv", &qkv)
            .u32("starts", &starts)
            .u64("keys", &noise.keys(&inputs.host.sentences))
            .run(bin, &["ctx"])
            .remove("ctx")
            .unwrap();
        ctx[first * h..(first + 6) * h].to_vec()
    };
    assert_eq!(context_of_7(&a, 0), context_of_7(&b, 7));
}

#[test]
fn cross_entropy_on_the_device() {
    let Some(bin) = harness("emu_tests::cross_entropy_on_the_device") else {
        return;
    };
    let mut r = SmallRng::seed_from_u64(4);
    let (m, c) = (50, 17);
    let logits = random(&mut r, m * c, 4.0);
    let labels: Vec<u32> = (0..m).map(|_| r.random_range(0..c as u32)).collect();
    let targets = Targets {
        labels: Tensor::from_vec(labels.clone(), m, &Device::Cpu).unwrap(),
        count: m,
    };
    let (loss, grad) = crate::train::cross_entropy(&cpu(&logits, &[m, c]), &targets).unwrap();
    let loss = loss.read().unwrap();
    let got = Job::new("cross_entropy")
        .f32("logits", &logits)
        .u32("labels", &labels)
        .run(bin, &["loss", "grad"]);
    let sum: f64 = got["loss"].iter().map(|&v| f64::from(v)).sum();
    assert!(
        (sum - loss).abs() <= 1e-5 * loss.abs(),
        "loss: emulated kernel {sum}, CPU {loss}"
    );
    close("cross-entropy gradient", &got["grad"], &flat(&grad), 1e-6);
}
