//! Whether several grid points fit on one GPU: the free memory of each GPU a sweep shares, read from
//! `nvidia-smi` before the first point starts.

use std::process::Command;

use anyhow::bail;

/// A GPU as `nvidia-smi` lists it: its index, UUID and free memory.
struct GpuMemory {
    index: String,
    uuid: String,
    free_mib: u64,
}

fn query() -> Option<Vec<GpuMemory>> {
    let out = Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,uuid,memory.free",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            Some(GpuMemory {
                index: f.first()?.to_string(),
                uuid: f.get(1)?.to_string(),
                free_mib: f.get(2)?.parse().ok()?,
            })
        })
        .collect()
}

/// The `nvidia-smi` name of visible GPU `i` (an entry of this process's `CUDA_VISIBLE_DEVICES`, which
/// `nvidia-smi` does not apply, else `i` itself).
fn physical(i: usize) -> String {
    std::env::var("CUDA_VISIBLE_DEVICES")
        .ok()
        .and_then(|v| v.split(',').nth(i).map(|s| s.trim().to_owned()))
        .unwrap_or_else(|| i.to_string())
}

/// Checks that each GPU of `gpus` has `runs` × `need_mib` MiB free; a warning, not an error, when
/// the memory cannot be read (no `nvidia-smi`).
pub fn check_fits(gpus: &[usize], runs: usize, need_mib: u64) -> anyhow::Result<()> {
    let Some(listed) = query() else {
        tracing::warn!(
            "nvidia-smi could not be read: free GPU memory not checked before running {runs} points per GPU"
        );
        return Ok(());
    };
    for &g in gpus {
        let name = physical(g);
        let Some(m) = listed.iter().find(|m| m.index == name || m.uuid == name) else {
            bail!("GPU {name} is not among the GPUs nvidia-smi lists");
        };
        let want = runs as u64 * need_mib;
        if m.free_mib < want {
            bail!(
                "GPU {name} has {} MiB free: {runs} points of {need_mib} MiB each (--memory-per-run) need {want} MiB; \
                 lower --runs-per-gpu or --memory-per-run",
                m.free_mib
            );
        }
    }
    Ok(())
}
