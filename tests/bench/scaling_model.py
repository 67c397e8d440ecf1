"""Step-time model of data-parallel training with gradients reduced while backward runs:

    T(W) = compute + exposed all-reduce + exposed data wait

Prints the tables of docs/scaling.md. Every input is a named constant below, with where it comes from:
measured here (tests/bench/train.sh, tests/bench/dist.sh), measured on one H200 (docs/gpu.md), published
(nccl-tests figures), or an assumption stated as such. Change an input, rerun, paste.

The overlap term. nerpos-train's backward hands out gradients from the head down; they are cut into
buckets of `bucket_mb` in that order and each complete bucket is all-reduced while the layers below are
still being differentiated (crates/nerpos-train/src/reduce.rs). The model simulates exactly that: the
backward pass (2/3 of the compute) produces gradients at a rate proportional to each layer's share of
the parameters; bucket k is ready when its last gradient is; the communication channel reduces buckets
one after another in order, each taking the bus-bandwidth time of its bytes plus latency; the step
waits only for what is left when backward ends (the *exposed* all-reduce). The word-embedding gradient
is reduced as the rows the step used (a few thousand rows instead of the whole vocabulary).
"""

import math

# ---- Models: parameters as in their checkpoints, without the pooler; the word-embedding table
# (vocab x hidden) is reduced as rows.
MODELS = {
    # name: (params, vocab, hidden, layers)
    "MiniLM-L6 (22.6 M)": (22_565_888, 30_522, 384, 6),
    "BERT-base-cased (107.7 M)": (107_719_680, 28_996, 768, 12),
}
HEAD_PARAMS = 50 * 768 + 17 * 1536  # POS embedding + classifier, negligible
BUCKET_MB = 4  # bucket_mb (the default)
DISTINCT_TOKENS_PER_ROW = 20  # distinct sub-words a GMB sentence contributes to a step (~27 sub-words)

# ---- Compute per optimizer step, measured (docs/gpu.md, one H200, length-grouped batches, our engine:
# step ms = tokens per step / tokens per second). Backward is 2/3 of it.
GPU_STEP_S = {
    ("MiniLM-L6 (22.6 M)", 32, "f32"): 14.0e-3,
    ("MiniLM-L6 (22.6 M)", 32, "bf16"): 24.9e-3,
    ("MiniLM-L6 (22.6 M)", 128, "bf16"): 30.3e-3,
    ("BERT-base-cased (107.7 M)", 32, "f32"): 39.7e-3,
    ("BERT-base-cased (107.7 M)", 32, "bf16"): 44.1e-3,
    ("BERT-base-cased (107.7 M)", 128, "bf16"): 72.6e-3,
}
BACKWARD_SHARE = 2 / 3

# ---- Compute at the GPU target instead (what a faster engine leaves to hide behind): PyTorch's
# measured bf16 steps on the same batches (docs/gpu.md), and 40 % of the H200's 989 TFLOP/s bf16 peak
# for BERT-base at 128 sentences (6 x 85 M non-embedding params x 128 x 27 sub-words).
FAST_STEP_S = {
    ("MiniLM-L6 (22.6 M)", 128, "bf16"): 28.3e-3,  # PyTorch, docs/gpu.md
    ("BERT-base-cased (107.7 M)", 128, "bf16"): 6 * 85.05e6 * 128 * 27 / (0.40 * 989e12),  # 4.5 ms
}

# ---- Collectives. NCCL ring all-reduce bus bandwidth for large messages (published nccl-tests
# results, DGX H100): 8 GPUs over NVLink4/NVSwitch ~ 450 GB/s; across nodes with one 400 Gb/s NDR
# InfiniBand NIC per GPU ~ 45 GB/s per GPU. Per-step latency alpha: 10 us intra-node, 20 us inter-node;
# NCCL switches to trees at scale, so the latency term grows with log2(nodes), not with W.
BUSBW_INTRA = 450e9
BUSBW_INTER = 45e9
ALPHA_INTRA = 10e-6
ALPHA_INTER = 20e-6
GPUS_PER_NODE = 8

# ---- CPU, measured here (tests/bench/train.sh, 2 cores, MiniLM on GMB, 32 sentences a step):
# 1 x 32 step and the 2 x 16 run's total and exposed all-reduce time per step (see docs/benchmarks.md).
CPU_STEP_1x32_S = 0.365
CPU_STEP_2x16_S = 0.383
CPU_2x16_ALLREDUCE_TOTAL_S = 0.157 * 0.383
CPU_2x16_ALLREDUCE_EXPOSED_S = 0.007 * 0.383


def allreduce_s(nbytes, world):
    """One all-reduce of `nbytes` over `world` GPUs (ring in a node, ring + tree across nodes)."""
    if world == 1:
        return 0.0
    nodes = math.ceil(world / GPUS_PER_NODE)
    if nodes == 1:
        busbw, latency = BUSBW_INTRA, 2 * (world - 1) * ALPHA_INTRA
    else:
        busbw, latency = BUSBW_INTER, 2 * (GPUS_PER_NODE - 1) * ALPHA_INTRA + 2 * math.log2(nodes) * ALPHA_INTER
    return 2 * (world - 1) / world * nbytes / busbw + latency


