//! Several real processes on 127.0.0.1, started the way torchrun and srun start them: collectives
//! against single-process results, rendezvous from both environments, and failures (a peer dies, a
//! peer stalls, a wrong world size, an unreachable master) that must end every process with an error
//! naming the culprit, in bounded time.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nerpos-dist-check");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Starts one process per entry of `envs` (each a list of variables) with `args`.
fn start(envs: &[Vec<(String, String)>], args: &[&str], extra: &[(&str, &str)]) -> Vec<Child> {
    envs.iter()
        .map(|env| {
            let mut c = Command::new(BIN);
            c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
            // Only the variables given here decide the launch mode.
            for k in [
                "RANK",
                "WORLD_SIZE",
                "SLURM_PROCID",
                "NERPOS_DIST_TIMEOUT",
                "NERPOS_DIST_CONNECT_TIMEOUT",
            ] {
                c.env_remove(k);
            }
            for (k, v) in env {
                c.env(k, v);
            }
            for (k, v) in extra {
                c.env(k, v);
            }
            c.spawn().unwrap()
        })
        .collect()
}

/// Waits for all children together up to `limit`, noting when each exits; a child still running then
/// is killed and reported with no exit code.
fn finish(mut children: Vec<Child>, limit: Duration) -> Vec<Outcome> {
    let started = Instant::now();
    let mut ended: Vec<Option<(i32, Duration)>> = vec![None; children.len()];
    while started.elapsed() < limit && ended.iter().any(Option::is_none) {
        for (c, e) in children.iter_mut().zip(&mut ended) {
            if e.is_none()
                && let Some(status) = c.try_wait().unwrap()
            {
                *e = Some((status.code().unwrap_or(-1), started.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    children
        .into_iter()
        .zip(ended)
        .map(|(mut c, e)| {
            if e.is_none() {
                let _ = c.kill();
            }
            let out = c.wait_with_output().unwrap();
            Outcome {
                code: e.map(|(code, _)| code),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                elapsed: e.map_or(limit, |(_, t)| t),
            }
        })
        .collect()
}

fn torchrun(world: usize, port: u16) -> Vec<Vec<(String, String)>> {
    (0..world)
        .map(|r| {
            vec![
                ("RANK".into(), r.to_string()),
                ("WORLD_SIZE".into(), world.to_string()),
                ("LOCAL_RANK".into(), r.to_string()),
                ("LOCAL_WORLD_SIZE".into(), world.to_string()),
                ("MASTER_ADDR".into(), "127.0.0.1".into()),
                ("MASTER_PORT".into(), port.to_string()),
            ]
        })
        .collect()
}

/// Every check passed on every rank, and every rank reports the same result hash for each check.
fn assert_checks_pass(outcomes: &[Outcome], world: usize, sizes: usize) {
    let mut hashes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (r, o) in outcomes.iter().enumerate() {
        assert_eq!(
            o.code,
            Some(0),
            "rank {r} of {world}:\n{}\n{}",
            o.stdout,
            o.stderr
        );
        let lines: Vec<serde_json::Value> = o
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines.len(),
            4 * sizes + 6,
            "rank {r}: {} checks",
            lines.len()
        );
        for l in &lines {
            assert_eq!(l["ok"], true, "rank {r} of {world}: {l}");
            assert_eq!(l["world"], world);
            let name = l["check"]
                .as_str()
                .unwrap()
                .split(" (")
                .next()
                .unwrap()
                .to_owned();
            hashes
                .entry(name)
                .or_default()
                .push(l["hash"].as_str().unwrap().to_owned());
        }
    }
    for (name, hs) in hashes {
        assert!(
            hs.windows(2).all(|p| p[0] == p[1]),
            "{name}: ranks disagree: {hs:?}"
        );
    }
}

#[test]
fn collectives_on_2_3_and_4_processes() {
    for world in [2, 3, 4] {
        let children = start(
            &torchrun(world, free_port()),
            &["check", "--sizes", "1,7,1000003"],
            &[],
        );
        assert_checks_pass(&finish(children, Duration::from_secs(120)), world, 3);
    }
}

#[test]
fn single_process_without_environment() {
    let out = finish(
        start(&[vec![]], &["check", "--sizes", "1,7"], &[]),
        Duration::from_secs(60),
    );
    assert_checks_pass(&out, 1, 2);
}

#[test]
fn slurm_style_rendezvous() {
    let port = free_port();
    let envs: Vec<Vec<(String, String)>> = (0..2)
        .map(|r| {
            vec![
                ("SLURM_PROCID".into(), r.to_string()),
                ("SLURM_NTASKS".into(), "2".into()),
                ("SLURM_LOCALID".into(), r.to_string()),
                ("SLURM_TASKS_PER_NODE".into(), "2".into()),
                ("SLURM_JOB_NODELIST".into(), "localhost".into()),
                ("MASTER_PORT".into(), port.to_string()),
            ]
        })
        .collect();
    let out = finish(
        start(&envs, &["check", "--sizes", "1,7,1000"], &[]),
        Duration::from_secs(60),
    );
    assert_checks_pass(&out, 2, 3);
}

#[test]
fn a_dead_peer_fails_everyone_naming_it() {
    let out = finish(
        start(&torchrun(3, free_port()), &["fault", "--die", "1"], &[]),
        Duration::from_secs(60),
    );
    assert_eq!(out[1].code, Some(3));
    assert_failed_naming(&out, &[0, 2], Duration::from_secs(30), "rank 1 ");
}

/// Each of `ranks` failed within `within`, its error containing `naming`.
fn assert_failed_naming(out: &[Outcome], ranks: &[usize], within: Duration, naming: &str) {
    for &r in ranks {
        assert!(
            matches!(out[r].code, Some(c) if c != 0),
            "rank {r}: {}",
            out[r].stderr
        );
        assert!(
            out[r].elapsed < within,
            "rank {r} took {:?}",
            out[r].elapsed
        );
        assert!(
            out[r].stderr.contains(naming),
            "rank {r}: {}",
            out[r].stderr
        );
    }
}

#[test]
fn a_stalled_peer_fails_everyone_naming_it() {
    let out = finish(
        start(
            &torchrun(3, free_port()),
            &["fault", "--stall", "1"],
            &[("NERPOS_DIST_TIMEOUT", "3")],
        ),
        Duration::from_secs(12),
    );
    assert_eq!(
        out[1].code, None,
        "the stalled rank is still running (and was killed by the test)"
    );
    assert_failed_naming(
        &out,
        &[0, 2],
        Duration::from_secs(10),
        "rank(s) 1 did not enter",
    );
}

#[test]
fn too_few_processes_for_the_world_size() {
    let port = free_port();
    let envs: Vec<_> = torchrun(3, port).into_iter().take(2).collect();
    let out = finish(
        start(&envs, &["check"], &[("NERPOS_DIST_CONNECT_TIMEOUT", "3")]),
        Duration::from_secs(30),
    );
    for (r, o) in out.iter().enumerate() {
        assert!(
            matches!(o.code, Some(c) if c != 0),
            "rank {r}: {}",
            o.stderr
        );
        assert!(
            o.elapsed < Duration::from_secs(15),
            "rank {r} took {:?}",
            o.elapsed
        );
        assert!(
            o.stderr.contains("rank(s) 2 of 3 did not join"),
            "rank {r}: {}",
            o.stderr
        );
    }
}

#[test]
fn ranks_disagreeing_on_the_world_size() {
    let port = free_port();
    let mut envs = torchrun(2, port);
    envs[1][1].1 = "3".into();
    let out = finish(
        start(&envs, &["check"], &[("NERPOS_DIST_CONNECT_TIMEOUT", "3")]),
        Duration::from_secs(30),
    );
    assert!(
        out[0]
            .stderr
            .contains("rank 1 has WORLD_SIZE=3 but rank 0 has 2"),
        "{}",
        out[0].stderr
    );
    assert!(out.iter().all(|o| matches!(o.code, Some(c) if c != 0)));
}

#[test]
fn unreachable_master() {
    let mut env = torchrun(2, free_port());
    let out = finish(
        start(
            &[env.remove(1)],
            &["check"],
            &[("NERPOS_DIST_CONNECT_TIMEOUT", "2")],
        ),
        Duration::from_secs(20),
    );
    assert!(matches!(out[0].code, Some(c) if c != 0));
    assert!(out[0].elapsed < Duration::from_secs(10));
    assert!(
        out[0]
            .stderr
            .contains("could not reach the rendezvous store at 127.0.0.1:"),
        "{}",
        out[0].stderr
    );
}
