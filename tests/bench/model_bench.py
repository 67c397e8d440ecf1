"""Benchmark: forward + backward of one training batch (batch 32 x 48 sub-words, MiniLM, dropout on,
2 threads) for nerpos-model and for the PyTorch reference (Hugging Face BertModel + POS head,
tests/reference/model_reference.py), alternating in one run on this machine; prints a Markdown table
with the ratio. Run through tests/bench/model.sh.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
from model_reference import BertNerPos  # noqa: E402
from transformers import BertModel  # noqa: E402


def pytorch_steps(ckpt, batch, seq, iters, threads):
    torch.set_num_threads(threads)
    bert = BertModel.from_pretrained(ckpt)
    model = BertNerPos(bert, 44, bert.config.hidden_size, 17)
    model.train()
    vocab = bert.config.vocab_size
    ids = (torch.arange(batch * seq) * 7919 % (vocab - 1000) + 1000).reshape(batch, seq)
    mask = torch.ones(batch, seq, dtype=torch.long)
    pos = (torch.arange(batch * seq) % 40 + 2).reshape(batch, seq)
    labels = (torch.arange(batch * seq) % 17).reshape(batch, seq)
    labels.view(-1)[::5] = -100
    times = []
    for i in range(iters + 1):
        t0 = time.perf_counter()
        logits = model(ids, mask, pos)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 17), labels.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        model.zero_grad()
        loss.backward()
        if i:
            times.append(time.perf_counter() - t0)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True, help="the fwd_bwd example binary")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    batch, seq = 32, 48
    ours, ref = [], []
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    for _ in range(args.rounds):
        out = subprocess.run([args.ours, args.checkpoint, str(batch), str(seq), str(args.iters), "dropout"],
                             check=True, capture_output=True, text=True, env=env).stdout
        ours.append(json.loads(out.strip().splitlines()[-1])["median_s"])
        ref.append(statistics.median(pytorch_steps(args.checkpoint, batch, seq, args.iters, args.threads)))
    o, r = statistics.median(ours), statistics.median(ref)
    print(f"| forward + backward, MiniLM, batch {batch} x {seq}, dropout on, {args.threads} threads "
          f"| seconds per batch (median of {args.rounds} rounds x {args.iters} steps) |")
    print("|---|---:|")
    print(f"| PyTorch {torch.__version__} (Hugging Face BertModel + POS head) | {r:.3f} |")
    print(f"| nerpos-model (hand-written backward) | {o:.3f} |")
    print(f"| **ratio (PyTorch time / ours)** | **{r / o:.2f}** |")


if __name__ == "__main__":
    main()
