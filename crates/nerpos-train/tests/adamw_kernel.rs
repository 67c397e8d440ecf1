//! The GPU AdamW kernels (`optim::ADAMW_KERNEL`: the update, and the update that also writes the bf16
//! compute copy) run on the CPU emulator of the CUDA runtime (`nerpos-model/kernels/emu`) against the
//! CPU update: the same new weights and moments, and the copy equal to the new weights cast to bf16.
//! Needs a C++20 compiler (`CXX`, else `g++`); without one the test is reported as skipped.

use std::process::Command;

use candle_core::{Device, Tensor, Var};
use nerpos_train::optim::{ADAMW_KERNEL, AdamW, AdamWConfig, GradScale};

const MAIN: &str = r#"
#include <cstdio>
#include <vector>
int main(int argc, char **argv) {
  unsigned long long n = std::stoull(argv[1]);
  float s[7];
  for (int k = 0; k < 7; ++k) s[k] = std::stof(argv[2 + k]);
  float clip[1] = {std::stof(argv[9])};
  std::vector<float> p(n), g(n), m(n, 0.0f), v(n, 0.0f);
  std::vector<unsigned short> h(n);
  if (std::fread(p.data(), 4, n, stdin) != n || std::fread(g.data(), 4, n, stdin) != n) return 1;
  std::vector<float> p2 = p, m2 = m, v2 = v;
  nerpos_emu::launch({3, 1}, {64, 1}, 0, [&] {
    nerpos_adamw(p2.data(), g.data(), m2.data(), v2.data(), clip, n, s[0], s[1], s[2], s[3], s[4], s[5], s[6]);
  });
  nerpos_emu::launch({3, 1}, {64, 1}, 0, [&] {
    nerpos_adamw_half(p.data(), g.data(), m.data(), v.data(), clip, h.data(), n, s[0], s[1], s[2], s[3], s[4], s[5], s[6]);
  });
  std::fwrite(p2.data(), 4, n, stdout);
  std::fwrite(p.data(), 4, n, stdout);
  std::fwrite(m.data(), 4, n, stdout);
  std::fwrite(v.data(), 4, n, stdout);
  std::fwrite(h.data(), 2, n, stdout);
  return 0;
}
"#;

#[test]
fn adamw_kernels_on_the_emulator_equal_the_cpu_update() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    if Command::new(&cxx).arg("--version").output().is_err() {
        nerpos_testdata::skip(
            "adamw_kernels_on_the_emulator_equal_the_cpu_update",
            "no C++20 compiler (CXX or g++) to build the CUDA emulator",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let emu = nerpos_testdata::repo_root().join("crates/nerpos-model/kernels/emu");
    let src = dir.path().join("adamw.cpp");
    std::fs::write(
        &src,
        format!("#include \"cuda_emu.h\"\n#include <string>\n{ADAMW_KERNEL}\n{MAIN}"),
    )
    .unwrap();
    let bin = dir.path().join("adamw");
    let out = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-pthread", "-I"])
        .arg(&emu)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the AdamW kernels do not build for the emulator:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 1,000 values (several blocks and grid-stride rounds), one step of the CPU update.
    let n = 1000;
    let p: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
        .collect();
    let g: Vec<f32> = (0..n)
        .map(|i| ((i * 53 % 97) as f32 - 48.0) / 10.0)
        .collect();
    let config = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        decay_all: true,
    };
    let (grad_scale, lr) = (0.5f64, 1e-3f64);
    let var = Var::from_tensor(&Tensor::from_vec(p.clone(), n, &Device::Cpu).unwrap()).unwrap();
    let mut opt = AdamW::new([("w", &var)].into_iter(), config).unwrap();
    let grads = [(
        "w".to_string(),
        nerpos_model::Grad::Dense(Tensor::from_vec(g.clone(), n, &Device::Cpu).unwrap()),
    )]
    .into_iter()
    .collect();
    opt.step(&grads, &GradScale::plain(grad_scale), lr, lr)
        .unwrap();
    let want_p = var.as_tensor().to_vec1::<f32>().unwrap();
    let state = opt.state_tensors().unwrap();
    let want_m = state["m.w"].to_vec1::<f32>().unwrap();
    let want_v = state["v.w"].to_vec1::<f32>().unwrap();

    let (bc1, bc2) = (1.0 - config.beta1, 1.0 - config.beta2);
    // The kernels get the scale as a host part and a device clipping factor (0.25 · 2 = 0.5, exact).
    let scalars = [
        grad_scale / 2.0,
        lr * config.weight_decay,
        config.beta1,
        config.beta2,
        config.eps,
        lr / bc1,
        bc2.sqrt(),
    ];
    let mut input: Vec<u8> = p.iter().flat_map(|x| x.to_le_bytes()).collect();
    input.extend(g.iter().flat_map(|x| x.to_le_bytes()));
    let mut child = Command::new(&bin)
        .arg(n.to_string())
        .args(scalars.iter().map(|s| format!("{:e}", *s as f32)))
        .arg("2")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let f32s = |k: usize| -> Vec<f32> {
        out.stdout[k * 4 * n..(k + 1) * 4 * n]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let close = |what: &str, a: &[f32], b: &[f32]| {
        let e = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / (1e-6 + y.abs()))
            .fold(0f32, f32::max);
        assert!(e < 1e-5, "{what}: relative error {e:e}");
    };
    close("weights (plain kernel)", &f32s(0), &want_p);
    close("weights (bf16-copy kernel)", &f32s(1), &want_p);
    close("first moment", &f32s(2), &want_m);
    close("second moment", &f32s(3), &want_v);
    // The copy is exactly the kernel's new weight cast to bf16 (round to nearest even).
    let h: Vec<u16> = out.stdout[4 * 4 * n..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    for (i, (&bits, &w)) in h.iter().zip(&f32s(1)).enumerate() {
        assert_eq!(
            bits,
            half::bf16::from_f32(w).to_bits(),
            "bf16 copy of weight {i}"
        );
    }
}
