//! Where a process stands in the job: its rank, the world size, its rank on this node, and where the
//! rendezvous store is — from torchrun-style variables, else Slurm's, else a single process.

use std::collections::HashMap;

use crate::DistError;

/// The port used when the launcher sets none (torchrun's default).
pub const DEFAULT_PORT: u16 = 29500;

/// How this process was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchMode {
    /// No rendezvous variables: one process.
    Single,
    /// `RANK`/`WORLD_SIZE`/`MASTER_ADDR`/`MASTER_PORT` (torchrun, `launch/train.sh`, by hand).
    Torchrun,
    /// `SLURM_PROCID`/`SLURM_NTASKS`/`SLURM_JOB_NODELIST` (srun).
    Slurm,
}

/// One process's place in a distributed job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    pub mode: LaunchMode,
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub local_world_size: usize,
    /// Host and port of the rendezvous store (run by rank 0).
    pub master_addr: String,
    pub master_port: u16,
}

impl Rendezvous {
    /// One process, no peers.
    pub fn single() -> Rendezvous {
        Rendezvous {
            mode: LaunchMode::Single,
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_world_size: 1,
            master_addr: "127.0.0.1".into(),
            master_port: DEFAULT_PORT,
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Rendezvous, DistError> {
        Rendezvous::from_vars(&std::env::vars().collect())
    }

    /// Reads the given variables: torchrun's if `RANK` or `WORLD_SIZE` is set, else Slurm's if
    /// `SLURM_PROCID` is set, else a single process.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Rendezvous, DistError> {
        let v = Vars(vars);
        let r = if v.get("RANK").is_some() || v.get("WORLD_SIZE").is_some() {
            v.torchrun()?
        } else if v.get("SLURM_PROCID").is_some() {
            v.slurm()?
        } else {
            return Ok(Rendezvous::single());
        };
        if r.world_size == 0 || r.rank >= r.world_size {
            return Err(DistError::Env(format!(
                "rank {} is outside a world of {} process(es)",
                r.rank, r.world_size
            )));
        }
        if r.local_rank >= r.local_world_size.max(1) {
            return Err(DistError::Env(format!(
                "local rank {} is outside {} process(es) on this node",
                r.local_rank, r.local_world_size
            )));
        }
        Ok(r)
    }
}

/// The launch variables, read with the errors that name them.
struct Vars<'a>(&'a HashMap<String, String>);

