"""PyTorch reference training run for docs/results.md: the same dataset rows (read from the
nerpos-prep Parquet shards), model (Hugging Face BertModel + POS embedding + dropout + linear, from
model_reference.py), optimiser (AdamW, no decay on biases/LayerNorm/embeddings), linear warm-up/decay
schedule, gradient clipping, loss (cross-entropy over first sub-words, mean over the batch's labelled
positions) and evaluation (seqeval micro F1 on the dev split, windows re-assembled into sentences) as
a nerpos-train config. Batch order and dropout masks are PyTorch's own.

  train_reference.py --data DIR --model DIR --train-sentences N --batch-size 32 --epochs 3 --lr 1e-4
                     [--device cuda] [--precision bf16]   (GPU: launch/gpu-check.sh's `train` step)
"""

import argparse
import json
import math
import os
import sys
import time

import pyarrow.parquet as pq
import torch
from seqeval.metrics import f1_score
from transformers import BertModel, get_linear_schedule_with_warmup

sys.path.insert(0, os.path.dirname(__file__))
from model_reference import BertNerPos  # noqa: E402


def read_split(data, manifest, split):
    rows = []
    for shard in manifest["splits"][split]["shards"]:
        t = pq.read_table(os.path.join(data, shard["file"]),
                          columns=["sentence_index", "window", "input_ids", "labels", "pos_ids", "word_ids",
                                   "label_start", "label_end"]).to_pylist()
        rows.extend(t)
    return rows


