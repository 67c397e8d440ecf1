#!/usr/bin/env python3
"""The PyTorch reference of the GPU suite (launch/gpu-check.sh): Hugging Face BertModel + POS embedding +
dropout + linear head, trained on exactly the batches nerpos-gpu-bench dumped (JSON lines), with
torch.optim.AdamW (fused), global-norm clipping at 1.0, the linear warm-up/decay schedule, and bf16 autocast
(AMP) / f32 / TF32 as asked. Randomly initialised models of MiniLM's or BERT-base's shape, as ours.
Prints one JSON object with the same keys as nerpos-gpu-bench speed.

usage: gpu_torch.py --batches FILE --shape minilm|base --runs f32,tf32,bf16,bf16:128,bf16::cudnn --warmup N
(each run: a precision, optionally ':L' to pad every batch to length L, optionally ':cudnn' to let
PyTorch use cuDNN attention; one process for all of them saves the import and CUDA start-up of each)
"""
import argparse
import json
import time

import torch
from transformers import BertConfig, BertModel

SHAPES = {"minilm": (384, 6, 1536), "base": (768, 12, 3072)}


class BertPos(torch.nn.Module):
    def __init__(self, cfg, num_pos, num_labels):
        super().__init__()
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.pos = torch.nn.Embedding(num_pos, cfg.hidden_size)
        self.drop = torch.nn.Dropout(0.2)
        self.classifier = torch.nn.Linear(2 * cfg.hidden_size, num_labels)

    def forward(self, ids, mask, pos):
        h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.classifier(self.drop(torch.cat([h, self.pos(pos)], -1)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", required=True)
    ap.add_argument("--shape", choices=SHAPES, required=True)
    ap.add_argument("--runs", default="f32,tf32,bf16,bf16:128")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu (to check this script without a GPU)")
    a = ap.parse_args()
    batches = [json.loads(line) for line in open(a.batches)]
    for run in a.runs.split(","):
        parts = run.split(":")
        precision, pad_to = parts[0], int(parts[1]) if len(parts) > 1 and parts[1] else 0
        try:
            bench(a, batches, precision, pad_to, "cudnn" in parts[2:])
        except Exception as e:  # one failing run must not hide the others
            print(json.dumps({"check": "failed", "step": f"pytorch {a.shape} {run}", "exit": 1, "tail": repr(e)}), flush=True)
        if a.device == "cuda":
            torch.cuda.empty_cache()


def bench(a, batches, precision, pad_to, cudnn_attention):
    assert precision in ("f32", "tf32", "bf16"), precision
    # PyTorch picks cuDNN's fused attention for bf16 on Hopper, which builds an execution plan for
    # every new sequence length (~0.2 s each): with length-varying batches that dominates a step.
    # Flash/memory-efficient attention have no such cost; they are the reference unless the run asks
    # for cuDNN (":cudnn"), kept to show the difference.
    if a.device == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(cudnn_attention)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    cuda = a.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    h, layers, inter = SHAPES[a.shape]
    cfg = BertConfig(vocab_size=30522, hidden_size=h, num_hidden_layers=layers, num_attention_heads=12,
                     intermediate_size=inter, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = BertPos(cfg, batches[0]["num_pos"], batches[0]["num_labels"]).to(dev)
    model.train()
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n or "embeddings" in n or n.startswith("pos")]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n or "embeddings" in n or n.startswith("pos"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, fused=cuda)
    total = len(batches)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / max(1, total // 10) if s < total // 10 else max(0.0, (total - s) / max(1, total - total // 10)))

    def tensors(b):
        rows, length = b["rows"], b["len"]
        t = lambda k, dt: torch.tensor(b[k], dtype=dt).view(rows, length)
        ids, mask, pos, lab = t("input_ids", torch.long), t("attention_mask", torch.long), t("pos_ids", torch.long), t("labels", torch.long)
        if pad_to > length:
            pad = pad_to - length
            ids = torch.nn.functional.pad(ids, (0, pad), value=0)
            mask = torch.nn.functional.pad(mask, (0, pad), value=0)
            pos = torch.nn.functional.pad(pos, (0, pad), value=0)
            lab = torch.nn.functional.pad(lab, (0, pad), value=-100)
        return [x.to(dev, non_blocking=True) for x in (ids, mask, pos, lab)]

    def step(b):
        ids, mask, pos, lab = tensors(b)
        with torch.autocast(a.device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(ids, mask, pos)
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), lab.view(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        return loss.detach()

    for b in batches[: a.warmup]:
        step(b)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for b in batches[a.warmup:]:
        loss = step(b)
    sync()
    secs = time.perf_counter() - t0
    timed = batches[a.warmup:]
    length = lambda b: max(b["len"], pad_to)
    result = {
        "check": "speed", "impl": "pytorch", "shape": a.shape, "batch": timed[0]["rows"], "precision": precision,
        "pad_to": pad_to, "cudnn_attention": cudnn_attention, "steps": len(timed), "seconds": secs, "step_ms": 1e3 * secs / len(timed),
        "tokens_per_s": sum(sum(b["attention_mask"]) for b in timed) / secs,
        "padded_tokens_per_s": sum(b["rows"] * length(b) for b in timed) / secs,
        "sentences_per_s": sum(b["rows"] for b in timed) / secs,
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None, "final_loss": loss.item(),
        "torch": torch.__version__, "attention": model.bert.config._attn_implementation,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
