//! `nerpos-launch`: starts nerpos-train processes, runs grids, collects sweep results.

mod collect;
mod config;
mod grid;
mod memory;
mod procs;
mod sweep;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use nerpos_run::config::ConfigTable;
use nerpos_run::progress::Bar;
use nerpos_run::{EXIT_DIVERGED, EXIT_INTERRUPTED, RunDir};

use crate::grid::point_dir;
use crate::procs::{Ended, Launch, detect_gpus, free_port, launch, trainer_path};
use crate::sweep::{prepare_sweep, run_grid, write_point_config};

#[derive(Parser)]
#[command(
    name = "nerpos-launch",
    version,
    about = "Start nerpos-train processes, run hyper-parameter grids, collect results"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
pub struct Procs {
    /// GPUs to use on this node, one process each (default: all GPUs `nvidia-smi` lists; 0 = CPU).
    #[arg(long)]
    gpus: Option<usize>,
    /// CPU processes on this node when running without GPUs.
    #[arg(long, default_value_t = 2)]
    nproc: usize,
    /// Nodes in the job (without Slurm: start the launcher on each with its --node-rank).
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Address of node 0 (where rank 0 runs the rendezvous store).
    #[arg(long, default_value = "127.0.0.1")]
    master_addr: String,
    /// Port of the rendezvous store (default: a free port, single node only).
    #[arg(long)]
    master_port: Option<u16>,
    /// Seconds stopped ranks get to write their checkpoint before being killed.
    #[arg(long, default_value_t = 180)]
    grace: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one training on this node's GPUs (or CPU processes).
    Train {
        #[arg(long, value_name = "FILE", required_unless_present = "resume")]
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Continue an interrupted run.
        #[arg(long, value_name = "RUN_DIR")]
        resume: Option<PathBuf>,
        #[command(flatten)]
        procs: Procs,
    },
    /// Run every point of the config's [grid] (finished points are skipped; interrupted ones resumed).
    Grid {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// GPUs per point: run several points at once on disjoint GPU sets.
        #[arg(long)]
        gpus_per_run: Option<usize>,
        /// Points run at once on each GPU (each its own process and run folder): small models
        /// leave a big GPU mostly idle.
        #[arg(long, default_value_t = 1)]
        runs_per_gpu: usize,
        /// GPU memory one point needs (MiB), checked free on each GPU before K points share it.
        #[arg(long, default_value_t = 4096)]
        memory_per_run: u64,
        /// Run a random sample of N points of the grid instead of all.
        #[arg(long)]
        sample: Option<usize>,
        #[arg(long, default_value_t = 0)]
        sample_seed: u64,
        #[command(flatten)]
        procs: Procs,
    },
    /// Print point K of a grid as `ID<TAB>CONFIG_PATH<TAB>RUN_DIR` after writing its config (for Slurm
    /// job arrays: the task starts `--config CONFIG_PATH`, or `--resume RUN_DIR` after a requeue).
    GridPoint {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Grid point index (a job array's SLURM_ARRAY_TASK_ID).
        #[arg(long, required_unless_present = "count")]
        index: Option<usize>,
        /// Print the number of points instead (for `sbatch --array=0-(N-1)`).
        #[arg(long)]
        count: bool,
    },
    /// Print the run folder (`out`) of a configuration with its overrides (for job scripts).
    RunDir {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Write results.csv, results.md, best.toml and results.svg of a sweep folder.
    Collect { sweep: PathBuf },
    /// Print a run folder's status (pending, running, interrupted, finished, failed).
    Status {
        run_dir: PathBuf,
        /// Print what a job script should do instead: `done`, `resume` or `start`.
        #[arg(long, conflicts_with = "json")]
        next: bool,
        /// Print the status, the next action and the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a key's value of a configuration with its overrides (strings without quotes; nothing if
    /// the key is absent), for scripts.
    ConfigValue {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        #[arg(long)]
        key: String,
    },
    /// Print the number of GPUs this process can use (`CUDA_VISIBLE_DEVICES`, else `nvidia-smi -L`).
    Gpus,
}

fn main() -> ExitCode {
    // The same start-up as every binary: tracing on stderr (NERPOS_LOG), one error exit.
    nerpos_run::cli::init_logging("info");
    let stop = Arc::new(AtomicBool::new(false));
    let installed = [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT]
        .into_iter()
        .try_for_each(|sig| signal_hook::flag::register(sig, stop.clone()).map(drop))
        .context("installing signal handlers");
    nerpos_run::cli::exit(installed.and_then(|()| run(Cli::parse(), &stop).map(ExitCode::from)))
}

/// The processes of a run: GPUs given or detected, else CPU processes.
fn plan(p: &Procs, gpu_ids: Option<Vec<usize>>) -> anyhow::Result<(usize, Option<Vec<usize>>)> {
    if let Some(ids) = gpu_ids {
        return Ok((ids.len(), Some(ids)));
    }
    let gpus = p.gpus.unwrap_or_else(detect_gpus);
    if gpus > 0 {
        Ok((gpus, Some((0..gpus).collect())))
    } else {
        if p.nproc == 0 {
            bail!("--nproc must be at least 1");
        }
        Ok((p.nproc, None))
    }
}

pub fn make_launch(
    p: &Procs,
    args: Vec<String>,
    log_dir: PathBuf,
    gpu_ids: Option<Vec<usize>>,
    echo: bool,
) -> anyhow::Result<Launch> {
    let (nproc, gpus) = plan(p, gpu_ids)?;
    if p.node_rank >= p.nnodes {
        bail!(
            "--node-rank {} is outside --nnodes {}",
            p.node_rank,
            p.nnodes
        );
    }
    let master_port = match p.master_port {
        Some(port) => port,
        None if p.nnodes == 1 => free_port()?,
        None => bail!("--master-port is needed with several nodes (every node must use the same)"),
    };
    let mut args = args;
    args.extend([
        "--set".into(),
        format!("device={}", if gpus.is_some() { "cuda" } else { "cpu" }),
    ]);
    Ok(Launch {
        trainer: trainer_path()?,
        args,
        nproc,
        nnodes: p.nnodes,
        node_rank: p.node_rank,
        master_addr: p.master_addr.clone(),
        master_port,
        gpus,
        log_dir,
        echo,
        // The bar is drawn only where a person watches: a terminal, one run at a time.
        bar: (echo && std::io::stderr().is_terminal()).then(Bar::hidden),
        grace: Duration::from_secs(p.grace),
    })
}

/// `train`: one run (or, for a configuration with a `[grid]`, its sweep).
fn train(
    config: Option<PathBuf>,
    sets: Vec<String>,
    resume: Option<PathBuf>,
    procs: Procs,
    stop: &AtomicBool,
) -> anyhow::Result<u8> {
    let (args, run_dir) = match (&resume, &config) {
        (Some(dir), _) => (
            vec!["--resume".to_string(), dir.display().to_string()],
            dir.clone(),
        ),
        (None, Some(cfg)) => {
            let table = ConfigTable::load(Some(cfg), &sets)?;
            if table.grid().is_some() {
                tracing::info!(
                    "{} has a [grid]: running its sweep (as `launch/train.sh grid --config {}` does)",
                    cfg.display(),
                    cfg.display()
                );
                return run_grid(cfg, &sets, sweep::Placement::default(), None, &procs, stop);
            }
            (
                vec!["--config".to_string(), cfg.display().to_string()],
                table.out_dir()?,
            )
        }
        (None, None) => bail!("give --config or --resume"),
    };
    let mut args = args;
    args.extend(sets.iter().flat_map(|s| ["--set".to_string(), s.clone()]));
    let run = RunDir::new(run_dir);
    let l = make_launch(&procs, args, run.logs(), None, true)?;
    tracing::info!(
        "starting {} {} process(es) on node {} of {} (world size {}); logs in {}",
        l.nproc,
        if l.gpus.is_some() { "GPU" } else { "CPU" },
        l.node_rank,
        l.nnodes,
        l.nproc * l.nnodes,
        l.log_dir.display()
    );
    match launch(&l, stop)? {
        Ended::Finished => {
            tracing::info!("run folder: {}", run.path().display());
            Ok(0)
        }
        Ended::Interrupted => {
            tracing::warn!(
                "interrupted; resume with: launch/train.sh --resume {}",
                run.path().display()
            );
            Ok(EXIT_INTERRUPTED)
        }
        Ended::Diverged => {
            // Rank 0 said where and why (echoed above); its status.json keeps it.
            tracing::warn!(
                "run folder: {} (diverged: stopped at a non-finite step; see {})",
                run.path().display(),
                run.status_file().display()
            );
            Ok(EXIT_DIVERGED)
        }
    }
}

/// `status`: what scripts ask of a run folder.
fn status(run_dir: PathBuf, next: bool, json: bool) -> anyhow::Result<u8> {
    let run = RunDir::new(run_dir);
    let status = run.status()?;
    if next {
        println!("{}", run.next()?.as_str());
    } else if json {
        let v = serde_json::json!({
            "run_dir": run.path(),
            "status": status,
            "next": run.next()?.as_str(),
            "checkpoint": run.checkpoints().last(),
            "message": run.read_record()?.map(|r| r.message),
            "summary": run.read_summary()?,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{status}");
    }
    Ok(0)
}

/// `grid-point`: the number of points (`--count`, or no `--index`), or point INDEX's id, config file
/// (written) and run folder, tab-separated — what a Slurm array task needs.
fn grid_point(
    config: &Path,
    sets: &[String],
    index: Option<usize>,
    count: bool,
) -> anyhow::Result<u8> {
    let (sweep_dir, points, base) = prepare_sweep(config, sets, None)?;
    let Some(index) = index.filter(|_| !count) else {
        println!("{}", points.len());
        return Ok(0);
    };
    let point = points
        .get(index)
        .with_context(|| format!("--index {index}: the grid has {} points", points.len()))?;
    let cfg = write_point_config(&sweep_dir, &base, point)?;
    println!(
        "{}\t{}\t{}",
        point.id,
        cfg.display(),
        point_dir(&sweep_dir, point).display()
    );
    Ok(0)
}

fn run(cli: Cli, stop: &AtomicBool) -> anyhow::Result<u8> {
    match cli.command {
        Cmd::Train {
            config,
            sets,
            resume,
            procs,
        } => train(config, sets, resume, procs, stop),
        Cmd::Grid {
            config,
            sets,
            gpus_per_run,
            runs_per_gpu,
            memory_per_run,
            sample,
            sample_seed,
            procs,
        } => run_grid(
            &config,
            &sets,
            sweep::Placement {
                gpus_per_run,
                runs_per_gpu,
                memory_per_run_mib: memory_per_run,
            },
            sample.map(|n| (n, sample_seed)),
            &procs,
            stop,
        ),
        Cmd::RunDir { config, sets } => {
            println!(
                "{}",
                ConfigTable::load(Some(&config), &sets)?
                    .out_dir()?
                    .display()
            );
            Ok(0)
        }
        Cmd::GridPoint {
            config,
            sets,
            index,
            count,
        } => grid_point(&config, &sets, index, count),
        Cmd::Collect { sweep } => {
            let rows = collect::collect(&sweep)?;
            print!("{}", std::fs::read_to_string(sweep.join("results.md"))?);
            tracing::info!("{} point(s); results in {}", rows.len(), sweep.display());
            Ok(0)
        }
        Cmd::Status {
            run_dir,
            next,
            json,
        } => status(run_dir, next, json),
        Cmd::ConfigValue { config, sets, key } => {
            if let Some(v) = ConfigTable::load(Some(&config), &sets)?.get_str(&key) {
                println!("{v}");
            }
            Ok(0)
        }
        Cmd::Gpus => {
            println!("{}", detect_gpus());
            Ok(0)
        }
    }
}
