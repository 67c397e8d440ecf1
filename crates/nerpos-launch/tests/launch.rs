//! The launcher with a stand-in trainer (a shell script): process handling, failures, signals, grids.
//! (The real trainer under the launcher is exercised by tests/slurm and the README's main job.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nerpos-launch");

/// A fake nerpos-train: records its pid, then behaves as `FAKE_MODE` says.
const FAKE: &str = r#"#!/usr/bin/env bash
cfg=""; resume=""
while [ $# -gt 0 ]; do
  case "$1" in --config) cfg=$2; shift 2;; --resume) resume=$2; shift 2;; *) shift;; esac
done
if [ -n "$resume" ]; then out=$resume; else out=$(sed -n 's/^out *= *"\(.*\)"/\1/p' "$cfg"); fi
mkdir -p "$out"
echo $$ > "$out/pid-$RANK"
echo "rank $RANK of $WORLD_SIZE local $LOCAL_RANK master $MASTER_ADDR:$MASTER_PORT"
case "$FAKE_MODE" in
  fail1)
    if [ "$RANK" = 1 ]; then sleep 0.3; echo "something went wrong" >&2; exit 3; fi
    trap 'exit 0' TERM; while true; do sleep 0.1; done;;
  checkpoint)
    trap 'echo checkpoint > "$out/ckpt-$RANK"; exit 75' TERM; while true; do sleep 0.1; done;;
  diverge)
    if [ "$RANK" = 0 ]; then echo "error: training diverged at step 2" >&2; fi
    sleep 0.$RANK; exit 65;;
  slow)
    echo "start $CUDA_VISIBLE_DEVICES" >> "$EVENTS"; sleep 1; echo "end $CUDA_VISIBLE_DEVICES" >> "$EVENTS"
    printf '{"status":"finished","steps":3,"epochs":1,"world_size":1,"best_dev_f1":0.5,"best_step":3,"test_f1":0.5,"wall_s":1,"weights_sha256":"x"}\n' > "$out/summary.json"
    cp "$cfg" "$out/config.toml"; exit 0;;
  *)
    lr=$(sed -n 's/^lr *= *\(.*\)/\1/p' "$cfg" 2>/dev/null)
    if [ "$RANK" = 0 ]; then printf '{"status":"finished","steps":3,"epochs":1,"world_size":%s,"best_dev_f1":%s,"best_step":3,"test_f1":0.5,"wall_s":1,"weights_sha256":"x"}\n' "$WORLD_SIZE" "${lr:-0.5}" > "$out/summary.json"; fi
    cp "$cfg" "$out/config.toml" 2>/dev/null || true
    exit 0;;
esac
"#;

fn setup(dir: &Path) -> PathBuf {
    let fake = dir.join("nerpos-train");
    std::fs::write(&fake, FAKE).unwrap();
    let mut perm = std::fs::metadata(&fake).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&fake, perm).unwrap();
    fake
}

