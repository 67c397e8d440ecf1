//! Running a sweep on this node: expand the grid, write each point's configuration, run the points
//! (several at once on disjoint GPU sets), skip finished ones, resume interrupted ones, collect.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use nerpos_run::config::ConfigTable;
use nerpos_run::{EXIT_INTERRUPTED, Next, RunDir, Status};

use crate::grid::{Point, Sweep, expand, point_config, point_dir};
use crate::procs::{Ended, detect_gpus, launch};
use crate::{Procs, collect, make_launch};

/// Expands the grid, writes `sweep.json`, returns (sweep folder, points, base table).
pub fn prepare_sweep(
    config: &Path,
    sets: &[String],
    sample: Option<(usize, u64)>,
) -> anyhow::Result<(PathBuf, Vec<Point>, toml::Table)> {
    let base = ConfigTable::load(Some(config), sets)?;
    let Some(g) = base.grid() else {
        bail!(
            "{}: no [grid] table (a single run is `launch/train.sh --config ...`)",
            config.display()
        );
    };
    let points = expand(g, sample)?;
    let sweep_dir = base.out_dir()?;
    std::fs::create_dir_all(sweep_dir.join("points"))
        .with_context(|| format!("creating {}", sweep_dir.display()))?;
    let mut keys: Vec<String> = g.keys().cloned().collect();
    keys.sort();
    let sweep = Sweep {
        base_config: config.to_owned(),
        keys,
        points: points.clone(),
    };
    nerpos_run::write_atomic(
        &sweep_dir.join("sweep.json"),
        (serde_json::to_string_pretty(&sweep)? + "\n").as_bytes(),
    )?;
    Ok((sweep_dir, points, base.table))
}

pub fn write_point_config(
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
    nerpos_run::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// How a sweep's points share this node's GPUs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Placement {
    /// GPUs per point (default: all of them for one point at a time, one with `runs_per_gpu` > 1).
    pub gpus_per_run: Option<usize>,
    /// Points run at once on each GPU (small models leave a big GPU mostly idle): each its own
    /// process and run folder.
    pub runs_per_gpu: usize,
    /// GPU memory a point needs, checked free on every GPU before the first point starts.
    pub memory_per_run_mib: u64,
}

/// The slots points run in: disjoint sets of GPUs, each listed `runs_per_gpu` times; on CPU a
/// single slot.
pub fn slots(gpus: usize, p: Placement) -> anyhow::Result<Vec<Option<Vec<usize>>>> {
    let shared = p.runs_per_gpu.max(1);
    let per_run = p.gpus_per_run.or((shared > 1).then_some(1));
    let sets: Vec<Option<Vec<usize>>> = match (gpus, per_run) {
        (0, _) if shared > 1 => bail!("--runs-per-gpu {shared} needs GPUs, and none were found"),
        (0, _) => vec![None],
        (_, Some(k)) if shared > 1 && k != 1 => bail!(
            "--runs-per-gpu {shared} shares a GPU between points: each point gets one GPU, not --gpus-per-run {k}"
        ),
        (n, Some(k)) if k > 0 && k <= n => (0..n / k)
            .map(|s| Some((s * k..(s + 1) * k).collect()))
            .collect(),
        (n, Some(k)) => bail!("--gpus-per-run {k} does not fit in {n} GPU(s)"),
        (n, None) => vec![Some((0..n).collect())],
    };
    Ok(sets
        .into_iter()
        .flat_map(|s| std::iter::repeat_n(s, shared))
        .collect())
}