impl Vars<'_> {
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn num(&self, k: &str) -> Result<Option<usize>, DistError> {
        self.get(k)
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| DistError::Env(format!("{k}={v:?} is not a non-negative integer")))
            })
            .transpose()
    }

    /// `k`, which must be set (`hint` says who sets it).
    fn need(&self, k: &str, hint: &str) -> Result<usize, DistError> {
        self.num(k)?
            .ok_or_else(|| DistError::Env(format!("{k} is not set ({hint})")))
    }

    fn port(&self, default: u16) -> Result<u16, DistError> {
        match self.get("MASTER_PORT") {
            None => Ok(default),
            Some(v) => v
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| DistError::Env(format!("MASTER_PORT={v:?} is not a TCP port"))),
        }
    }

    /// torchrun's variables.
    fn torchrun(&self) -> Result<Rendezvous, DistError> {
        let hint = "torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT together";
        let rank = self.need("RANK", hint)?;
        let world_size = self.need("WORLD_SIZE", hint)?;
        let master_addr = self
            .get("MASTER_ADDR")
            .map(str::to_owned)
            .or_else(|| (world_size == 1).then(|| "127.0.0.1".to_owned()))
            .ok_or_else(|| DistError::Env("MASTER_ADDR is not set".into()))?;
        Ok(Rendezvous {
            mode: LaunchMode::Torchrun,
            rank,
            world_size,
            local_rank: self.num("LOCAL_RANK")?.unwrap_or(rank),
            local_world_size: self.num("LOCAL_WORLD_SIZE")?.unwrap_or(world_size),
            master_addr,
            master_port: self.port(DEFAULT_PORT)?,
        })
    }

    /// Slurm's variables (inside `srun`).
    fn slurm(&self) -> Result<Rendezvous, DistError> {
        let hint = "expected inside srun";
        let rank = self.need("SLURM_PROCID", hint)?;
        let world_size = self.need("SLURM_NTASKS", hint)?;
        let nodelist = self
            .get("SLURM_JOB_NODELIST")
            .or_else(|| self.get("SLURM_NODELIST"))
            .ok_or_else(|| DistError::Env("SLURM_JOB_NODELIST is not set".into()))?;
        let hosts = expand_hostlist(nodelist)?;
        let master_addr = match self.get("MASTER_ADDR") {
            Some(a) => a.to_owned(),
            None => hosts.first().cloned().ok_or_else(|| {
                DistError::Env(format!("SLURM_JOB_NODELIST={nodelist:?} names no host"))
            })?,
        };
        // Jobs sharing a node must not share a port: derive the default from the job id.
        let job_port = self
            .num("SLURM_JOB_ID")?
            .map_or(DEFAULT_PORT, |id| 20000 + (id % 20000) as u16);
        let local_world_size = match self.num("SLURM_NTASKS_PER_NODE")? {
            Some(n) => n,
            None => self
                .get("SLURM_TASKS_PER_NODE")
                .map(|v| tasks_on_node(v, self.num("SLURM_NODEID")?.unwrap_or(0)))
                .transpose()?
                .unwrap_or(world_size),
        };
        Ok(Rendezvous {
            mode: LaunchMode::Slurm,
            rank,
            world_size,
            local_rank: self.num("SLURM_LOCALID")?.unwrap_or(0),
            local_world_size,
            master_addr,
            master_port: self.port(job_port)?,
        })
    }
}

/// Slurm's `SLURM_TASKS_PER_NODE` (e.g. `4(x2),3`): the task count of node `node`.
fn tasks_on_node(spec: &str, node: usize) -> Result<usize, DistError> {
    let bad = || {
        DistError::Env(format!(
            "SLURM_TASKS_PER_NODE={spec:?} is not of the form 4(x2),3"
        ))
    };
    let mut seen = 0;
    for part in spec.split(',') {
        let (count, repeat) = match part.split_once("(x") {
            Some((c, r)) => (c, r.strip_suffix(')').ok_or_else(bad)?),
            None => (part, "1"),
        };
        let count: usize = count.parse().map_err(|_| bad())?;
        let repeat: usize = repeat.parse().map_err(|_| bad())?;
        if node < seen + repeat {
            return Ok(count);
        }
        seen += repeat;
    }
    Err(DistError::Env(format!(
        "SLURM_TASKS_PER_NODE={spec:?} has no entry for node {node}"
    )))
}

