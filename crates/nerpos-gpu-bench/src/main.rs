//! `nerpos-gpu-bench`: the GPU suite's measurements (`launch/gpu-check.sh`) — every fused kernel
//! against its CPU kernel, training correctness against the CPU, and training speed — through the
//! libraries' public APIs: the trainer's step, planner and settings, the kernels' ops.

mod comm;
mod kernels;
mod setup;
mod train;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use nerpos_train::config::Precision;
use serde_json::json;

use crate::setup::ModelShape;

#[derive(Parser)]
#[command(
    version,
    about = "GPU correctness and speed measurements for launch/gpu-check.sh"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// GPU f32 vs CPU on the same batches; bf16 vs f32 on the GPU.
    Correctness {
        /// Dataset folder written by nerpos-prep.
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 30)]
        steps: usize,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long, value_enum, default_value = "minilm")]
        shape: ModelShape,
        /// With the fused CUDA kernels (LayerNorm, GELU, dropout, attention, cross-entropy).
        #[arg(long)]
        gpu_kernels: bool,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A NaN step on the GPU: left out by the device guard, no read-back (exit 1 when not).
    Nonfinite {
        #[arg(long)]
        data: PathBuf,
        /// With the fused CUDA kernels.
        #[arg(long)]
        gpu_kernels: bool,
    },
    /// Every fused CUDA kernel against its CPU kernel (one JSON line per kernel and dtype).
    Kernels {
        /// Small cases, f32 only (for compute-sanitizer).
        #[arg(long)]
        small: bool,
    },
    /// Training throughput of one configuration.
    Speed {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, value_enum)]
        shape: ModelShape,
        /// Sentences per batch.
        #[arg(long)]
        batch: usize,
        /// Instead of a fixed number of sentences: as many as fit this many real tokens.
        #[arg(long)]
        batch_tokens: Option<usize>,
        #[arg(long, value_enum)]
        precision: Precision,
        /// Timed steps (after the warm-up).
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Batch sentences of similar length together (less padding), as the trainer does.
        #[arg(long)]
        grouped: bool,
        /// Device AdamW from composed tensor ops instead of the fused kernel.
        #[arg(long)]
        unfused_adamw: bool,
        /// With the fused CUDA kernels (LayerNorm, GELU, dropout, attention, cross-entropy).
        #[arg(long)]
        gpu_kernels: bool,
        /// Dense bf16 peak of the GPU in TFLOP/s (for MFU; 989 for H100/H200 SXM).
        #[arg(long)]
        peak_tflops: Option<f64>,
        /// Write the padded batches (warm-up and timed) as JSON lines, for the PyTorch reference.
        #[arg(long)]
        dump_batches: Option<PathBuf>,
        /// Synchronise the device between phases and report milliseconds per step for matrix
        /// products, attention, the other kernels and the optimiser (the steps run slower).
        #[arg(long)]
        profile: bool,
        /// Sum the gradients over a world-1 NCCL communicator (the multi-GPU path with nothing to
        /// exchange), and time that reduction alone: the step's extra time over the same run
        /// without `--nccl`, against the reduction alone, is its exposed share.
        #[arg(long)]
        nccl: bool,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// One JSON line per kernel and dtype; fails when any kernel is off its CPU reference.
fn kernels(small: bool) -> anyhow::Result<()> {
    let cfg = setup::train_config(std::path::Path::new("none"), Precision::F32, true, true)?;
    let dev = setup::device(&cfg)?;
    if !dev.is_cuda() {
        bail!("the kernel check compares CUDA kernels with the CPU: it needs a GPU");
    }
    let mut failed = Vec::new();
    for c in kernels::run(&dev, small)? {
        let mut v = serde_json::to_value(&c)?;
        v["check"] = json!("kernel");
        println!("{v}");
        if !c.pass {
            failed.push(format!("{} ({})", c.kernel, c.dtype));
        }
    }
    if !failed.is_empty() {
        bail!("kernels off their CPU reference: {}", failed.join(", "));
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    nerpos_run::cli::init_logging("warn");
    nerpos_run::cli::exit(run(Cli::parse()).map(|()| std::process::ExitCode::SUCCESS))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (result, out) = match cli.cmd {
        Cmd::Kernels { small } => return kernels(small),
        Cmd::Nonfinite { data, gpu_kernels } => {
            let v = train::nonfinite(&data, gpu_kernels)?;
            println!("{v}");
            if v["pass"] != json!(true) {
                bail!("a non-finite step was not left out cleanly: {v}");
            }
            return Ok(());
        }
        Cmd::Correctness {
            data,
            steps,
            batch,
            shape,
            gpu_kernels,
            out,
        } => (
            train::correctness(&data, steps.max(2), batch, shape, gpu_kernels)?,
            out,
        ),
        Cmd::Speed {
            data,
            shape,
            batch,
            batch_tokens,
            precision,
            steps,
            warmup,
            grouped,
            unfused_adamw,
            gpu_kernels,
            peak_tflops,
            dump_batches,
            profile,
            nccl,
            out,
        } => {
            let run = train::SpeedRun {
                data: &data,
                shape,
                batch,
                batch_tokens,
                precision,
                steps: steps.max(1),
                warmup,
                grouped,
                fused_adamw: !unfused_adamw,
                gpu_kernels,
                peak_tflops,
                dump: dump_batches.as_deref(),
                profile,
                nccl,
            };
            (train::speed(&run)?, out)
        }
    };
    let text = serde_json::to_string(&result)?;
    println!("{text}");
    if let Some(path) = out {
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
