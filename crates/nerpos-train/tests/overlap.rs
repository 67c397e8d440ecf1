//! Gradients reach the communicator while backward is still running: two ranks (threads of this test,
//! over the TCP ring) differentiate the same batch with small gradient buckets; the first bucket is
//! handed over before the last gradient exists, and the sums are every gradient twice — through the
//! ring's communication thread, and through the inline path NCCL takes (each bucket's sum started
//! as backward completes it; on the ring a start is the whole sum).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use nerpos_dist::reduce::{Buckets, reduce_gradients, reduce_gradients_inline};
use nerpos_dist::{Comm, Rendezvous, Timeouts};
use nerpos_model::{BertNerPos, Grad, PackedBatch};

fn tiny() -> BertNerPos {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../nerpos-model/tests/fixtures/tiny/model");
    BertNerPos::load(&dir, &Device::Cpu).unwrap().0
}

fn batch() -> PackedBatch {
    let mut b = PackedBatch::new();
    for (r, len) in [11usize, 6, 9].into_iter().enumerate() {
        let ids: Vec<u32> = (0..len)
            .map(|i| (3 + (i * 13 + r * 7) % 90) as u32)
            .collect();
        let pos: Vec<u32> = (0..len).map(|i| (2 + i % 7) as u32).collect();
        let head = (1..len - 1).map(|p| (p, Some((p % 7) as u32)));
        b.push_row(r as u64, &ids, &pos, head);
    }
    b
}

/// One rank: its communicator, a step's overlapped reduction, and what it saw.
struct RankRun {
    reduced: HashMap<String, Grad>,
    submitted: Vec<Duration>,
    backward_done: Duration,
}

/// Which of the reduction's paths a rank runs.
#[derive(Clone, Copy)]
enum Route {
    /// The CPU ring's communication thread (what the trainer runs on the CPU).
    Thread,
    /// The inline starts NCCL runs.
    Inline,
}

fn rank(r: usize, port: u16, path: Route) -> RankRun {
    let vars: HashMap<String, String> = [
        ("RANK", r.to_string()),
        ("WORLD_SIZE", "2".into()),
        ("LOCAL_RANK", r.to_string()),
        ("LOCAL_WORLD_SIZE", "2".into()),
        ("MASTER_ADDR", "127.0.0.1".into()),
        ("MASTER_PORT", port.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let rdv = Rendezvous::from_vars(&vars).unwrap();
    let mut comm = Comm::cpu(&rdv, Timeouts::from_env().unwrap()).unwrap();
    let model = tiny();
    let order: Vec<(String, usize, bool)> = model
        .gradient_order()
        .into_iter()
        .map(|(n, size, rows)| (n, size * 4, rows))
        .collect();
    // Small buckets: one per few layers' parameters.
    let plan = Buckets::plan(&order, 20_000);
    assert!(plan.members.len() >= 4, "{} buckets", plan.members.len());
    let (inputs, targets) = batch().to_device(&Device::Cpu).unwrap();
    let targets = targets.unwrap();
    let started = Instant::now();
    let backward = |h: &mut nerpos_dist::reduce::Handover| {
        model.forward_backward_with(&inputs, &targets, None, |name, g| Ok(h.push(name, g)?))?;
        anyhow::Ok(started.elapsed())
    };
    let (backward_done, reduced) = match path {
        Route::Thread => reduce_gradients(&mut comm, &plan, DType::F32, backward),
        Route::Inline => reduce_gradients_inline(&mut comm, &plan, DType::F32, backward),
    }
    .unwrap();
    RankRun {
        reduced: reduced.grads.into_iter().collect(),
        submitted: reduced.submitted,
        backward_done,
    }
}

#[test]
fn buckets_are_reduced_while_backward_runs() {
    reduced_while_backward_runs(Route::Thread);
}

#[test]
fn inline_buckets_are_started_while_backward_runs() {
    reduced_while_backward_runs(Route::Inline);
}

fn reduced_while_backward_runs(path: Route) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let runs: Vec<RankRun> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|r| s.spawn(move || rank(r, port, path)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The same batch on both ranks: every reduced gradient is twice the local one.
    let model = tiny();
    let (inputs, targets) = batch().to_device(&Device::Cpu).unwrap();
    let local = model
        .forward_backward(&inputs, &targets.unwrap(), None)
        .unwrap();
    for run in &runs {
        assert_eq!(run.reduced.len(), model.params.len());
        for (name, g) in &local.grads {
            let ours = run.reduced[name].to_dense().unwrap();
            let twice = (g.to_dense().unwrap() * 2.0).unwrap();
            let d = (ours - twice)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d <= 1e-5, "{name}: reduced gradient off by {d}");
        }
        // The first bucket (the head and the last layer) left before backward reached the embeddings.
        eprintln!(
            "first bucket handed over at {:?}, backward done at {:?}, {} buckets",
            run.submitted[0],
            run.backward_done,
            run.submitted.len()
        );
        assert!(
            run.submitted[0] < run.backward_done,
            "bucket 0 at {:?}, backward done at {:?}",
            run.submitted[0],
            run.backward_done
        );
        assert!(run.submitted.windows(2).all(|w| w[0] <= w[1]));
    }
}