fn launcher(fake: &Path, mode: &str, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("NERPOS_TRAIN", fake)
        .env("FAKE_MODE", mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn alive(pid: i32) -> bool {
    // Zombies count as gone: /proc/PID/stat's state field.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn pid(p: &Path) -> i32 {
    std::fs::read_to_string(p).unwrap().trim().parse().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A run folder `run` and its config in `dir`, launched with the fake trainer.
struct Run {
    fake: PathBuf,
    out: PathBuf,
    cfg: PathBuf,
}

impl Run {
    fn new(dir: &Path) -> Run {
        let (fake, out, cfg) = (setup(dir), dir.join("run"), dir.join("c.toml"));
        std::fs::write(&cfg, format!("out = {:?}\n", out)).unwrap();
        Run { fake, out, cfg }
    }

    /// `train --config CFG` on `nproc` CPU processes, the fake trainer in `mode`.
    fn train(&self, mode: &str, nproc: usize) -> Command {
        let nproc = nproc.to_string();
        let cfg = self.cfg.to_str().unwrap();
        let args = ["train", "--config", cfg, "--gpus", "0", "--nproc", &nproc];
        launcher(&self.fake, mode, &args)
    }
}

#[test]
fn a_failing_rank_stops_the_others_and_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::new(tmp.path());
    let out = &run.out;
    let t = Instant::now();
    let o = run.train("fail1", 3).output().unwrap();
    assert!(!o.status.success());
    let all = text(&o);
    assert!(
        all.contains("rank 1 failed (exit code 3)") && all.contains("something went wrong"),
        "{all}"
    );
    assert!(
        all.contains("[rank 0] rank 0 of 3 local 0 master 127.0.0.1:"),
        "{all}"
    );
    assert!(t.elapsed() < Duration::from_secs(20));
    for r in [0, 2] {
        assert!(
            !alive(pid(&out.join(format!("pid-{r}")))),
            "rank {r} left running"
        );
    }
    let log = std::fs::read_to_string(out.join("logs/rank-1.log")).unwrap();
    assert!(log.contains("something went wrong"));
}

#[test]
fn sigterm_is_passed_on_and_reported_as_interrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Run::new(tmp.path());
    let out = &run.out;
    let child = run.train("checkpoint", 2).spawn().unwrap();
    let t = Instant::now();
    while !(out.join("pid-0").exists() && out.join("pid-1").exists())
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child.
    unsafe { libc_kill(child.id() as i32, 15) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(75), "{}", text(&o));
    assert!(
        out.join("ckpt-0").exists() && out.join("ckpt-1").exists(),
        "every rank got SIGTERM"
    );
    assert!(text(&o).contains("--resume"));
}

/// Every rank exiting with the diverged code (65) is a diverged run, not a failed rank: the launcher
/// exits 65 and names the run's status file.
#[test]
fn ranks_that_diverge_together_end_the_launch_as_diverged() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Run::new(tmp.path()).train("diverge", 3).output().unwrap();
    let all = text(&o);
    assert_eq!(o.status.code(), Some(65), "{all}");
    assert!(!all.contains("failed"), "{all}");
    assert!(
        all.contains("training diverged at step 2") && all.contains("status.json"),
        "{all}"
    );
}

