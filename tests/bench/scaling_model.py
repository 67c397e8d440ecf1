"""Step-time model of data-parallel training: T(W) = compute + exposed all-reduce + exposed data wait.

Prints the tables of docs/scaling.md. Every input is a named constant below, with where it comes from:
measured here (tests/bench/dist.sh and the model benchmarks), or published (nccl-tests figures), or an
assumption stated as such. Change an input, rerun, paste.

Why the all-reduce is fully exposed: candle computes all gradients in one backward call and returns
them together, so there is no per-parameter hook to start reducing early layers while later ones are
still being differentiated (PyTorch DDP's overlap). Buckets still pipeline their own launches on
NCCL's stream, so the exposed time is one all-reduce of the whole gradient set.
"""

import math

# ---- Models: parameters as counted in their checkpoints, without the pooler (the tagger does not use
# it, so it has no gradient); FLOPs per token = 6 x non-embedding params for forward + backward, plus
# attention's 12 * layers * hidden * seq.
MODELS = {
    # name: (params, non-embedding params, layers, hidden)
    "MiniLM-L6 (22.6 M)": (22_565_888, 10_646_784, 6, 384),
    "BERT-base-cased (107.7 M)": (107_719_680, 85_054_464, 12, 768),
}
HEAD_PARAMS = 50 * 768 + 17 * 1536  # POS embedding + classifier, negligible

# ---- Workload: GMB sentences, length-grouped batches (mean 26.5 sub-words; batches padded to their
# longest row, ~32 on average with grouping).
SEQ = 32
BATCH = 32  # per GPU

# ---- GPU compute (assumptions until docs/gpu.md has measurements): H100 SXM bf16 dense peak
# 989 TFLOP/s at 40 % model-FLOPs utilisation, but never faster than the kernel-launch floor of
# ~25 launches per layer forward+backward at ~6 us each plus ~1 ms of optimizer and framework time.
PEAK_FLOPS = 989e12
MFU = 0.40
LAUNCH_S = 6e-6
KERNELS_PER_LAYER = 25
FIXED_S = 1e-3

# ---- Collectives. NCCL ring all-reduce bus bandwidth for large messages (published nccl-tests
# results, DGX H100): 8 GPUs over NVLink4/NVSwitch ~ 450 GB/s; across nodes with one 400 Gb/s NDR
# InfiniBand NIC per GPU ~ 45 GB/s per GPU. Per-step latency alpha: 10 us intra-node, 20 us inter-node;
# NCCL switches to trees at scale, so the latency term grows with log2(nodes), not with W.
BUSBW_INTRA = 450e9
BUSBW_INTER = 45e9
ALPHA_INTRA = 10e-6
ALPHA_INTER = 20e-6
GPUS_PER_NODE = 8

# ---- CPU (measured here: tests/bench/dist.sh, 2 processes on 2 cores, loopback): the MiniLM gradient
# set (90.4 MB f32) all-reduces in 50.5 ms; one MiniLM training step at batch 32 takes ~1.0 s on
# 2 cores (forward 0.33 s measured with candle in the model issue's known facts; backward ~2x).
CPU_MINILM_ALLREDUCE_S = 0.0505
CPU_MINILM_STEP_S = 1.0


def compute_s(params_nonemb, layers, hidden, batch):
    tokens = batch * SEQ
    flops = tokens * (6 * params_nonemb + 12 * layers * hidden * SEQ)
    return max(flops / (PEAK_FLOPS * MFU), layers * KERNELS_PER_LAYER * LAUNCH_S) + FIXED_S


def allreduce_s(nbytes, world):
    if world == 1:
        return 0.0
    nodes = math.ceil(world / GPUS_PER_NODE)
    if nodes == 1:
        busbw, latency = BUSBW_INTRA, 2 * (world - 1) * ALPHA_INTRA
    else:
        busbw, latency = BUSBW_INTER, 2 * (GPUS_PER_NODE - 1) * ALPHA_INTRA + 2 * math.log2(nodes) * ALPHA_INTER
    return 2 * (world - 1) / world * nbytes / busbw + latency


def table(grad_bytes_per_param, batch, title, accumulate=1):
    print(f"\n{title}\n")
    worlds = [1, 2, 8, 64, 512]
    print("| model | " + " | ".join(f"W={w}" for w in worlds) + " |")
    print("|---|" + "---:|" * len(worlds))
    for name, (p, pne, layers, hidden) in MODELS.items():
        c = accumulate * compute_s(pne, layers, hidden, batch)
        cells = []
        for w in worlds:
            a = allreduce_s((p + HEAD_PARAMS) * grad_bytes_per_param, w)
            cells.append(f"{(c + a) * 1e3:.1f} ms / {c / (c + a):.0%}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main():
    print("Step time T(W) and scaling efficiency T(1)/T(W) at constant per-GPU batch (weak scaling).")
    table(4, BATCH, f"f32 gradients, per-GPU batch {BATCH} x {SEQ} sub-words:")
    table(2, BATCH, f"bf16 gradients, per-GPU batch {BATCH} x {SEQ} sub-words:")
    table(2, 128, f"bf16 gradients, per-GPU batch 128 x {SEQ} sub-words:")
    table(2, 32, f"bf16 gradients, per-GPU batch 32, 4 micro-batches accumulated per all-reduce "
                 f"(times per optimizer step):", accumulate=4)
    print("\nCompute per step (model of the GPU, per-GPU batch 32 / 128):\n")
    for name, (p, pne, layers, hidden) in MODELS.items():
        print(f"- {name}: {compute_s(pne, layers, hidden, 32) * 1e3:.1f} ms / "
              f"{compute_s(pne, layers, hidden, 128) * 1e3:.1f} ms")
    eff = CPU_MINILM_STEP_S / (CPU_MINILM_STEP_S + CPU_MINILM_ALLREDUCE_S)
    print(f"\nCPU, 2 processes, MiniLM (measured inputs): {CPU_MINILM_STEP_S * 1e3:.0f} ms compute + "
          f"{CPU_MINILM_ALLREDUCE_S * 1e3:.1f} ms all-reduce -> efficiency {eff:.0%}.")
    train_sentences = 38_367
    print("\nSteps per epoch on the GMB training split (38,367 sentences), per-GPU batch 32:")
    print("| W | global batch | steps/epoch |")
    print("|---:|---:|---:|")
    for w in [1, 2, 8, 64, 512]:
        print(f"| {w} | {32 * w:,} | {math.ceil(train_sentences / (32 * w)):,} |")


if __name__ == "__main__":
    main()
