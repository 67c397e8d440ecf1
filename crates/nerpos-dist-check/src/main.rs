//! `nerpos-dist-check`: checks and measures the collectives of a job, the way nccl-tests does for NCCL.
//!
//! Start it like a training process (torchrun-style variables, `srun`, or `--spawn N` for N local
//! processes). `check` runs every collective against results computed in one process; `bench` measures
//! all-reduce bus bandwidth; `fault` is for the tests of peer death and stalls.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use clap::{Parser, Subcommand};
use half::bf16;
use nerpos_dist::{Comm, DEFAULT_BUCKET_BYTES, Rendezvous, Timeouts, all_reduce_bucketed};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

#[derive(Parser)]
#[command(name = "nerpos-dist-check", version)]
struct Cli {
    /// Start N processes on this machine (ranks 0..N over 127.0.0.1) instead of reading the launch
    /// environment.
    #[arg(long, global = true)]
    spawn: Option<usize>,
    /// `cpu` (the TCP ring on host tensors), or `cuda`: NCCL on tensors of GPU LOCAL_RANK (a CUDA
    /// build; with one process too, where NCCL makes a world-size-1 communicator).
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every collective against a single-process computation; prints a JSON line per check.
    Check {
        /// Buffer sizes in elements.
        #[arg(long, value_delimiter = ',', default_value = "1,7,1000003")]
        sizes: Vec<usize>,
    },
    /// All-reduce bus bandwidth at several sizes, and a MiniLM-sized gradient set in the trainer's
    /// default buckets.
    Bench {
        /// Buffer sizes in MB (10^6 bytes) of f32.
        #[arg(long, value_delimiter = ',', default_value = "1,25,256")]
        sizes_mb: Vec<f64>,
        #[arg(long, default_value_t = 5)]
        iters: usize,
    },
    /// Test helper: rank `die` exits (or rank `stall` hangs) before an all-reduce the others enter.
    Fault {
        #[arg(long)]
        die: Option<usize>,
        #[arg(long)]
        stall: Option<usize>,
    },
}

fn main() -> ExitCode {
    nerpos_run::cli::init_logging("warn");
    let cli = Cli::parse();
    let result = match cli.spawn {
        Some(n) => spawn(n),
        None => run(&cli.device, cli.command),
    };
    let code = |pass: bool| {
        if pass {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    };
    nerpos_run::cli::exit(result.map(code))
}

/// Re-runs this program as `n` local ranks, prefixing their output with the rank.
fn spawn(n: usize) -> anyhow::Result<bool> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe()?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .scan(false, |skip, a| {
            let keep = if *skip {
                *skip = false;
                None
            } else if a == "--spawn" {
                *skip = true;
                None
            } else if a.starts_with("--spawn=") {
                None
            } else {
                Some(a)
            };
            Some(keep)
        })
        .flatten()
        .collect();
    let mut children = Vec::new();
    for rank in 0..n {
        let mut child = Command::new(&exe)
            .args(&args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a rank")?;
        let out = child.stdout.take().context("child stdout")?;
        let printer = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if rank == 0 {
                    println!("{line}");
                } else {
                    eprintln!("[rank {rank}] {line}");
                }
            }
        });
        children.push((child, printer));
    }
    let mut ok = true;
    for (rank, (mut child, printer)) in children.into_iter().enumerate() {
        let status = child.wait()?;
        let _ = printer.join();
        if !status.success() {
            eprintln!("rank {rank} exited with {status}");
            ok = false;
        }
    }
    Ok(ok)
}

/// The device and communicator of this rank.
fn join(device: &str, rdv: &Rendezvous, t: Timeouts) -> anyhow::Result<(Device, Comm)> {
    match device {
        "cpu" => Ok((Device::Cpu, Comm::cpu(rdv, t)?)),
        #[cfg(feature = "cuda")]
        "cuda" => {
            let dev = Device::new_cuda(rdv.local_rank)
                .with_context(|| format!("opening GPU {}", rdv.local_rank))?;
            let stream = match &dev {
                Device::Cuda(c) => c.cuda_stream(),
                _ => unreachable!("new_cuda gives a CUDA device"),
            };
            Ok((dev, Comm::nccl(rdv, t, stream)?))
        }
        #[cfg(not(feature = "cuda"))]
        "cuda" => bail!("--device cuda needs a CUDA build (launch/build-cuda.sh)"),
        other => bail!("--device {other:?}: expected cpu or cuda"),
    }
}