def pad(batch, pad_id):
    n = max(len(r["input_ids"]) for r in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    pos = torch.zeros((len(batch), n), dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    for i, r in enumerate(batch):
        k = len(r["input_ids"])
        ids[i, :k] = torch.tensor(r["input_ids"])
        mask[i, :k] = 1
        pos[i, :k] = torch.tensor(r["pos_ids"])
        labels[i, :k] = torch.tensor(r["labels"])
    return ids, mask, pos, labels


def length_grouped_indices(lengths, batch_size, generator, mega=50):
    """Hugging Face Trainer's `group_by_length` order (trainer_pt_utils.get_length_grouped_indices):
    a random permutation cut into megabatches of 50 batches, each sorted by length (longest first), the
    megabatch holding the longest row moved to the front; batches are consecutive slices of it."""
    indices = torch.randperm(len(lengths), generator=generator).tolist()
    size = mega * batch_size
    megabatches = [sorted(indices[i:i + size], key=lambda j: lengths[j], reverse=True)
                   for i in range(0, len(indices), size)]
    longest = max(range(len(megabatches)), key=lambda k: lengths[megabatches[k][0]])
    megabatches[0][0], megabatches[longest][0] = megabatches[longest][0], megabatches[0][0]
    return [i for mb in megabatches for i in mb]


def evaluate(model, rows, labels, pad_id, device, batch_size=64, sort=False):
    """seqeval micro F1 of `rows`; `sort` batches rows of similar length together (what a careful user
    does for inference: less padding)."""
    model.eval()
    gold, pred = {}, {}
    if sort:
        rows = sorted(rows, key=lambda r: len(r["input_ids"]))
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = rows[i:i + batch_size]
            ids, mask, pos, _ = pad(batch, pad_id)
            logits = model(ids.to(device), mask.to(device), pos.to(device))
            best = logits.argmax(-1).cpu()
            for b, r in enumerate(batch):
                words = r["word_ids"]
                for p, w in enumerate(words):
                    first = p == 0 or words[p - 1] != w
                    if w < 0 or not first or not (r["label_start"] <= w < r["label_end"]):
                        continue
                    key = (r["sentence_index"], w)
                    gold[key] = labels[r["labels"][p]]
                    pred[key] = labels[int(best[b, p])]
    sentences = {}
    for (s, w) in sorted(gold):
        sentences.setdefault(s, []).append((gold[(s, w)], pred[(s, w)]))
    y_true = [[g for g, _ in v] for v in sentences.values()]
    y_pred = [[p for _, p in v] for v in sentences.values()]
    model.train()
    return f1_score(y_true, y_pred)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--train-sentences", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=0, help="stop after N steps (timing runs)")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--group-by-length", action="store_true",
                    help="Hugging Face Trainer's group_by_length batch order (LengthGroupedSampler)")
    ap.add_argument("--eval-speed", action="store_true",
                    help="only time evaluation (forward, no_grad, length-sorted batches of 64) on the dev split")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--precision", default="f32", choices=["f32", "tf32", "bf16"],
                    help="bf16: autocast (weights, optimiser and loss in f32), as nerpos-train's bf16")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    cuda = device.type == "cuda"
    if cuda:
        # PyTorch's default bf16 attention on Hopper (cuDNN SDPA) plans anew for every sequence length:
        # 130-320 ms a step on variable-length batches (docs/gpu.md). Flash / memory-efficient instead.
        torch.backends.cuda.enable_cudnn_sdp(False)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    manifest = json.load(open(os.path.join(args.data, "manifest.json")))
    labels = manifest["labels"]
    pad_id = manifest["tokenizer"]["pad_token_id"]
    train = read_split(args.data, manifest, "train")
    if args.train_sentences:
        keep = sorted({r["sentence_index"] for r in train})[:args.train_sentences]
        last = keep[-1]
        train = [r for r in train if r["sentence_index"] <= last]
    dev = read_split(args.data, manifest, "dev")

    # .float(): a checkpoint stored in f16/bf16 is trained from f32 master weights, as nerpos-train does.
    bert = BertModel.from_pretrained(args.model).float()
    model = BertNerPos(bert, len(manifest["pos"]), bert.config.hidden_size, len(labels), args.dropout).to(device)
    no_decay = lambda n: n.endswith(".bias") or "LayerNorm" in n or "embeddings" in n or n.startswith("pos_embedding")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not no_decay(n)], "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if no_decay(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=args.lr)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = steps_per_epoch * args.epochs
    sched = get_linear_schedule_with_warmup(opt, math.ceil(args.warmup_ratio * total), total)
    if args.eval_speed:
        for _ in range(2):  # warm-up: the thread pool and the allocator
            evaluate(model, dev[:128], labels, pad_id, device, sort=True)
        t0 = time.perf_counter()
        f1 = evaluate(model, dev, labels, pad_id, device, sort=True)
        secs = time.perf_counter() - t0
        sentences = len({r["sentence_index"] for r in dev})
        print(json.dumps({"eval_sentences": sentences, "eval_seconds": round(secs, 3),
                          "eval_sentences_per_s": sentences / secs, "dev_f1": f1}))
        return
    model.train()
    started = time.time()
    history = []
    g = torch.Generator().manual_seed(args.seed)
    done, timed_rows, timed_tokens, timed_seconds = 0, 0, 0, 0.0
    for epoch in range(args.epochs):
        if args.group_by_length:
            order = length_grouped_indices([len(r["input_ids"]) for r in train], args.batch_size, g)
        else:
            order = torch.randperm(len(train), generator=g).tolist()
        for s in range(steps_per_epoch):
            if args.max_steps and done >= args.max_steps:
                break
            t0 = time.perf_counter()
            batch = [train[i] for i in order[s * args.batch_size:(s + 1) * args.batch_size]]
            ids, mask, pos, lab = (t.to(device, non_blocking=True) for t in pad(batch, pad_id))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                logits = model(ids, mask, pos)
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, len(labels)), lab.reshape(-1),
                                                     ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if cuda:
                torch.cuda.synchronize()  # the step's time, not its launch's
            done += 1
            if done > 5:  # after warm-up of the allocator and the thread pool
                timed_rows += len(batch)
                timed_tokens += int(mask.sum())
                timed_seconds += time.perf_counter() - t0
        if args.no_eval:
            continue
        f1 = evaluate(model, dev, labels, pad_id, device)
        history.append(f1)
        # Progress on stderr: stdout holds one JSON result line.
        print(json.dumps({"epoch": epoch + 1, "dev_f1": f1, "seconds": round(time.time() - started, 1)}),
              file=sys.stderr, flush=True)
    print(json.dumps({"best_dev_f1": max(history) if history else None, "train_rows": len(train),
                      "steps": done, "seconds": round(time.time() - started, 1),
                      "train_step_seconds": round(timed_seconds, 2), "device": args.device,
                      "precision": args.precision,
                      "sentences_per_s": timed_rows / timed_seconds if timed_seconds else None,
                      "tokens_per_s": timed_tokens / timed_seconds if timed_seconds else None}))


if __name__ == "__main__":
    main()
