#!/usr/bin/env python3
"""The PyTorch reference of the GPU suite (launch/gpu-check.sh): Hugging Face BertModel + POS embedding +
dropout + linear head, with torch.optim.AdamW (fused), global-norm clipping at 1.0, the linear
warm-up/decay schedule, and bf16 autocast (AMP) / f32 / TF32 as asked, SDPA attention (flash or
memory-efficient). Randomly initialised models of MiniLM's or BERT-base's shape, as ours. Prints one
JSON object per run with the same keys as nerpos-gpu-bench speed; every rate is per real token.

The batches are the sentences nerpos-gpu-bench dumped (JSON lines). Each run takes them
  - as dumped (`bf16`): our plan's batches, each padded to its longest row — for BERT-base that plan
    is random token-budget batches, ~2.5x padding: the second row, not the one to beat;
  - length-grouped (`bf16:grouped`): the same sentences regrouped as Hugging Face's Trainer does with
    group_by_length (LengthGroupedSampler: a seeded permutation cut into megabatches of 50 batches,
    each sorted longest first), cut into batches of the same real tokens as ours and padded to each
    batch's longest row — PyTorch at its best without extra packages;
  - `...:compile`: the model under torch.compile (dynamic shapes; compilation in the warm-up steps);
  - `...:flat`: padding-free (one row of concatenated sentences, position ids restarting at each,
    flash-attention varlen), where this transformers/flash-attn support it for BERT; else a
    `skipped` line says why;
  - `...:cudnn`: lets PyTorch use cuDNN attention (plans per length; kept to show the cost);
  - `...:L` (a number): every batch padded to length L.

usage: gpu_torch.py --batches FILE --shape minilm|base --runs bf16,bf16:grouped,bf16:grouped:compile --warmup N
(one process for all runs saves the import and CUDA start-up of each)
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

    def forward(self, ids, mask, pos, position_ids=None):
        h = self.bert(input_ids=ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
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
        precision, mods = parts[0], set(parts[1:])
        pad_to = next((int(m) for m in mods if m.isdigit()), 0)
        variant = Variant(grouped="grouped" in mods, compiled="compile" in mods, flat="flat" in mods,
                          cudnn="cudnn" in mods, pad_to=pad_to)
        try:
            bench(a, regroup(batches) if variant.grouped else batches, precision, variant)
        except Unsupported as e:
            print(json.dumps({"check": "skipped", "step": f"pytorch {a.shape} {run}", "why": f"{run}: {e}"}), flush=True)
        except Exception as e:  # one failing run must not hide the others
            print(json.dumps({"check": "failed", "step": f"pytorch {a.shape} {run}", "exit": 1, "seconds": 0,
                              "error": f"{run}: {e!r}"}), flush=True)
        if a.device == "cuda":
            torch.cuda.empty_cache()


class Unsupported(Exception):
    """A variant this PyTorch / transformers cannot run."""


class Variant:
    def __init__(self, grouped, compiled, flat, cudnn, pad_to):
        self.grouped, self.compiled, self.flat, self.cudnn, self.pad_to = grouped, compiled, flat, cudnn, pad_to

    def name(self):
        parts = ["length-grouped (HF)" if self.grouped else "our batches"]
        parts += ["padding-free"] if self.flat else [f"padded to {self.pad_to}" if self.pad_to else "padded"]
        parts += ["torch.compile"] if self.compiled else []
        parts += ["cuDNN attention"] if self.cudnn else []
        return ", ".join(parts)


KEYS = ("input_ids", "attention_mask", "pos_ids", "labels")


def sentences(batches):
    """Every row of the dumped batches without its padding."""
    out = []
    for b in batches:
        n = b["len"]
        for r in range(b["rows"]):
            real = sum(b["attention_mask"][r * n:(r + 1) * n])
            out.append({k: b[k][r * n:r * n + real] for k in KEYS})
    return out


def padded(rows, like):
    """A batch of `rows` padded to the longest, in the dump's format."""
    n = max(len(r["input_ids"]) for r in rows)
    fill = {"input_ids": 0, "attention_mask": 0, "pos_ids": 0, "labels": -100}
    b = {k: [x for r in rows for x in r[k] + [fill[k]] * (n - len(r[k]))] for k in KEYS}
    b.update(rows=len(rows), len=n, num_pos=like["num_pos"], num_labels=like["num_labels"])
    return b


