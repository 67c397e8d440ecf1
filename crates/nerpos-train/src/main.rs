use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Parser;
use nerpos_train::{EXIT_INTERRUPTED, Outcome, TrainConfig};

/// Train the BERT+POS tagger: one process per device (CPU or one GPU); start several with
/// launch/train.sh, torchrun-style variables or srun.
#[derive(Parser)]
#[command(name = "nerpos-train", version)]
struct Cli {
    /// Training configuration (TOML); see configs/.
    #[arg(long, value_name = "FILE", required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Override a key: --set lr=3e-5 --set out=runs/x (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Continue an interrupted run from its newest checkpoint (its config.toml, plus --set overrides).
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
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
    let rank = std::env::var("RANK")
        .or_else(|_| std::env::var("SLURM_PROCID"))
        .unwrap_or_else(|_| "0".into());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NERPOS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let span = tracing::info_span!("rank", r = %rank);
    let _enter = span.enter();
    match run(Cli::parse()) {
        Ok(Outcome::Finished) => ExitCode::SUCCESS,
        Ok(Outcome::Interrupted) => ExitCode::from(EXIT_INTERRUPTED as u8),
        Err(e) => {
            eprintln!("error (rank {rank}): {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
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
        (None, None) => unreachable!("clap requires --config or --resume"),
    };
    let cfg = TrainConfig::load(Some(&config_path), &cli.sets)?;
    nerpos_train::run(
        cfg,
        cli.resume.as_deref(),
        stop,
        std::io::stderr().is_terminal(),
    )
}
