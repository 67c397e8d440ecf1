use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Parser;
use nerpos_run::{EXIT_DIVERGED, EXIT_INTERRUPTED};
use nerpos_train::{Outcome, Output, TrainConfig};

/// Train the BERT+POS tagger: one process per device (CPU or one GPU); start several with
/// launch/train.sh, torchrun-style variables or srun.
#[derive(Parser)]
#[command(name = "nerpos-train", version)]
struct Cli {
    /// Training configuration (TOML); see configs/.
    #[arg(long, value_name = "FILE", required_unless_present_any = ["resume", "tier_info"])]
    config: Option<PathBuf>,
    /// Override a key: --set lr=3e-5 --set out=runs/x (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Continue an interrupted run from its newest checkpoint (its config.toml, plus --set overrides).
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Print the CPU and the vector tiers its kernels and matrix products run at (NERPOS_CPU_TIER
    /// caps the kernels'), and exit.
    #[arg(long, conflicts_with_all = ["config", "resume"])]
    tier_info: bool,
}

fn main() -> ExitCode {
    nerpos_model::keep_freed_memory();
    // Several processes on one machine must not each start a thread per core.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let local: usize = std::env::var("LOCAL_WORLD_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        // SAFETY: nothing else runs yet; no thread reads the environment concurrently.
        unsafe {
            std::env::set_var(
                "RAYON_NUM_THREADS",
                (cores / local.max(1)).max(1).to_string(),
            )
        };
    }
    let rank: usize = std::env::var("RANK")
        .or_else(|_| std::env::var("SLURM_PROCID"))
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let output = Output::init(rank);
    match run(Cli::parse(), output.clone()) {
        Ok(Outcome::Finished) => ExitCode::SUCCESS,
        Ok(Outcome::Interrupted) => ExitCode::from(EXIT_INTERRUPTED),
        Ok(Outcome::Diverged(why)) => {
            // Every rank stops at the same step; rank 0 says why (the others' lines would repeat it).
            if rank == 0 {
                output.error(&format!("error: {why}"));
            } else {
                tracing::warn!("stopped: training diverged (rank 0 says where and why)");
            }
            ExitCode::from(EXIT_DIVERGED)
        }
        Err(e) => {
            output.error(&format!("error (rank {rank}): {e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, output: Output) -> anyhow::Result<Outcome> {
    if cli.tier_info {
        nerpos_kernels::Tier::check_env()?;
        println!("{}", nerpos_kernels::tier::describe());
        return Ok(Outcome::Finished);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGUSR1,
        signal_hook::consts::SIGINT,
    ] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let config_path = match (&cli.resume, &cli.config) {
        (Some(run_dir), None) => run_dir.join("config.toml"),
        (_, Some(c)) => c.clone(),
        (None, None) => anyhow::bail!("give --config or --resume"),
    };
    let cfg = TrainConfig::load(Some(&config_path), &cli.sets)?;
    if cli.resume.is_some() {
        report_resume_changes(&cfg, &TrainConfig::load(Some(&config_path), &[])?)?;
    }
    nerpos_train::run(cfg, cli.resume.as_deref(), stop, output)
}

/// A resume continues exactly what the checkpoint left unless a `--set` changes the training: say so,
/// naming each such key (and refuse what would break the saved place in the data).
fn report_resume_changes(cfg: &TrainConfig, saved: &TrainConfig) -> anyhow::Result<()> {
    for c in cfg.resume_changes(saved)? {
        if c.changes_training {
            tracing::warn!(
                "resuming with `{}` changed ({} → {}): from here the run is not the uninterrupted one",
                c.key,
                c.from,
                c.to
            );
        } else {
            tracing::info!("resuming with `{}` changed ({} → {})", c.key, c.from, c.to);
        }
    }
    Ok(())
}