def regroup(batches, seed=0, mega=50):
    """Hugging Face's length grouping of the dumped sentences, cut into batches of our real tokens."""
    rows = sentences(batches)
    target = sum(sum(b["attention_mask"]) for b in batches) / len(batches)
    per_batch = max(1, round(len(rows) / len(batches)))
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    order = []
    for i in range(0, len(perm), mega * per_batch):
        order += sorted(perm[i:i + mega * per_batch], key=lambda k: -len(rows[k]["input_ids"]))
    out, cur, tokens = [], [], 0
    for k in order:
        cur.append(rows[k])
        tokens += len(rows[k]["input_ids"])
        if tokens >= target:
            out.append(padded(cur, batches[0]))
            cur, tokens = [], 0
    if cur:
        out.append(padded(cur, batches[0]))
    return out


def bench(a, batches, precision, v):
    assert precision in ("f32", "tf32", "bf16"), precision
    pad_to, cudnn_attention = v.pad_to, v.cudnn
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
    if v.flat:
        # Padding-free batches need attention over concatenated sentences: flash-attention's varlen
        # path, which transformers takes when position ids restart inside a row.
        cfg._attn_implementation = "flash_attention_2"
        try:
            model = BertPos(cfg, batches[0]["num_pos"], batches[0]["num_labels"]).to(dev)
        except Exception as e:
            raise Unsupported(f"padding-free BERT needs flash_attention_2, not available here: {e}") from None
    else:
        model = BertPos(cfg, batches[0]["num_pos"], batches[0]["num_labels"]).to(dev)
    model.train()
    run_model = torch.compile(model, dynamic=True) if v.compiled else model
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n or "embeddings" in n or n.startswith("pos")]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n or "embeddings" in n or n.startswith("pos"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, fused=cuda)
    total = len(batches)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / max(1, total // 10) if s < total // 10 else max(0.0, (total - s) / max(1, total - total // 10)))

    def flat(b):
        """The batch's sentences as one row without padding, position ids restarting at each."""
        rows = sentences([b])
        cat = lambda k: torch.tensor([x for r in rows for x in r[k]], dtype=torch.long).view(1, -1)
        position = torch.tensor([p for r in rows for p in range(len(r["input_ids"]))]).view(1, -1)
        ids, pos, lab = cat("input_ids"), cat("pos_ids"), cat("labels")
        return [x.to(dev, non_blocking=True) for x in (ids, pos, lab, position)]

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
        if v.flat:
            ids, pos, lab, position = flat(b)
            mask = None
        else:
            ids, mask, pos, lab = tensors(b)
            position = None
        with torch.autocast(a.device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = run_model(ids, mask, pos, position)
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
        "pad_to": pad_to, "cudnn_attention": cudnn_attention, "grouped": v.grouped, "compiled": v.compiled,
        "flat": v.flat, "variant": v.name(), "steps": len(timed), "seconds": secs, "step_ms": 1e3 * secs / len(timed),
        "tokens_per_s": sum(sum(b["attention_mask"]) for b in timed) / secs,
        "padded_tokens_per_s": (sum(sum(b["attention_mask"]) for b in timed) if v.flat
                                else sum(b["rows"] * length(b) for b in timed)) / secs,
        "sentences_per_s": sum(b["rows"] for b in timed) / secs,
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None, "final_loss": loss.item(),
        "torch": torch.__version__, "attention": model.bert.config._attn_implementation,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