def buckets(model, batch, elem_bytes, bucket_mb):
    """(bytes, share of backward done when ready) of each bucket, in backward order."""
    params, vocab, hidden, layers = MODELS[model]
    per_layer = (params - vocab * hidden - 514 * hidden) / layers  # encoder layers (embeddings aside)
    grads = [(HEAD_PARAMS, 0.0)]
    for i in range(layers):
        grads.append((per_layer, (i + 1) / layers))
    rows = min(vocab, batch * DISTINCT_TOKENS_PER_ROW)
    grads.append((rows * hidden + 514 * hidden, 1.0))  # word-embedding rows + the small tables
    out, size, ready = [], 0.0, 0.0
    for n, done in grads:
        size += n * elem_bytes
        ready = done
        if size >= bucket_mb * 1e6:
            out.append((size, ready))
            size = 0.0
    if size:
        out.append((size, 1.0))
    return out


def step(model, batch, precision, world, overlap=True, bucket_mb=BUCKET_MB, steps=None, accum=1):
    """(step seconds, exposed all-reduce seconds) at `world` GPUs; with `accum` micro-batches per step,
    gradients are reduced during the last micro-batch's backward only."""
    compute = (steps or GPU_STEP_S)[(model, batch, precision)]
    elem = 2 if precision == "bf16" else 4
    backward = BACKWARD_SHARE * compute
    forward = compute - backward + (accum - 1) * compute
    channel = 0.0  # when the communication channel is free, from the start of backward
    for size, ready in buckets(model, batch, elem, bucket_mb):
        start = max(channel, ready * backward if overlap else backward)
        channel = start + allreduce_s(size, world)
    exposed = max(0.0, channel - backward)
    return forward + backward + exposed, exposed


def table(batch, precision, title, **kw):
    print(f"\n{title}\n")
    worlds = [1, 2, 8, 64, 512]
    print("| model | " + " | ".join(f"W={w}" for w in worlds) + " |")
    print("|---|" + "---:|" * len(worlds))
    for name in MODELS:
        if (name, batch, precision) not in kw.get("steps", GPU_STEP_S):
            continue
        base, _ = step(name, batch, precision, 1, **kw)
        cells = []
        for w in worlds:
            t, _ = step(name, batch, precision, w, **kw)
            cells.append(f"{t * 1e3:.1f} ms / {base / t:.0%}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main():
    print("Step time T(W) and weak-scaling efficiency T(1)/T(W) at constant per-GPU batch.")
    print("\n### With our measured H200 step times (docs/gpu.md)")
    table(32, "f32", "f32 gradients, per-GPU batch 32, overlapped, 4 MB buckets:")
    table(32, "bf16", "bf16 gradients, per-GPU batch 32, overlapped, 4 MB buckets:")
    table(128, "bf16", "bf16 gradients, per-GPU batch 128, overlapped, 4 MB buckets:")
    table(128, "bf16", "bf16 gradients, per-GPU batch 128, overlapped, 25 MB buckets:", bucket_mb=25)
    table(128, "bf16", "bf16 gradients, per-GPU batch 128, reduced after backward (no overlap, 25 MB "
          "buckets):", overlap=False, bucket_mb=25)
    print("\n### With the compute of a faster engine (PyTorch's MiniLM step; BERT-base at 40 % MFU)")
    table(128, "bf16", "bf16 gradients, per-GPU batch 128, overlapped, 25 MB buckets:", steps=FAST_STEP_S,
          bucket_mb=25)
    table(128, "bf16", "bf16 gradients, per-GPU batch 128, overlapped, 4 MB buckets:", steps=FAST_STEP_S,
          bucket_mb=4)
    table(128, "bf16", "bf16 gradients, per-GPU batch 128, no overlap, 25 MB buckets:", steps=FAST_STEP_S,
          overlap=False, bucket_mb=25)
    table(128, "bf16", "bf16 gradients, per-GPU batch 128 x 4 accumulated micro-batches, overlapped, "
          "25 MB buckets (times per optimizer step):", steps=FAST_STEP_S, accum=4, bucket_mb=25)
    print("\nExposed all-reduce at 64 GPUs (8 nodes), bf16, per-GPU batch 128:\n")
    for label, steps in [("measured compute", GPU_STEP_S), ("faster engine", FAST_STEP_S)]:
        for name in MODELS:
            for mb in [25, 4]:
                t, exposed = step(name, 128, "bf16", 64, steps=steps, bucket_mb=mb)
                _, no = step(name, 128, "bf16", 64, steps=steps, overlap=False, bucket_mb=25)
                print(f"- {label}, {name}, {mb} MB buckets: {exposed * 1e3:.2f} ms of a "
                      f"{t * 1e3:.1f} ms step ({no * 1e3:.2f} ms without overlap)")
    print(f"\nCPU, 2 processes x 16, MiniLM (measured): all-reduce "
          f"{CPU_2x16_ALLREDUCE_TOTAL_S * 1e3:.0f} ms a step in all, "
          f"{CPU_2x16_ALLREDUCE_EXPOSED_S * 1e3:.1f} ms exposed; the step {CPU_STEP_2x16_S * 1e3:.0f} ms "
          f"against {CPU_STEP_1x32_S * 1e3:.0f} ms for 1 x 32 (the reduction's copies and sums take CPU "
          f"time from backward on 2 cores).")
    train_sentences = 38_367
    print("\nSteps per epoch on the GMB training split (38,367 sentences), per-GPU batch 32:")
    print("| W | global batch | steps/epoch |")
    print("|---:|---:|---:|")
    for w in [1, 2, 8, 64, 512]:
        print(f"| {w} | {32 * w:,} | {math.ceil(train_sentences / (32 * w)):,} |")


if __name__ == "__main__":
    main()