/// Expands Slurm's host-list syntax: `gpu[01-04,07]` → gpu01 gpu02 gpu03 gpu04 gpu07; several
/// comma-separated entries; several bracket groups (`r[1-2]n[1-2]`) expand as a product; zero padding
/// follows the range's first bound.
pub fn expand_hostlist(list: &str) -> Result<Vec<String>, DistError> {
    let bad = |why: &str| DistError::Env(format!("host list {list:?}: {why}"));
    // Split at top-level commas (commas inside brackets separate ranges, not hosts).
    let mut entries = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                entries.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(bad("unbalanced or nested brackets"));
        }
    }
    if depth != 0 {
        return Err(bad("unbalanced brackets"));
    }
    entries.push(&list[start..]);

    let mut hosts = Vec::new();
    for entry in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
        let mut partial = vec![String::new()];
        let mut rest = entry;
        while !rest.is_empty() {
            let Some(open) = rest.find('[') else {
                partial.iter_mut().for_each(|p| p.push_str(rest));
                break;
            };
            let close = rest[open..]
                .find(']')
                .ok_or_else(|| bad("unbalanced brackets"))?
                + open;
            let prefix = &rest[..open];
            let mut alternatives = Vec::new();
            for range in rest[open + 1..close].split(',') {
                let range = range.trim();
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                let width = lo.len();
                let a: u64 = lo
                    .parse()
                    .map_err(|_| bad(&format!("{range:?} is not a number range")))?;
                let b: u64 = hi
                    .parse()
                    .map_err(|_| bad(&format!("{range:?} is not a number range")))?;
                if b < a || b - a > 100_000 {
                    return Err(bad(&format!(
                        "range {range:?} runs backwards or is too long"
                    )));
                }
                alternatives.extend((a..=b).map(|n| format!("{n:0width$}")));
            }
            partial = partial
                .iter()
                .flat_map(|p| {
                    alternatives
                        .iter()
                        .map(move |alt| format!("{p}{prefix}{alt}"))
                })
                .collect();
            rest = &rest[close + 1..];
        }
        hosts.extend(partial);
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hostlists() {
        let h = |s: &str| expand_hostlist(s).unwrap();
        assert_eq!(
            h("gpu[01-04,07]"),
            ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]
        );
        assert_eq!(h("node1"), ["node1"]);
        assert_eq!(h("a,b[1-2],c"), ["a", "b1", "b2", "c"]);
        assert_eq!(h("n[8-11]"), ["n8", "n9", "n10", "n11"]);
        assert_eq!(h("r[1-2]n[01-02]"), ["r1n01", "r1n02", "r2n01", "r2n02"]);
        assert_eq!(h("gpu[001-002]-ib"), ["gpu001-ib", "gpu002-ib"]);
        assert_eq!(h("x[5]"), ["x5"]);
        for bad in ["gpu[01-04", "gpu]01[", "gpu[a-b]", "gpu[4-1]", "g[[1]]"] {
            assert!(expand_hostlist(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn torchrun_environment() {
        let r = Rendezvous::from_vars(&vars(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node7"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap();
        assert_eq!(
            (
                r.mode,
                r.rank,
                r.world_size,
                r.local_rank,
                r.local_world_size
            ),
            (LaunchMode::Torchrun, 3, 8, 1, 2)
        );
        assert_eq!((r.master_addr.as_str(), r.master_port), ("node7", 1234));
        let err = Rendezvous::from_vars(&vars(&[("RANK", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("WORLD_SIZE is not set"), "{err}");
        let err = Rendezvous::from_vars(&vars(&[
            ("RANK", "4"),
            ("WORLD_SIZE", "4"),
            ("MASTER_ADDR", "h"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("outside a world of 4"), "{err}");
        let err = Rendezvous::from_vars(&vars(&[("RANK", "x"), ("WORLD_SIZE", "2")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("RANK=\"x\""), "{err}");
    }

    #[test]
    fn slurm_environment() {
        let r = Rendezvous::from_vars(&vars(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NODEID", "1"),
            ("SLURM_TASKS_PER_NODE", "4(x2)"),
            ("SLURM_JOB_NODELIST", "gpu[03-04]"),
            ("SLURM_JOB_ID", "123456"),
        ]))
        .unwrap();
        assert_eq!(
            (
                r.mode,
                r.rank,
                r.world_size,
                r.local_rank,
                r.local_world_size
            ),
            (LaunchMode::Slurm, 5, 8, 1, 4)
        );
        assert_eq!(r.master_addr, "gpu03");
        assert_eq!(r.master_port, 20000 + (123456 % 20000) as u16);
        assert_eq!(tasks_on_node("4(x2),3", 2).unwrap(), 3);
    }

    #[test]
    fn nothing_set_is_a_single_process() {
        assert_eq!(
            Rendezvous::from_vars(&HashMap::new()).unwrap(),
            Rendezvous::single()
        );
    }
}