fn run(device: &str, cmd: Cmd) -> anyhow::Result<bool> {
    let rdv = Rendezvous::from_env()?;
    let t = Timeouts::from_env()?;
    let (dev, mut comm) = join(device, &rdv, t)?;
    match cmd {
        Cmd::Check { sizes } => check(&mut comm, &sizes, &dev),
        Cmd::Bench { sizes_mb, iters } => bench(&mut comm, &sizes_mb, iters, &dev),
        Cmd::Fault { die, stall } => {
            let r = comm.rank();
            if die == Some(r) {
                eprintln!("rank {r}: exiting on purpose before the all-reduce");
                std::process::exit(3);
            }
            if stall == Some(r) {
                eprintln!("rank {r}: stalling on purpose");
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            let mut buf = vec![1f32; 1000];
            comm.all_reduce_sum(&mut buf)?;
            bail!("the all-reduce succeeded although a peer was gone")
        }
    }
}

/// Rank `r`'s test buffer of `n` values: small integers over 256 (exact in any summation order), or
/// full-precision uniform floats.
fn values(r: usize, n: usize, exact: bool) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64((r as u64) << 32 | n as u64 | (exact as u64) << 63);
    (0..n)
        .map(|_| {
            if exact {
                rng.random_range(-1000i32..=1000) as f32 / 256.0
            } else {
                rng.random_range(-1.0f32..1.0)
            }
        })
        .collect()
}

/// The sum the ring computes, in the ring's order: segment k starts at rank k and each next rank adds
/// its value to the running sum.
fn ring_order_sum(all: &[Vec<f32>], n: usize) -> Vec<f32> {
    let w = all.len();
    let mut out = vec![0f32; n];
    for k in 0..w {
        for i in n * k / w..n * (k + 1) / w {
            let mut acc = all[k][i];
            for j in 1..w {
                acc += all[(k + j) % w][i];
            }
            out[i] = acc;
        }
    }
    out
}

fn hash<T: bytemuck::Pod>(v: &[T]) -> String {
    format!("{:x}", Sha256::digest(bytemuck::cast_slice::<T, u8>(v)))[..16].to_owned()
}

/// Whether every rank's result hash equals ours (gathered and compared on every rank).
fn agree(comm: &mut Comm, h: &str) -> anyhow::Result<bool> {
    let all = comm.all_gather(h.as_bytes())?;
    Ok(all.iter().all(|x| x == h.as_bytes()))
}

/// Prints one JSON line per check and remembers whether all passed.
struct Report {
    rank: usize,
    world: usize,
    ok: bool,
}

impl Report {
    fn record(&mut self, name: String, pass: bool, hash: &str) {
        self.ok &= pass;
        let (rank, world) = (self.rank, self.world);
        println!(
            "{}",
            serde_json::json!({"rank": rank, "world": world, "check": name, "ok": pass, "hash": hash})
        );
    }
}

fn check(comm: &mut Comm, sizes: &[usize], dev: &Device) -> anyhow::Result<bool> {
    let mut report = Report {
        rank: comm.rank(),
        world: comm.world_size(),
        ok: true,
    };
    for &n in sizes {
        check_f32_sums(comm, n, &mut report)?;
        check_bf16_sums(comm, n, &mut report)?;
        check_broadcast(comm, n, &mut report)?;
    }
    check_small_collectives(comm, &mut report)?;
    check_tensors(comm, dev, &mut report)?;
    Ok(report.ok)
}

/// Sums of values exact in f32 (any order gives the bits expected), then of random ones (close to the
/// plain sum, and bit-identical to the ring's order on every rank).
fn check_f32_sums(comm: &mut Comm, n: usize, report: &mut Report) -> anyhow::Result<()> {
    let (r, w) = (comm.rank(), comm.world_size());
    let all: Vec<Vec<f32>> = (0..w).map(|q| values(q, n, true)).collect();
    let mut buf = all[r].clone();
    comm.all_reduce_sum(&mut buf)?;
    let expected: Vec<f32> = (0..n).map(|i| all.iter().map(|v| v[i]).sum()).collect();
    let h = hash(&buf);
    let same = agree(comm, &h)?;
    report.record(
        format!("all_reduce f32 exact n={n}"),
        buf == expected && same,
        &h,
    );

    let all: Vec<Vec<f32>> = (0..w).map(|q| values(q, n, false)).collect();
    let mut buf = all[r].clone();
    comm.all_reduce_sum(&mut buf)?;
    let naive: Vec<f32> = (0..n).map(|i| all.iter().map(|v| v[i]).sum()).collect();
    let close = buf
        .iter()
        .zip(&naive)
        .all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs()));
    let bitwise = buf == ring_order_sum(&all, n);
    let h = hash(&buf);
    let same = agree(comm, &h)?;
    report.record(
        format!("all_reduce f32 random n={n} (bit-identical on all ranks)"),
        close && bitwise && same,
        &h,
    );
    Ok(())
}

