//! Times forward + backward of BertNerPos on a random batch: `fwd_bwd CHECKPOINT_DIR [BATCH] [SEQ] [ITERS]`.
//! Prints one JSON line (median seconds per step). Used by tests/bench/model.sh.

use std::time::Instant;

use candle_core::Device;
use nerpos_model::{BertNerPos, HeadConfig, HeadInit, PackedBatch};

fn main() -> anyhow::Result<()> {
    nerpos_model::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let batch: usize = args.get(2).map_or(Ok(32), |s| s.parse())?;
    let seq: usize = args.get(3).map_or(Ok(48), |s| s.parse())?;
    let iters: usize = args.get(4).map_or(Ok(5), |s| s.parse())?;
    let dropout = args.iter().any(|s| s == "dropout");
    let dev = Device::Cpu;
    let head = HeadConfig {
        num_labels: 17,
        num_pos: 44,
        pos_dim: 384,
        use_pos: true,
        dropout: 0.2,
        kind: nerpos_model::HeadKind::Softmax,
        labels: Vec::new(),
        pos_tagger: None,
        pos_from_tagger: false,
        pos_tagger_layer: None,
        tagger_pos_share: 0.0,
    };
    let (model, _) = BertNerPos::from_pretrained(&dir, head, None, (HeadInit::default(), 1), &dev)?;
    let vocab = model.config.bert.vocab_size as u32;
    let ids: Vec<u32> = (0..batch * seq)
        .map(|i| (i as u32 * 7919) % (vocab - 1000) + 1000)
        .collect();
    let pos: Vec<u32> = (0..batch * seq).map(|i| (i % 40 + 2) as u32).collect();
    // Every row full (seq tokens): the same work as PyTorch's batch, which has no padding either.
    let mut packed = PackedBatch::new();
    for b in 0..batch {
        let span = b * seq..(b + 1) * seq;
        let labelled = span
            .clone()
            .enumerate()
            .filter(|(_, i)| i % 5 != 0)
            .map(|(p, i)| (p, Some((i % 17) as u32)));
        packed.push_row(b as u64, &ids[span.clone()], &pos[span], labelled);
    }
    let (inputs, targets) = packed.to_device(&dev)?;
    let targets = targets.expect("labelled rows");
    let mut times = Vec::new();
    for i in 0..iters + 1 {
        let t0 = Instant::now();
        let noise = nerpos_model::Noise {
            seed: 1,
            step: i as u64,
        };
        let out = model.forward_backward(&inputs, &targets, dropout.then_some(noise))?;
        std::hint::black_box(out);
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"median_s\": {}, \"min_s\": {}, \"batch\": {batch}, \"seq\": {seq}}}",
        times[times.len() / 2],
        times[0],
    );
    Ok(())
}
