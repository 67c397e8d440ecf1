//! Starting the ranks of one run on this node and watching them: output to the terminal (prefixed with
//! the rank) and to a log file per rank; if one fails, the others are stopped and the failure reported
//! with its last log lines; Ctrl-C or SIGTERM is passed on as SIGTERM, so rank 0 writes a resumable
//! checkpoint before everyone exits; children die with the launcher (no orphans).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use nerpos_run::progress::{Bar, PIPE_ENV, Progress};
use nerpos_run::{EXIT_DIVERGED, EXIT_INTERRUPTED, LAUNCHER_LOGS_ENV};

const TAIL_LINES: usize = 20;

/// One run's processes on this node.
#[derive(Debug, Clone)]
pub struct Launch {
    pub trainer: PathBuf,
    pub args: Vec<String>,
    /// Processes on this node.
    pub nproc: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// GPUs of this run (`CUDA_VISIBLE_DEVICES`); `None` for CPU processes.
    pub gpus: Option<Vec<usize>>,
    pub log_dir: PathBuf,
    /// Echo the ranks' output to the terminal.
    pub echo: bool,
    /// The progress bar rank 0's progress lines drive (hidden when stderr is not a terminal).
    pub bar: Option<Bar>,
    /// How long stopped ranks get to write their checkpoint before being killed.
    pub grace: Duration,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Finished,
    Interrupted,
    /// Every rank stopped at a non-finite step (`EXIT_DIVERGED`); the run folder says where.
    Diverged,
}

struct Rank {
    rank: usize,
    child: Child,
    exit: Option<i32>,
    tail: Arc<Mutex<VecDeque<String>>>,
    pumps: Vec<std::thread::JoinHandle<()>>,
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid; failure (already gone) is harmless.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Where a child's stream goes.
struct Pump {
    rank: usize,
    log: Arc<Mutex<File>>,
    tail: Arc<Mutex<VecDeque<String>>>,
    echo: bool,
    to_stdout: bool,
    /// The launcher's progress bar: lines are printed above it.
    bar: Option<Bar>,
    /// rank 0's stdout: its progress lines drive the bar instead of being printed.
    progress: bool,
}

impl Pump {
    fn line(&self, line: String) {
        if let Some(bar) = self.bar.as_ref().filter(|_| self.progress)
            && let Some(p) = Progress::from_line(&line)
        {
            bar.update(&p);
            return;
        }
        if let Ok(mut f) = self.log.lock() {
            let _ = writeln!(f, "{line}");
        }
        if self.echo {
            let text = format!("[rank {}] {line}", self.rank);
            let print = || {
                if self.to_stdout {
                    println!("{text}");
                } else {
                    eprintln!("{text}");
                }
            };
            match &self.bar {
                Some(bar) => bar.suspend(print),
                None => print(),
            }
        }
        let mut t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }
}

/// Copies a child's stream line by line to its log file, the terminal and the tail buffer.
fn pump(stream: impl std::io::Read + Send + 'static, p: Pump) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            p.line(line);
        }
    })
}

