//! `nerpos-launch`: starts nerpos-train processes, runs grids, collects sweep results.

mod collect;
mod config;
mod grid;
mod procs;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::grid::{Point, Sweep, expand, point_config, point_dir};
use crate::procs::{Ended, Launch, detect_gpus, free_port, launch, trainer_path};

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
struct Procs {
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
}

fn main() -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("error: installing signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    }
    match run(Cli::parse(), &stop) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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

fn make_launch(
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
        grace: Duration::from_secs(p.grace),
    })
}

fn run(cli: Cli, stop: &AtomicBool) -> anyhow::Result<u8> {
    match cli.command {
        Cmd::Train {
            config,
            sets,
            resume,
            procs,
        } => {
            let (args, run_dir) = match (&resume, &config) {
                (Some(dir), _) => {
                    let mut a = vec!["--resume".to_string(), dir.display().to_string()];
                    a.extend(sets.iter().flat_map(|s| ["--set".to_string(), s.clone()]));
                    (a, dir.clone())
                }
                (None, Some(cfg)) => {
                    let table = config::load(cfg, &sets)?;
                    let mut a = vec!["--config".to_string(), cfg.display().to_string()];
                    a.extend(sets.iter().flat_map(|s| ["--set".to_string(), s.clone()]));
                    (a, config::out_dir(&table, cfg)?)
                }
                (None, None) => bail!("give --config or --resume"),
            };
            let l = make_launch(&procs, args, run_dir.join("logs"), None, true)?;
            eprintln!(
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
                    eprintln!("run folder: {}", run_dir.display());
                    Ok(0)
                }
                Ended::Interrupted => {
                    eprintln!(
                        "interrupted; resume with: launch/train.sh --resume {}",
                        run_dir.display()
                    );
                    Ok(procs::EXIT_INTERRUPTED as u8)
                }
            }
        }
        Cmd::Grid {
            config,
            sets,
            gpus_per_run,
            sample,
            sample_seed,
            procs,
        } => run_grid(
            &config,
            &sets,
            gpus_per_run,
            sample.map(|n| (n, sample_seed)),
            &procs,
            stop,
        ),
        Cmd::RunDir { config, sets } => {
            println!(
                "{}",
                config::out_dir(&config::load(&config, &sets)?, &config)?.display()
            );
            Ok(0)
        }
        Cmd::GridPoint {
            config,
            sets,
            index,
            count,
        } => {
            let (sweep_dir, points, base) = prepare_sweep(&config, &sets, None)?;
            let Some(index) = index.filter(|_| !count) else {
                println!("{}", points.len());
                return Ok(0);
            };
            let point = points.get(index).with_context(|| {
                format!("--index {index}: the grid has {} points", points.len())
            })?;
            let cfg = write_point_config(&sweep_dir, &base, point)?;
            println!(
                "{}\t{}\t{}",
                point.id,
                cfg.display(),
                point_dir(&sweep_dir, point).display()
            );
            Ok(0)
        }
        Cmd::Collect { sweep } => {
            let rows = collect::collect(&sweep)?;
            print!("{}", std::fs::read_to_string(sweep.join("results.md"))?);
            eprintln!("{} point(s); results in {}", rows.len(), sweep.display());
            Ok(0)
        }
    }
}

/// Expands the grid, writes `sweep.json`, returns (sweep folder, points, base table).
fn prepare_sweep(
    config: &Path,
    sets: &[String],
    sample: Option<(usize, u64)>,
) -> anyhow::Result<(PathBuf, Vec<Point>, toml::Table)> {
    let base = config::load(config, sets)?;
    let Some(toml::Value::Table(g)) = base.get("grid") else {
        bail!(
            "{}: no [grid] table (a single run is `launch/train.sh --config ...`)",
            config.display()
        );
    };
    let points = expand(g, sample)?;
    let sweep_dir = config::out_dir(&base, config)?;
    std::fs::create_dir_all(sweep_dir.join("points"))
        .with_context(|| format!("creating {}", sweep_dir.display()))?;
    let mut keys: Vec<String> = g.keys().cloned().collect();
    keys.sort();
    let sweep = Sweep {
        base_config: config.to_owned(),
        keys,
        points: points.clone(),
    };
    collect::write_atomic(
        &sweep_dir.join("sweep.json"),
        &(serde_json::to_string_pretty(&sweep)? + "\n"),
    )?;
    Ok((sweep_dir, points, base))
}

