//! With the `cuda` feature: compiles `kernels/train.cu` (which includes `adamw.cu`) with nvcc into a fatbin (cubins for the GPU
//! generations in `NERPOS_CUDA_ARCHS`, default sm_80 and sm_90, plus PTX of the newest for later
//! GPUs), so that no kernel is compiled or JIT-translated when a training job starts. Without the
//! feature it does nothing (the CPU build needs no CUDA toolkit).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=kernels/train.cu");
    println!("cargo::rerun-if-changed=kernels/adamw.cu");
    println!("cargo::rerun-if-changed=kernels/dropout.cuh");
    println!("cargo::rerun-if-env-changed=NERPOS_CUDA_ARCHS");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = match std::env::var_os("CUDA_HOME") {
        Some(home) if PathBuf::from(&home).join("bin/nvcc").is_file() => {
            PathBuf::from(home).join("bin/nvcc")
        }
        _ => PathBuf::from("nvcc"),
    };
    let archs = std::env::var("NERPOS_CUDA_ARCHS").unwrap_or_else(|_| "80,90".into());
    let archs: Vec<&str> = archs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    let mut cmd = Command::new(&nvcc);
    cmd.args(["--fatbin", "-O3", "-std=c++17", "-o"])
        .arg(out.join("train.fatbin"))
        .arg("kernels/train.cu");
    for a in &archs {
        cmd.arg(format!("-gencode=arch=compute_{a},code=sm_{a}"));
    }
    if let Some(last) = archs.last() {
        cmd.arg(format!("-gencode=arch=compute_{last},code=compute_{last}"));
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "the cuda feature compiles kernels/train.cu with {} and could not run it ({e}); \
             launch/build-cuda.sh sets up a CUDA toolchain",
            nvcc.display()
        )
    });
    assert!(
        status.success(),
        "nvcc failed on kernels/train.cu ({status})"
    );
}