/// A sweep with a point whose learning rate (1e30) makes it diverge — no test hook, the real
/// trainer — runs the other points to the end; the table, the plot and the summary line say which
/// one diverged, and the diverged point is never the best configuration.
#[test]
fn a_grid_with_a_diverging_point_finishes_the_others() {
    let name = "launch::a_grid_with_a_diverging_point_finishes_the_others";
    let bins = Path::new(BIN).parent().unwrap();
    let (trainer, world) = (bins.join("nerpos-train"), bins.join("examples/tiny_world"));
    if !trainer.is_file() || !world.is_file() {
        nerpos_testdata::skip(
            name,
            "needs the debug nerpos-train and examples/tiny_world beside nerpos-launch (`cargo test --workspace` builds them)",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(&world)
        .arg(tmp.path().join("world"))
        .arg("200")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let line = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let (model, data) = line.split_once('\t').expect("model and dataset folders");
    let sweep = tmp.path().join("sweep");
    let cfg = tmp.path().join("grid.toml");
    std::fs::write(
        &cfg,
        format!(
            "data = {data:?}\nmodel = {model:?}\nout = {sweep:?}\nbatch_size = 8\nmax_steps = 6\n\
             eval_every = 3\nlog_every = 1\ntest_at_end = false\n[grid]\nlr = [1e-3, 1e30, 1e-4]\n"
        ),
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(grid_args(&cfg))
        .env("NERPOS_TRAIN", &trainer)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(all.contains("1 point(s) diverged"), "{all}");
    let md = std::fs::read_to_string(sweep.join("results.md")).unwrap();
    let rows: Vec<&str> = md.lines().skip(2).collect();
    assert_eq!(rows.len(), 3, "{md}");
    let diverged: Vec<&&str> = rows
        .iter()
        .filter(|r| r.ends_with("| diverged |"))
        .collect();
    assert_eq!(diverged.len(), 1, "{md}");
    assert!(diverged[0].contains("1e30"), "{md}");
    assert_eq!(
        rows.iter().filter(|r| r.ends_with("| finished |")).count(),
        2,
        "{md}"
    );
    let svg = std::fs::read_to_string(sweep.join("results.svg")).unwrap();
    assert!(svg.contains("× diverged"), "{svg}");
    let best = std::fs::read_to_string(sweep.join("best.toml")).unwrap();
    assert!(!best.contains("1e30"), "{best}");
}

unsafe fn libc_kill(pid: i32, sig: i32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    unsafe { kill(pid, sig) };
}

/// `grid --config CFG` on one CPU process.
fn grid_args(cfg: &Path) -> [&str; 7] {
    let cfg = cfg.to_str().unwrap();
    ["grid", "--config", cfg, "--gpus", "0", "--nproc", "1"]
}

/// `nerpos-launch grid --config CFG` with the fake trainer.
fn run_grid(fake: &Path, cfg: &Path) -> std::process::Output {
    launcher(fake, "ok", &grid_args(cfg)).output().unwrap()
}

#[test]
fn grid_runs_every_point_once_and_collects_results() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = setup(tmp.path());
    let sweep = tmp.path().join("sweep");
    let cfg = tmp.path().join("grid.toml");
    std::fs::write(&cfg, format!("out = {:?}\nlr = 1.0\nepochs = 1\n[grid]\nlr = [0.25, 0.75]\nuse_pos = [true, false]\n", sweep)).unwrap();
    let o = run_grid(&fake, &cfg);
    assert!(o.status.success(), "{}", text(&o));
    check_grid_results(&sweep);

    // A second run skips all four.
    let o = run_grid(&fake, &cfg);
    assert!(o.status.success());
    assert_eq!(
        text(&o).matches("finished earlier, skipped").count(),
        4,
        "{}",
        text(&o)
    );
    check_slurm_points(&fake, &cfg, &sweep);
}

/// The collected table (sorted by dev F1), CSV, best config and plot of the 4-point grid.
fn check_grid_results(sweep: &Path) {
    let md = std::fs::read_to_string(sweep.join("results.md")).unwrap();
    let rows: Vec<&str> = md.lines().skip(2).collect();
    assert_eq!(rows.len(), 4, "{md}");
    assert!(
        rows[0].contains("| 0.75 |") && rows[0].contains("0.7500"),
        "sorted by dev F1: {md}"
    );
    assert!(
        sweep.join("results.csv").is_file()
            && sweep.join("best.toml").is_file()
            && sweep.join("results.svg").is_file()
    );
    assert!(
        std::fs::read_to_string(sweep.join("best.toml"))
            .unwrap()
            .contains("lr = 0.75")
    );
}

/// Slurm arrays: point K's id and config, and the number of points.
fn check_slurm_points(fake: &Path, cfg: &Path, sweep: &Path) {
    let args = [
        "grid-point",
        "--config",
        cfg.to_str().unwrap(),
        "--index",
        "3",
    ];
    let o = launcher(fake, "ok", &args).output().unwrap();
    let line = String::from_utf8_lossy(&o.stdout);
    let fields: Vec<&str> = line.trim().split('\t').collect();
    let [id, path, run] = fields[..] else {
        panic!("expected ID, config and run folder: {line}")
    };
    assert!(id.starts_with("p-") && Path::new(path).is_file());
    assert!(!std::fs::read_to_string(path).unwrap().contains("[grid]"));
    assert_eq!(Path::new(run), sweep.join("points").join(id));
    let o = launcher(
        fake,
        "ok",
        &["grid-point", "--config", cfg.to_str().unwrap(), "--count"],
    )
    .output()
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "4");
}

/// `train` with a grid configuration runs its sweep; `status` answers what scripts ask of a run folder.
#[test]
fn train_on_a_grid_runs_the_sweep_and_status_reads_run_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = setup(tmp.path());
    let sweep = tmp.path().join("sweep");
    let cfg = tmp.path().join("grid.toml");
    std::fs::write(
        &cfg,
        format!("out = {:?}\nlr = 1.0\n[grid]\nlr = [0.25, 0.75]\n", sweep),
    )
    .unwrap();
    let args = ["train", "--config", cfg.to_str().unwrap(), "--gpus", "0"];
    let o = launcher(&fake, "ok", &[&args[..], &["--nproc", "1"]].concat())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("has a [grid]"), "{}", text(&o));
    let md = std::fs::read_to_string(sweep.join("results.md")).unwrap();
    assert_eq!(md.lines().count(), 4, "{md}");

    let status = |dir: &Path, flag: Option<&str>| -> String {
        let mut c = launcher(&fake, "ok", &["status"]);
        c.args(flag).arg(dir);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    let point = std::fs::read_dir(sweep.join("points"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    assert_eq!(status(&point, None), "finished");
    assert_eq!(status(&point, Some("--next")), "done");
    let json: serde_json::Value = serde_json::from_str(&status(&point, Some("--json"))).unwrap();
    assert_eq!(json["summary"]["steps"], 3);
    let empty = tmp.path().join("nothing-yet");
    assert_eq!(status(&empty, None), "pending");
    assert_eq!(status(&empty, Some("--next")), "start");
}

/// A stand-in `nvidia-smi` listing two GPUs with `free` MiB free each, in a folder to put on PATH.
fn fake_nvidia_smi(dir: &Path, free: u64) -> PathBuf {
    let bin = dir.join(format!("smi-{free}"));
    std::fs::create_dir_all(&bin).unwrap();
    let smi = bin.join("nvidia-smi");
    let text = format!(
        "#!/usr/bin/env bash\ncase \"$*\" in\n  -L) printf 'GPU 0: A\\nGPU 1: B\\n';;\n  *) printf '0, GPU-a, {free}\\n1, GPU-b, {free}\\n';;\nesac\n"
    );
    std::fs::write(&smi, text).unwrap();
    let mut perm = std::fs::metadata(&smi).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&smi, perm).unwrap();
    bin
}

/// `--runs-per-gpu 2` on 2 GPUs: 4 points at once, 2 on each GPU (each its own process with one
/// GPU visible); refused when the GPUs' free memory cannot hold them, or without GPUs.
#[test]
fn several_points_share_a_gpu_when_asked_and_when_they_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = setup(tmp.path());
    let sweep = tmp.path().join("sweep");
    let cfg = tmp.path().join("grid.toml");
    std::fs::write(
        &cfg,
        format!("out = {sweep:?}\nepochs = 1\n[grid]\nlr = [0.1, 0.2, 0.3, 0.4]\n"),
    )
    .unwrap();
    let events = tmp.path().join("events");
    let path = |smi: &Path| format!("{}:{}", smi.display(), std::env::var("PATH").unwrap());
    let grid = |smi: &Path, extra: &[&str]| {
        let mut args = vec!["grid", "--config", cfg.to_str().unwrap(), "--gpus", "2"];
        args.extend(extra);
        let mut c = launcher(&fake, "slow", &args);
        c.env("PATH", path(smi))
            .env("EVENTS", &events)
            .env_remove("CUDA_VISIBLE_DEVICES");
        c.output().unwrap()
    };

    let small = fake_nvidia_smi(tmp.path(), 5000);
    let o = grid(&small, &["--runs-per-gpu", "2", "--memory-per-run", "3000"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("GPU 0 has 5000 MiB free: 2 points of 3000 MiB each"),
        "{}",
        text(&o)
    );
    assert!(
        !events.exists(),
        "nothing may start when the points do not fit"
    );

    let big = fake_nvidia_smi(tmp.path(), 80_000);
    let o = grid(&big, &["--runs-per-gpu", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let log = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 8, "{log}");
    // All four started before any ended: they ran together, two per GPU.
    assert!(lines[..4].iter().all(|l| l.starts_with("start")), "{log}");
    for gpu in ["0", "1"] {
        assert_eq!(
            lines
                .iter()
                .filter(|l| **l == format!("start {gpu}"))
                .count(),
            2,
            "{log}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(sweep.join("results.md"))
            .unwrap()
            .lines()
            .count(),
        6
    );

    let mut args = vec!["grid", "--config", cfg.to_str().unwrap(), "--gpus", "0"];
    args.extend(["--runs-per-gpu", "2"]);
    let o = launcher(&fake, "slow", &args).output().unwrap();
    assert!(
        !o.status.success() && text(&o).contains("needs GPUs"),
        "{}",
        text(&o)
    );
}