fn check_bf16_sums(comm: &mut Comm, n: usize, report: &mut Report) -> anyhow::Result<()> {
    // Integers below 64 in magnitude: their sums over up to 4 ranks are exact in bf16.
    let ints = |q: usize| -> Vec<bf16> {
        values(q, n, true)
            .iter()
            .map(|v| bf16::from_f32(((v * 256.0) as i32 % 64) as f32))
            .collect()
    };
    let all: Vec<Vec<bf16>> = (0..comm.world_size()).map(ints).collect();
    let mut buf = all[comm.rank()].clone();
    comm.all_reduce_sum(&mut buf)?;
    let expected: Vec<bf16> = (0..n)
        .map(|i| bf16::from_f32(all.iter().map(|v| v[i].to_f32()).sum()))
        .collect();
    report.record(
        format!("all_reduce bf16 n={n}"),
        buf == expected,
        &hash(&buf),
    );
    Ok(())
}

fn check_broadcast(comm: &mut Comm, n: usize, report: &mut Report) -> anyhow::Result<()> {
    let root = comm.world_size() - 1;
    let want: Vec<u8> = values(root, n, false)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let mut bytes = if comm.rank() == root {
        want.clone()
    } else {
        vec![0u8; n * 4]
    };
    comm.broadcast(&mut bytes, root)?;
    report.record(
        format!("broadcast n={n} bytes from rank {root}"),
        bytes == want,
        &hash(&bytes),
    );
    Ok(())
}

/// Integer sums, all_gather of different lengths, and the barrier's latency.
fn check_small_collectives(comm: &mut Comm, report: &mut Report) -> anyhow::Result<()> {
    let (r, w) = (comm.rank(), comm.world_size());
    let mut counts = vec![r as u64 + 1, 1_000_000_007 * r as u64];
    comm.all_reduce_sum(&mut counts)?;
    let want = vec![
        (1..=w as u64).sum(),
        1_000_000_007 * (0..w as u64).sum::<u64>(),
    ];
    report.record(
        "all_reduce u64 counts".into(),
        counts == want,
        &hash(&counts),
    );

    let mine = format!("rank-{r}-{}", "x".repeat(r * 3));
    let gathered = comm.all_gather(mine.as_bytes())?;
    let want: Vec<Vec<u8>> = (0..w)
        .map(|q| format!("rank-{q}-{}", "x".repeat(q * 3)).into_bytes())
        .collect();
    report.record("all_gather".into(), gathered == want, "");

    let started = Instant::now();
    comm.barrier()?;
    report.record(
        format!("barrier ({:.1} ms)", started.elapsed().as_secs_f64() * 1e3),
        true,
        "",
    );
    Ok(())
}

/// Tensors (on `dev`: NCCL for GPU tensors): bucketed (buckets smaller than some tensors), and in place.
fn check_tensors(comm: &mut Comm, dev: &Device, report: &mut Report) -> anyhow::Result<()> {
    let (r, w) = (comm.rank(), comm.world_size());
    let shapes: [&[usize]; 4] = [&[3, 5], &[700], &[2, 3, 4], &[1]];
    let make = |q: usize| -> anyhow::Result<Vec<Tensor>> {
        shapes
            .iter()
            .enumerate()
            .map(|(k, s)| {
                Ok(Tensor::from_vec(
                    values(q * 10 + k, s.iter().product(), true),
                    *s,
                    dev,
                )?)
            })
            .collect()
    };
    let mine = make(r)?;
    let reduced = all_reduce_bucketed(comm, &mine, 1000)?;
    let mut pass = true;
    for (k, t) in reduced.iter().enumerate() {
        let mut want = make(0)?[k].clone();
        for q in 1..w {
            want = (want + &make(q)?[k])?;
        }
        pass &= t.dims() == shapes[k]
            && t.flatten_all()?.to_vec1::<f32>()? == want.flatten_all()?.to_vec1::<f32>()?;
    }
    report.record(
        "all_reduce_bucketed tensors (1000-byte buckets)".into(),
        pass,
        "",
    );
    let t = Tensor::from_vec(values(r, 64, true), 64, dev)?;
    comm.all_reduce_tensor(&t)?;
    let all: Vec<Vec<f32>> = (0..w).map(|q| values(q, 64, true)).collect();
    let want: Vec<f32> = (0..64).map(|i| all.iter().map(|v| v[i]).sum()).collect();
    report.record(
        "all_reduce_tensor in place".into(),
        t.to_vec1::<f32>()? == want,
        "",
    );
    check_queued_sums(comm, dev, report)
}

