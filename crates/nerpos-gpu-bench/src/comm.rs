//! The gradient reduction on a GPU with nothing to exchange: a world-1 NCCL communicator, so that the
//! trainer's buckets take the NCCL path (each queued on NCCL's stream during backward, one wait
//! after it), and the time that path takes alone. Compared with the same step without a
//! communicator, the difference is the reduction's exposed share (issue 34: at most 10 %).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use nerpos_dist::reduce::reduce_gradients_inline;
use nerpos_dist::{Comm, DistError, Grad};
use nerpos_train::Trainer;

/// A world-1 NCCL communicator on `dev`, with a rendezvous of its own on a free local port.
#[cfg(feature = "cuda")]
pub fn nccl_alone(dev: &Device) -> anyhow::Result<Comm> {
    let Device::Cuda(cuda) = dev else {
        anyhow::bail!("--nccl needs a GPU");
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let vars: std::collections::HashMap<String, String> = [
        ("RANK", "0".to_string()),
        ("WORLD_SIZE", "1".into()),
        ("LOCAL_RANK", "0".into()),
        ("LOCAL_WORLD_SIZE", "1".into()),
        ("MASTER_ADDR", "127.0.0.1".into()),
        ("MASTER_PORT", port.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let rdv = nerpos_dist::Rendezvous::from_vars(&vars)?;
    let t = nerpos_dist::Timeouts::from_env()?;
    Ok(Comm::nccl(&rdv, t, cuda.cuda_stream())?)
}

/// Without CUDA there is no NCCL to measure.
#[cfg(not(feature = "cuda"))]
pub fn nccl_alone(_dev: &Device) -> anyhow::Result<Comm> {
    anyhow::bail!("--nccl needs a CUDA build (launch/build-cuda.sh)")
}

/// Milliseconds (mean of `reps`, each waited for) to sum one step's worth of gradients through the
/// trainer's own reduction — its buckets, its dtype, the gradients in `dtype` as backward hands them
/// over (the word embeddings' as 2,048 rows) — with nothing else running: the time the step would
/// pay after backward if nothing overlapped.
pub fn reduction_alone(
    trainer: &mut Trainer,
    dtype: DType,
    dev: &Device,
    reps: usize,
) -> anyhow::Result<f64> {
    let (plan, reduce_dtype) = trainer.reduction();
    let grads: Vec<(String, Grad)> = trainer
        .model
        .gradient_order()
        .into_iter()
        .map(|(name, _, rows)| {
            let shape = trainer.model.params.get(&name).map(|v| v.dims().to_vec());
            let dims = shape.ok_or_else(|| anyhow::anyhow!("no parameter {name}"))?;
            let g = if rows {
                let n = 2048.min(dims[0]);
                Grad::Rows {
                    ids: (0..n as u32).collect(),
                    values: Tensor::zeros((n, dims[1]), dtype, dev)?,
                    rows: dims[0],
                }
            } else {
                Grad::Dense(Tensor::zeros(dims, dtype, dev)?)
            };
            Ok((name, g))
        })
        .collect::<anyhow::Result<_>>()?;
    dev.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..reps {
        reduce_gradients_inline(&mut trainer.comm, &plan, reduce_dtype, |h| {
            for (name, g) in &grads {
                h.push(name, g.clone())?;
            }
            Ok::<(), DistError>(())
        })?;
    }
    dev.synchronize()?;
    Ok(1e3 * t0.elapsed().as_secs_f64() / reps as f64)
}