/// Runs a sweep's unfinished points, as many at a time as there are GPU slots (one on a CPU), then
/// collects the results. Exit code: 0, or `EXIT_INTERRUPTED` when stopped; an error when points failed.
pub fn run_grid(
    config: &Path,
    sets: &[String],
    placement: Placement,
    sample: Option<(usize, u64)>,
    procs: &Procs,
    stop: &AtomicBool,
) -> anyhow::Result<u8> {
    let (sweep_dir, points, base) = prepare_sweep(config, sets, sample)?;
    let gpus = procs.gpus.unwrap_or_else(detect_gpus);
    let slots = slots(gpus, placement)?;
    if placement.runs_per_gpu > 1 {
        let mut used: Vec<usize> = slots.iter().flatten().flatten().copied().collect();
        used.sort_unstable();
        used.dedup();
        crate::memory::check_fits(&used, placement.runs_per_gpu, placement.memory_per_run_mib)?;
    }
    let todo = unfinished(&sweep_dir, &points);
    tracing::info!(
        "{} point(s), {} to run, {} at a time",
        points.len(),
        todo.len(),
        slots.len()
    );
    let grid = Grid {
        sweep_dir: &sweep_dir,
        base: &base,
        procs,
        stop,
    };
    let failed = grid.run(todo, &slots);
    let rows = collect::collect(&sweep_dir)?;
    print!("{}", std::fs::read_to_string(sweep_dir.join("results.md"))?);
    tracing::info!("results: {}", sweep_dir.join("results.md").display());
    let diverged: Vec<&str> = rows
        .iter()
        .filter(|r| r.status == Status::Diverged)
        .map(|r| r.point.id.as_str())
        .collect();
    if !diverged.is_empty() {
        tracing::warn!(
            "{} point(s) diverged (stopped at a non-finite step; their status.json says where): {}",
            diverged.len(),
            diverged.join(", ")
        );
    }
    if stop.load(Ordering::Relaxed) {
        return Ok(EXIT_INTERRUPTED);
    }
    if failed > 0 {
        bail!(
            "{failed} of {} point(s) failed (see their status.json and logs)",
            rows.len()
        );
    }
    Ok(0)
}

/// The points whose run folder is not finished (a resumed sweep skips the rest, saying so).
fn unfinished<'p>(sweep_dir: &Path, points: &'p [Point]) -> Vec<&'p Point> {
    points
        .iter()
        .filter(|p| {
            let done = RunDir::new(point_dir(sweep_dir, p))
                .next()
                .is_ok_and(|n| n == Next::Done);
            if done {
                tracing::info!("{}: finished earlier, skipped ({})", p.id, p.describe());
            }
            !done
        })
        .collect()
}

/// What every point's run shares.
struct Grid<'a> {
    sweep_dir: &'a Path,
    base: &'a toml::Table,
    procs: &'a Procs,
    stop: &'a AtomicBool,
}

impl Grid<'_> {
    /// Runs `todo` with one worker per slot, each taking the next point when its run ends, until the
    /// queue is empty or `stop` is raised. Returns how many points failed (each is reported).
    fn run(&self, todo: Vec<&Point>, slots: &[Option<Vec<usize>>]) -> usize {
        let queue = std::sync::Mutex::new(todo.into_iter());
        let failures = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for slot in slots {
                scope.spawn(|| {
                    while !self.stop.load(Ordering::Relaxed) {
                        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                        let Some(point) = next else {
                            return;
                        };
                        let ran = self.run_point(point, slot.clone(), slots.len() == 1);
                        if let Err(e) = ran {
                            failures.fetch_add(1, Ordering::Relaxed);
                            tracing::error!("{}: {e:#}", point.id);
                        }
                    }
                });
            }
        });
        failures.load(Ordering::Relaxed)
    }

    /// Runs (or resumes) one point on `gpus`, its output echoed when it runs alone.
    fn run_point(&self, point: &Point, gpus: Option<Vec<usize>>, echo: bool) -> anyhow::Result<()> {
        let run = RunDir::new(point_dir(self.sweep_dir, point));
        let cfg = write_point_config(self.sweep_dir, self.base, point)?;
        let resume = run.next()? == Next::Resume;
        let args = if resume {
            vec!["--resume".to_string(), run.path().display().to_string()]
        } else {
            vec!["--config".to_string(), cfg.display().to_string()]
        };
        tracing::info!(
            "{}: {} {}",
            point.id,
            if resume { "resuming" } else { "starting" },
            point.describe()
        );
        std::fs::create_dir_all(run.path())
            .with_context(|| format!("creating {}", run.path().display()))?;
        let l = make_launch(self.procs, args, run.logs(), gpus, echo)?;
        match launch(&l, self.stop) {
            // A diverged point is a result of the sweep (its summary says so), not a failure.
            Ok(Ended::Finished | Ended::Diverged) => Ok(()),
            Ok(Ended::Interrupted) => Ok(run.record(
                Status::Interrupted,
                "stopped by a signal; the sweep resumes it when re-run",
            )?),
            Err(e) => {
                // The trainer records its own failures; this covers a process that died without a word.
                if run.status()? != Status::Failed {
                    run.record(Status::Failed, format!("{e:#}"))?;
                }
                Err(e)
            }
        }
    }
}