fn write_point_config(
    sweep_dir: &Path,
    base: &toml::Table,
    point: &Point,
) -> anyhow::Result<PathBuf> {
    let path = sweep_dir.join("points").join(format!("{}.toml", point.id));
    let text = format!(
        "# grid point {}: {}\n{}",
        point.id,
        point.describe(),
        toml::to_string_pretty(&point_config(base, point, sweep_dir))?
    );
    collect::write_atomic(&path, &text)?;
    Ok(path)
}

fn run_grid(
    config: &Path,
    sets: &[String],
    gpus_per_run: Option<usize>,
    sample: Option<(usize, u64)>,
    procs: &Procs,
    stop: &AtomicBool,
) -> anyhow::Result<u8> {
    let (sweep_dir, points, base) = prepare_sweep(config, sets, sample)?;
    let gpus = procs.gpus.unwrap_or_else(detect_gpus);
    // GPU slots: disjoint sets of `gpus_per_run` GPUs; on CPU a single slot.
    let slots: Vec<Option<Vec<usize>>> = match (gpus, gpus_per_run) {
        (0, _) => vec![None],
        (n, Some(k)) if k > 0 && k <= n => (0..n / k)
            .map(|s| Some((s * k..(s + 1) * k).collect()))
            .collect(),
        (n, Some(k)) => bail!("--gpus-per-run {k} does not fit in {n} GPU(s)"),
        (n, None) => vec![Some((0..n).collect())],
    };
    let todo: Vec<&Point> = points
        .iter()
        .filter(|p| {
            let done = point_dir(&sweep_dir, p).join("summary.json").is_file();
            if done {
                eprintln!("{}: finished earlier, skipped ({})", p.id, p.describe());
            }
            !done
        })
        .collect();
    eprintln!(
        "{} point(s), {} to run, {} at a time",
        points.len(),
        todo.len(),
        slots.len()
    );
    let queue = std::sync::Mutex::new(todo.into_iter());
    let failures = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for slot in &slots {
            scope.spawn(|| {
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Some(point) = queue.lock().unwrap_or_else(|e| e.into_inner()).next() else {
                        return;
                    };
                    if let Err(e) = run_point(
                        &sweep_dir,
                        &base,
                        point,
                        procs,
                        slot.clone(),
                        slots.len() == 1,
                        stop,
                    ) {
                        failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("{}: {e:#}", point.id);
                    }
                }
            });
        }
    });
    let rows = collect::collect(&sweep_dir)?;
    print!("{}", std::fs::read_to_string(sweep_dir.join("results.md"))?);
    eprintln!("results: {}", sweep_dir.join("results.md").display());
    if stop.load(Ordering::Relaxed) {
        return Ok(procs::EXIT_INTERRUPTED as u8);
    }
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        bail!(
            "{failed} of {} point(s) failed (see their launch.json and logs)",
            rows.len()
        );
    }
    Ok(0)
}

fn run_point(
    sweep_dir: &Path,
    base: &toml::Table,
    point: &Point,
    procs: &Procs,
    gpus: Option<Vec<usize>>,
    echo: bool,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let dir = point_dir(sweep_dir, point);
    let cfg = write_point_config(sweep_dir, base, point)?;
    let resume = dir.join("checkpoints").is_dir() && dir.join("config.toml").is_file();
    let args = if resume {
        vec!["--resume".to_string(), dir.display().to_string()]
    } else {
        vec!["--config".to_string(), cfg.display().to_string()]
    };
    eprintln!(
        "{}: {} {}",
        point.id,
        if resume { "resuming" } else { "starting" },
        point.describe()
    );
    std::fs::create_dir_all(&dir)?;
    let record = |status: &str, message: String| -> anyhow::Result<()> {
        let r = collect::LaunchRecord {
            status: status.into(),
            message,
        };
        collect::write_atomic(
            &dir.join("launch.json"),
            &(serde_json::to_string_pretty(&r)? + "\n"),
        )?;
        Ok(())
    };
    let _ = std::fs::remove_file(dir.join("launch.json"));
    let l = make_launch(procs, args, dir.join("logs"), gpus, echo)?;
    match launch(&l, stop) {
        Ok(Ended::Finished) => Ok(()),
        Ok(Ended::Interrupted) => record(
            "interrupted",
            "stopped by a signal; the sweep resumes it when re-run".into(),
        ),
        Err(e) => {
            record("failed", format!("{e:#}"))?;
            Err(e)
        }
    }
}