/// Sums queued the way the gradient buckets are (NCCL: on its stream, the compute stream going on
/// meanwhile), with compute-stream work queued between them, read after the one wait.
fn check_queued_sums(comm: &mut Comm, dev: &Device, report: &mut Report) -> anyhow::Result<()> {
    let (r, w) = (comm.rank(), comm.world_size());
    let mut queued = Vec::new();
    for k in 0..3 {
        // Made on the compute stream just before it is queued: the sum must see these values.
        let t = (Tensor::from_vec(values(r * 10 + k, 4096, true), 4096, dev)? * 1.0)?;
        comm.queue_all_reduce_tensor(&t)?;
        // Compute work meanwhile, as backward goes on.
        let _busy = (t.ones_like()? * 3.0)?.sum_all()?;
        queued.push(t);
    }
    comm.finish_queued()?;
    let mut pass = true;
    for (k, t) in queued.iter().enumerate() {
        let all: Vec<Vec<f32>> = (0..w).map(|q| values(q * 10 + k, 4096, true)).collect();
        let want: Vec<f32> = (0..4096).map(|i| all.iter().map(|v| v[i]).sum()).collect();
        pass &= t.to_vec1::<f32>()? == want;
    }
    report.record(
        "queued all-reduces, one wait (the gradient buckets' path)".into(),
        pass,
        "",
    );
    Ok(())
}

/// MiniLM-L6's parameter shapes (the encoder without its pooler, plus a POS embedding and a head for 17
/// labels): 90 MB of f32 gradients.
fn minilm_shapes() -> Vec<Vec<usize>> {
    let (h, i, v) = (384, 1536, 30522);
    let mut s = vec![vec![v, h], vec![512, h], vec![2, h], vec![h], vec![h]];
    for _ in 0..6 {
        for _ in 0..4 {
            s.push(vec![h, h]);
            s.push(vec![h]);
        }
        s.extend([
            vec![h],
            vec![h],
            vec![i, h],
            vec![i],
            vec![h, i],
            vec![h],
            vec![h],
            vec![h],
        ]);
    }
    s.extend([vec![50, h], vec![17, 2 * h], vec![17]]);
    s
}

fn bench(comm: &mut Comm, sizes_mb: &[f64], iters: usize, dev: &Device) -> anyhow::Result<bool> {
    let (r, w) = (comm.rank(), comm.world_size());
    let bus = 2.0 * (w as f64 - 1.0) / w as f64;
    let mut rows = Vec::new();
    for &mb in sizes_mb {
        let n = (mb * 1e6 / 4.0) as usize;
        let mut buf = values(r, n, false);
        let mut times = Vec::new();
        if dev.is_cpu() {
            comm.all_reduce_sum(&mut buf)?; // warm-up
            for _ in 0..iters {
                comm.barrier()?;
                let t0 = Instant::now();
                comm.all_reduce_sum(&mut buf)?;
                times.push(t0.elapsed().as_secs_f64());
            }
        } else {
            // A device tensor through the backend (NCCL), timed until the device is done.
            let t = Tensor::from_vec(buf, n, dev)?;
            comm.all_reduce_tensor(&t)?;
            dev.synchronize()?;
            for _ in 0..iters {
                comm.barrier()?;
                let t0 = Instant::now();
                comm.all_reduce_tensor(&t)?;
                dev.synchronize()?;
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        let t = times[times.len() / 2];
        rows.push(serde_json::json!({
            "what": format!("{mb} MB f32"), "device": format!("{dev:?}"), "bytes": n * 4, "world": w, "seconds": t,
            "algbw_gb_s": n as f64 * 4.0 / t / 1e9, "busbw_gb_s": n as f64 * 4.0 / t / 1e9 * bus,
        }));
    }
    let grads: Vec<Tensor> = minilm_shapes()
        .iter()
        .map(|s| Tensor::zeros(s.as_slice(), candle_core::DType::F32, dev))
        .collect::<Result<_, _>>()?;
    let bytes: usize = grads.iter().map(|g| g.elem_count() * 4).sum();
    all_reduce_bucketed(comm, &grads, DEFAULT_BUCKET_BYTES)?;
    dev.synchronize()?;
    let mut times = Vec::new();
    for _ in 0..iters {
        comm.barrier()?;
        let t0 = Instant::now();
        all_reduce_bucketed(comm, &grads, DEFAULT_BUCKET_BYTES)?;
        dev.synchronize()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let t = times[times.len() / 2];
    rows.push(serde_json::json!({
        "what": format!("MiniLM gradient set ({} tensors, {} MB buckets, as the trainer cuts them)", grads.len(), DEFAULT_BUCKET_BYTES / 1_000_000), "bytes": bytes,
        "world": w, "seconds": t, "algbw_gb_s": bytes as f64 / t / 1e9, "busbw_gb_s": bytes as f64 / t / 1e9 * bus,
    }));
    if r == 0 {
        for row in rows {
            println!("{row}");
        }
    }
    Ok(true)
}
