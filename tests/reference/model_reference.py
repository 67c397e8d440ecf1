"""The PyTorch reference for nerpos-model: Hugging Face's BertModel + a POS embedding + dropout + linear.

  model_reference.py tiny OUT
      A small random BERT (2 layers, hidden 64, 4 heads, vocab 100, intermediate 128) with a POS head
      (pos_dim 24, 10 POS ids, 7 labels), saved in nerpos's fine-tuned folder format at OUT/model, and
      OUT/expected.safetensors: a fixed padded batch (inputs, labels with -100), the logits, the summed
      cross-entropy and the gradient of every parameter, dropout off. This is the committed fixture.
  model_reference.py checkpoint CKPT OUT
      The same for a real checkpoint folder (e.g. all-MiniLM-L6-v2) with a new seeded head.
  model_reference.py reload FOLDER INPUTS OUT
      Loads a folder saved by nerpos: the encoder with BertModel.from_pretrained, the head from its
      model.safetensors; writes the logits for the batch in INPUTS (a safetensors file) to OUT.

Run through tests/reference/setup-venv.sh requirements-model.txt (torch, transformers).
"""

import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel

torch.use_deterministic_algorithms(True)


class BertNerPos(torch.nn.Module):
    def __init__(self, bert, num_pos, pos_dim, num_labels, dropout=0.2):
        super().__init__()
        self.bert = bert
        self.pos_embedding = torch.nn.Embedding(num_pos, pos_dim)
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(bert.config.hidden_size + pos_dim, num_labels)
        std = bert.config.initializer_range
        torch.nn.init.normal_(self.pos_embedding.weight, std=std)
        torch.nn.init.normal_(self.classifier.weight, std=std)
        torch.nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids, attention_mask, pos_ids):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        x = torch.cat([h, self.pos_embedding(pos_ids)], dim=-1)
        return self.classifier(self.dropout(x))


def batch(vocab, num_pos, num_labels, lengths, seed):
    """A padded batch: [CLS]=1 ... [SEP]=2 rows of the given lengths, labels -100 on specials, padding
    and every third sub-word (as non-first sub-words are)."""
    g = torch.Generator().manual_seed(seed)
    b, t = len(lengths), max(lengths)
    ids = torch.zeros(b, t, dtype=torch.int64)
    mask = torch.zeros(b, t, dtype=torch.int64)
    pos = torch.zeros(b, t, dtype=torch.int64)
    labels = torch.full((b, t), -100, dtype=torch.int64)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(3, vocab, (n,), generator=g)
        ids[r, 0], ids[r, n - 1] = 1, 2
        mask[r, :n] = 1
        pos[r, 1:n - 1] = torch.randint(2, num_pos, (n - 2,), generator=g)
        lab = torch.randint(0, num_labels, (n,), generator=g)
        for i in range(1, n - 1):
            if i % 3 != 0:
                labels[r, i] = lab[i]
    return ids, mask, pos, labels


def save_folder(model, out, labels, pos_names, max_len):
    os.makedirs(out, exist_ok=True)
    model.bert.config.save_pretrained(out)
    state = {k: v.detach().contiguous() for k, v in model.bert.state_dict().items()
             if not k.endswith("position_ids")}
    state["pos_embedding.weight"] = model.pos_embedding.weight.detach().contiguous()
    state["classifier.weight"] = model.classifier.weight.detach().contiguous()
    state["classifier.bias"] = model.classifier.bias.detach().contiguous()
    save_file(state, os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "nerpos.json"), "w") as f:
        json.dump({"format_version": 1, "created_by": "tests/reference/model_reference.py",
                   "labels": labels, "pos": pos_names, "pos_pad_id": 0, "pos_unk_id": 1,
                   "pos_dim": model.pos_embedding.embedding_dim, "use_pos": True, "max_len": max_len,
                   "dropout": 0.2}, f, indent=2)


def expected(model, ids, mask, pos, labels, out):
    model.eval()  # dropout off; gradients still flow
    model.zero_grad()
    logits = model(ids, mask, pos)
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum")
    loss.backward()
    tensors = {"input_ids": ids, "attention_mask": mask, "pos_ids": pos, "labels": labels,
               "logits": logits.detach(), "loss_sum": loss.detach().reshape(1),
               "count": (labels != -100).sum().reshape(1)}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue  # the pooler: unused by the tagger
        key = name[len("bert."):] if name.startswith("bert.") else name
        tensors["grad." + key] = p.grad.detach().contiguous()
    save_file({k: v.contiguous() for k, v in tensors.items()}, out)
    return logits


def tiny(out):
    torch.manual_seed(1234)
    config = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, type_vocab_size=2,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, hidden_act="gelu")
    config._attn_implementation = "eager"
    bert = BertModel(config, add_pooling_layer=True)
    # Non-trivial LayerNorm parameters, so their gradients are tested in earnest.
    with torch.no_grad():
        for n, p in bert.named_parameters():
            if "LayerNorm" in n:
                p.add_(0.1 * torch.randn_like(p))
    model = BertNerPos(bert, num_pos=10, pos_dim=24, num_labels=7)
    save_folder(model, os.path.join(out, "model"), [f"L{i}" for i in range(7)],
                ["<pad>", "<unk>"] + [f"P{i}" for i in range(8)], 64)
    ids, mask, pos, labels = batch(100, 10, 7, [9, 5, 7], seed=7)
    expected(model, ids, mask, pos, labels, os.path.join(out, "expected.safetensors"))


def checkpoint(ckpt, out):
    torch.manual_seed(99)
    bert = BertModel.from_pretrained(ckpt, attn_implementation="eager")
    model = BertNerPos(bert, num_pos=44, pos_dim=bert.config.hidden_size, num_labels=17)
    save_folder(model, os.path.join(out, "model"), [f"L{i}" for i in range(17)],
                ["<pad>", "<unk>"] + [f"P{i}" for i in range(42)], 128)
    ids, mask, pos, labels = batch(bert.config.vocab_size, 44, 17, [48, 31, 40, 12], seed=3)
    expected(model, ids, mask, pos, labels, os.path.join(out, "expected.safetensors"))


def reload(folder, inputs, out):
    bert = BertModel.from_pretrained(folder, attn_implementation="eager")
    weights = load_file(os.path.join(folder, "model.safetensors"))
    meta = json.load(open(os.path.join(folder, "nerpos.json")))
    model = BertNerPos(bert, len(meta["pos"]), meta["pos_dim"], len(meta["labels"]))
    model.pos_embedding.weight.data = weights["pos_embedding.weight"]
    model.classifier.weight.data = weights["classifier.weight"]
    model.classifier.bias.data = weights["classifier.bias"]
    model.eval()
    t = load_file(inputs)
    with torch.no_grad():
        logits = model(t["input_ids"], t["attention_mask"], t["pos_ids"])
    save_file({"logits": logits.contiguous()}, out)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "tiny":
        tiny(sys.argv[2])
    elif cmd == "checkpoint":
        checkpoint(sys.argv[2], sys.argv[3])
    elif cmd == "reload":
        reload(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