fn start(l: &Launch, local: usize) -> anyhow::Result<Rank> {
    let rank = l.node_rank * l.nproc + local;
    let world = l.nnodes * l.nproc;
    let log_path = l.log_dir.join(format!("rank-{rank}.log"));
    let log = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?,
    ));
    let mut cmd = Command::new(&l.trainer);
    cmd.args(&l.args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", local.to_string())
        .env("LOCAL_WORLD_SIZE", l.nproc.to_string())
        .env("MASTER_ADDR", &l.master_addr)
        .env("MASTER_PORT", l.master_port.to_string())
        .env(LAUNCHER_LOGS_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let bar = l.bar.clone().filter(|_| l.echo);
    if rank == 0 && bar.is_some() {
        cmd.env(PIPE_ENV, "1");
    }
    if let Some(gpus) = &l.gpus {
        cmd.env(
            "CUDA_VISIBLE_DEVICES",
            gpus.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe: if the launcher dies, the kernel sends the child SIGTERM (no orphans).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", l.trainer.display()))?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let target = |to_stdout: bool| Pump {
        rank,
        log: log.clone(),
        tail: tail.clone(),
        echo: l.echo,
        to_stdout,
        bar: bar.clone(),
        progress: to_stdout && rank == 0,
    };
    let pumps = vec![
        pump(child.stdout.take().expect("piped"), target(true)),
        pump(child.stderr.take().expect("piped"), target(false)),
    ];
    Ok(Rank {
        rank,
        child,
        exit: None,
        tail,
        pumps,
    })
}

/// Starts the node's ranks and waits for them. `stop` is raised by the launcher's own signals.
pub fn launch(l: &Launch, stop: &AtomicBool) -> anyhow::Result<Ended> {
    std::fs::create_dir_all(&l.log_dir)
        .with_context(|| format!("creating {}", l.log_dir.display()))?;
    let mut ranks = start_all(l)?;
    let outcome = supervise(l, &mut ranks, stop)?;
    for r in &mut ranks {
        for p in r.pumps.drain(..) {
            let _ = p.join();
        }
    }
    if let Some(bar) = &l.bar {
        bar.finish();
    }
    if let Some((rank, code)) = outcome.failed {
        return Err(failure(l, &ranks, rank, code));
    }
    let exited = |code: u8| ranks.iter().any(|r| r.exit == Some(i32::from(code)));
    if exited(EXIT_DIVERGED) {
        return Ok(Ended::Diverged);
    }
    if outcome.stopped || exited(EXIT_INTERRUPTED) {
        return Ok(Ended::Interrupted);
    }
    Ok(Ended::Finished)
}

/// Every local rank started, or none left running: the ones started are killed when one cannot be.
fn start_all(l: &Launch) -> anyhow::Result<Vec<Rank>> {
    let mut ranks: Vec<Rank> = Vec::with_capacity(l.nproc);
    for local in 0..l.nproc {
        match start(l, local) {
            Ok(r) => ranks.push(r),
            Err(e) => {
                for r in &ranks {
                    signal(&r.child, libc::SIGKILL);
                }
                return Err(e);
            }
        }
    }
    Ok(ranks)
}

/// How the ranks ended: the first to fail unexpectedly (rank, exit code), and whether they were told
/// to stop.
struct Outcome {
    failed: Option<(usize, i32)>,
    stopped: bool,
}

/// Polls the ranks until all have exited. The first unexpected exit, or the launcher's own signal,
/// sends SIGTERM to the others; any still alive after the grace period (at most 15 s after a
/// failure: the others are likely stuck in a collective) is killed.
fn supervise(l: &Launch, ranks: &mut [Rank], stop: &AtomicBool) -> anyhow::Result<Outcome> {
    let mut stopping: Option<Instant> = None;
    let mut failed: Option<(usize, i32)> = None;
    // A diverged run stops on every rank at the same step, each with EXIT_DIVERGED: the first such exit
    // gives the others a while to follow before they are told to stop.
    let mut diverged: Option<Instant> = None;
    loop {
        for r in ranks.iter_mut().filter(|r| r.exit.is_none()) {
            if let Some(status) = r.child.try_wait()? {
                let code = status.code().unwrap_or(-1);
                r.exit = Some(code);
                if code == i32::from(EXIT_DIVERGED) {
                    diverged.get_or_insert_with(Instant::now);
                    continue;
                }
                let expected = code == 0
                    || (code == i32::from(EXIT_INTERRUPTED)
                        && (stopping.is_some() || stop.load(Ordering::Relaxed)));
                if !expected && failed.is_none() {
                    failed = Some((r.rank, code));
                }
            }
        }
        let alive: Vec<&Rank> = ranks.iter().filter(|r| r.exit.is_none()).collect();
        if alive.is_empty() {
            return Ok(Outcome {
                failed,
                stopped: stopping.is_some(),
            });
        }
        let left_behind = diverged.is_some_and(|t| t.elapsed() > Duration::from_secs(30));
        if stopping.is_none() && (failed.is_some() || left_behind || stop.load(Ordering::Relaxed)) {
            for r in &alive {
                signal(&r.child, libc::SIGTERM);
            }
            stopping = Some(Instant::now());
        }
        let grace = if failed.is_some() {
            Duration::from_secs(15).min(l.grace)
        } else {
            l.grace
        };
        if stopping.is_some_and(|t| t.elapsed() > grace) {
            for r in &alive {
                tracing::warn!(
                    "rank {} did not stop within {:.0} s: killing it",
                    r.rank,
                    grace.as_secs_f64()
                );
                signal(&r.child, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The error naming the failed rank, its exit code, its log file and its last lines.
fn failure(l: &Launch, ranks: &[Rank], rank: usize, code: i32) -> anyhow::Error {
    let tail: Vec<String> = ranks
        .iter()
        .find(|r| r.rank == rank)
        .map(|r| {
            let lines = r.tail.lock().unwrap_or_else(|e| e.into_inner());
            lines.iter().cloned().collect()
        })
        .unwrap_or_default();
    anyhow::anyhow!(
        "rank {rank} failed (exit code {code}); the other ranks were stopped. Its last lines ({}):\n{}",
        l.log_dir.join(format!("rank-{rank}.log")).display(),
        tail.join("\n")
    )
}

/// GPUs this process may use: the entries of `CUDA_VISIBLE_DEVICES` when it is set (as CUDA counts
/// them), else the GPUs `nvidia-smi -L` lists; 0 without a driver. (`launch/train.sh` counts the same
/// way before anything is built.)
pub fn detect_gpus() -> usize {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return v.split(',').filter(|d| !d.trim().is_empty()).count();
    }
    Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or(0, |o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("GPU "))
                .count()
        })
}

/// The nerpos-train binary next to this one, or `NERPOS_TRAIN`.
pub fn trainer_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("NERPOS_TRAIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()?;
    let sibling = me.with_file_name("nerpos-train");
    if sibling.is_file() {
        return Ok(sibling);
    }
    bail!(
        "no nerpos-train next to {} (build it, or set NERPOS_TRAIN)",
        me.display()
    )
}

/// A TCP port free on this machine now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
