"""Benchmark: tagging raw text with a fine-tuned model folder, against the same model on the gold tokens,
and against PyTorch on the same text, in one run on this machine. Run through tests/bench/text.sh.

1. Accuracy. A dataset's split (its Parquet rows: words, POS tags, NER tags) is rendered as running
   text — words joined by spaces, punctuation and clitics re-attached as people write them (`Paris.`,
   `Iraq's`, `(PT)`, `"quoted"`) — one sentence per line, and each gold entity gets its character span
   in that line. `nerpos-predict --format text` tags the text (its own word splitting, POS from the
   model's POS tagger); its entities are matched to the gold ones by (line, type, start, end). The same
   model on the gold tokens with the gold POS tags (`--format conll --pos input`) and with the tagger's
   POS (`--pos model`) are scored alike, and by seqeval on the tags (the reference for the metric).
2. Speed. Words per second of `nerpos-predict --format text` (the rate it logs over reading, splitting,
   tagging and writing, and the whole command's wall time with the model's loading) against a PyTorch
   `no_grad` forward of the same weights (Hugging Face BertModel, the POS tagger, the POS embedding,
   the classifier, pytorch-crf's Viterbi for a CRF head) on the same words (already split: PyTorch does
   no word splitting): the fast tokenizer, sentences sorted by length in batches of 64 or 256 (the
   faster), 2 threads; f32, and bf16 autocast.
   `--precision bf16` (ours on the CPU: the encoder's products in bf16 with AVX512-BF16, the rest in f32,
   as autocast; candle's bf16 tensor ops on CPUs without it) is scored beside f32.
3. Memory. Peak resident memory of each `nerpos-predict` run; with --repeat N, also of the text
   repeated N times (memory should not grow with the input).
"""

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file
from seqeval.metrics import f1_score
from seqeval.metrics.sequence_labeling import get_entities
from transformers import BertModel, BertTokenizerFast

NO_SPACE_BEFORE = {".", ",", ";", ":", "!", "?", "%", ")", "]", "}", "...", "'", "n't"}
CLITICS = {"'s", "'re", "'ve", "'ll", "'m", "'d"}
NO_SPACE_AFTER = {"(", "[", "{", "$", "#"}


def read_split(dataset, split):
    """The split's sentences as lists of (word, pos, tag), windows re-assembled."""
    sentences = {}
    for f in sorted(glob.glob(os.path.join(dataset, split, "*.parquet"))):
        table = pq.read_table(f, columns=["sentence_index", "word_start", "words", "pos", "tags"])
        for r in table.to_pylist():
            s = sentences.setdefault(r["sentence_index"], {})
            for k, w in enumerate(zip(r["words"], r["pos"], r["tags"])):
                s[r["word_start"] + k] = w
    return [[s[k] for k in range(len(s))] for _, s in sorted(sentences.items())]


def render(words):
    """Running text of `words` and each word's character span in it."""
    text, spans, open_quote, prev = "", [], False, None
    for w in words:
        attach = not text or w in NO_SPACE_BEFORE or w.lower() in CLITICS or prev in NO_SPACE_AFTER
        if prev == '"' and open_quote:
            attach = True
        if w == '"':
            attach = open_quote and bool(text)
            open_quote = not open_quote
        if not attach:
            text += " "
        spans.append((len(text), len(text) + len(w)))
        text += w
        prev = w
    return text, spans


def export(sentences, labels, text_file, conll):
    """The sentences as running text (one per line) and as CoNLL (word, POS, tag; tags the model does
    not know as O)."""
    with open(text_file, "w", encoding="utf-8") as f:
        for s in sentences:
            f.write(render([w for w, _, _ in s])[0] + "\n")
    with open(conll, "w", encoding="utf-8") as f:
        for s in sentences:
            f.write("".join(f"{w} {p} {t if t in labels else 'O'}\n" for w, p, t in s) + "\n")


def gold_entities(sentences, labels):
    """(line, type, start, end) of every gold entity, in the rendered text and in the words joined by
    single spaces; tags the model does not know read as O (as nerpos-prep drops types)."""
    rendered, joined = set(), set()
    for i, s in enumerate(sentences):
        tags = [t if t in labels else "O" for _, _, t in s]
        _, spans = render([w for w, _, _ in s])
        starts = []
        at = 0
        for w, _, _ in s:
            starts.append(at)
            at += len(w) + 1
        for ty, a, b in get_entities(tags):
            rendered.add((i, ty, spans[a][0], spans[b][1]))
            joined.add((i, ty, starts[a], starts[b] + len(s[b][0])))
    return rendered, joined


def predicted_entities(jsonl):
    out = set()
    with open(jsonl, encoding="utf-8") as f:
        for i, line in enumerate(f):
            for e in json.loads(line)["entities"]:
                out.add((i, e["type"], e["start"], e["end"]))
    return out


def prf(gold, pred):
    tp = len(gold & pred)
    p = tp / len(pred) if pred else 0.0
    r = tp / len(gold) if gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def run_predict(ours, model, inp, fmt, out, extra):
    """Runs nerpos-predict; returns (wall seconds, logged words/s, peak memory in MB)."""
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "sys.stderr.write(r.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);"
        "sys.exit(r.returncode)"
    )
    cmd = [ours, "--model", model, "--input", inp, "--format", fmt, "--out", out,
           "--output-format", "jsonl", *extra]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True,
                       env={**os.environ, "NERPOS_LOG": "info"})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"nerpos-predict failed:\n{r.stderr}")
    rate = None
    for line in r.stderr.splitlines():
        if "words_per_sec=" in line:
            rate = float(line.split("words_per_sec=")[1].split()[0])
    return wall, rate, int(r.stdout.strip()) / 1024


class Reference(torch.nn.Module):
    """The model folder's weights in PyTorch: BertModel + POS tagger + POS embedding + classifier."""

    def __init__(self, folder):
        super().__init__()
        self.bert = BertModel.from_pretrained(folder, add_pooling_layer=False)
        w = load_file(os.path.join(folder, "model.safetensors"))
        self.meta = json.load(open(os.path.join(folder, "nerpos.json")))
        lin = lambda name: torch.nn.Linear(*reversed(w[name + ".weight"].shape))  # noqa: E731
        self.classifier = lin("classifier")
        self.classifier.load_state_dict({"weight": w["classifier.weight"], "bias": w["classifier.bias"]})
        # Predicted POS look up their own table when the model has one (tagger_pos_share > 0).
        self.pos_embedding = torch.nn.Embedding.from_pretrained(
            w.get("pos_embedding_tagged.weight", w["pos_embedding.weight"]))
        self.tagger = lin("pos_tagger")
        self.tagger.load_state_dict({"weight": w["pos_tagger.weight"], "bias": w["pos_tagger.bias"]})
        self.crf = None
        if "crf.transitions" in w:
            from torchcrf import CRF

            self.crf = CRF(len(self.meta["labels"]), batch_first=True)
            self.crf.load_state_dict({"start_transitions": w["crf.start"], "end_transitions": w["crf.end"],
                                      "transitions": w["crf.transitions"]})
        self.eval()

    def forward(self, ids, mask, first, first_mask):
        # The POS tagger reads the layer nerpos.json names (absent: the last; hidden_states[0] is the
        # embeddings' output, [k] layer k's).
        layer = self.meta.get("pos_tagger_layer")
        out = self.bert(input_ids=ids, attention_mask=mask, output_hidden_states=layer is not None)
        at_first = lambda x: torch.gather(x, 1, first.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # noqa: E731
        h = at_first(out.last_hidden_state)
        probe = h if layer is None else at_first(out.hidden_states[layer])
        # The POS embedding fed the tagger's distribution, as nerpos-predict does without POS tags.
        pos = self.tagger(probe).softmax(-1) @ self.pos_embedding.weight
        logits = self.classifier(torch.cat([h, pos], -1))
        if self.crf is not None:
            return self.crf.decode(logits.float(), mask=first_mask)
        return logits.argmax(-1)


def torch_words_per_sec(folder, sentences, threads, bf16):
    """The better of batches of 64 and 256 sentences, each timed on a second pass over the text
    (PyTorch at its best: its first pass also builds a kernel plan for every new batch shape, a cost a
    long input pays once)."""
    return max(torch_rate(folder, sentences, threads, bf16, b, passes=2) for b in (64, 256))


def torch_rate(folder, sentences, threads, bf16, batch_size, passes):
    """Words/s of the last of `passes` passes."""
    torch.set_num_threads(threads)
    model = Reference(folder)
    tok = BertTokenizerFast.from_pretrained(folder)
    for _ in range(passes):
        rate = torch_pass(model, tok, sentences, bf16, batch_size)
    return rate


def torch_pass(model, tok, sentences, bf16, batch_size):
    """One timed pass: the whole text tokenised in one call, sentences sorted by their sub-word count
    (the least padding, as ours sorts its rows), padded per batch."""
    max_len = model.meta["max_len"]
    words = sum(len(s) for s in sentences)
    t0 = time.perf_counter()
    enc = tok(sentences, is_split_into_words=True, truncation=True, max_length=max_len)
    firsts_all = []
    for b in range(len(sentences)):
        ids = enc.word_ids(b)
        firsts_all.append([p for p, w in enumerate(ids) if w is not None and (p == 0 or ids[p - 1] != w)])
    order = sorted(range(len(sentences)), key=lambda i: len(enc["input_ids"][i]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for k in range(0, len(order), batch_size):
            idx = order[k:k + batch_size]
            batch = tok.pad({"input_ids": [enc["input_ids"][i] for i in idx],
                             "attention_mask": [enc["attention_mask"][i] for i in idx]}, return_tensors="pt")
            firsts = [firsts_all[i] for i in idx]
            n = max(len(f) for f in firsts)
            first = torch.tensor([f + [0] * (n - len(f)) for f in firsts])
            first_mask = torch.tensor([[1] * len(f) + [0] * (n - len(f)) for f in firsts], dtype=torch.bool)
            model(batch["input_ids"], batch["attention_mask"], first, first_mask)
    return words / (time.perf_counter() - t0)


def big_file(a, text_file, tmp):
    """Peak memory on a file of a.big_gb GB: the split's lines, each padded with spaces (many bytes,
    the split's words: tagging it all as real text would take hours on 2 cores)."""
    lines = open(text_file, encoding="utf-8").read().splitlines()
    pad = " " * max(0, int(a.big_gb * 1e9) // len(lines) - max(len(l) for l in lines))
    big = os.path.join(tmp, "padded.txt")
    with open(big, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + pad + "\n")
    size = os.path.getsize(big) / 1e9
    out = os.path.join(tmp, "padded.jsonl")
    wall, rate, peak = run_predict(a.ours, a.model, big, "text", out, [])
    os.remove(big)
    tagged = sum(1 for _ in open(out, encoding="utf-8"))
    os.remove(out)
    assert tagged == len(lines), (tagged, len(lines))
    print(f"| raw text, each line padded with spaces ({size:.2f} GB) | | | | | {rate:,.0f} | {wall:.1f} | {peak:.0f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours")
    ap.add_argument("--model", help="a fine-tuned model folder with a POS tagger")
    ap.add_argument("--export", metavar="DIR", help="only write the split as DIR/dev.txt and DIR/dev.conll")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=0, help="also tag the text repeated N times")
    ap.add_argument("--no-torch", action="store_true", help="accuracy and memory only")
    ap.add_argument("--big-gb", type=float, default=0, help="also tag the split padded to a file of this many GB")
    ap.add_argument("--no-bf16", action="store_true", help="without the bf16 runs (ours and PyTorch's; slow on a CPU)")
    a = ap.parse_args()
    sentences = read_split(a.dataset, a.split)
    if a.export:
        os.makedirs(a.export, exist_ok=True)
        labels = {t for s in sentences for _, _, t in s}
        export(sentences, labels, os.path.join(a.export, "dev.txt"), os.path.join(a.export, "dev.conll"))
        return
    labels = set(json.load(open(os.path.join(a.model, "nerpos.json")))["labels"])
    # The exported split, the outputs and the --big-gb file (up to gigabytes) go away with the run.
    with tempfile.TemporaryDirectory(prefix="nerpos-text-bench-") as tmp:
        bench(a, sentences, labels, tmp)


def bench(a, sentences, labels, tmp):
    nwords = sum(len(s) for s in sentences)
    text_file, conll = os.path.join(tmp, "dev.txt"), os.path.join(tmp, "dev.conll")
    export(sentences, labels, text_file, conll)
    rendered, joined = gold_entities(sentences, labels)
    gold_tags = [[t if t in labels else "O" for _, _, t in s] for s in sentences]
    runs = [
        ("raw text, POS from the tagger", text_file, "text", [], rendered),
        ("gold tokens, gold POS", conll, "conll", ["--pos-col", "1", "--tag-col", "2", "--pos", "input"], joined),
        ("gold tokens, POS from the tagger", conll, "conll", ["--pos-col", "1", "--tag-col", "2", "--pos", "model"], joined),
        ("raw text, --precision bf16", text_file, "text", ["--precision", "bf16"], rendered),
    ]
    if a.no_bf16:
        runs = runs[:-1]
    print(f"{a.split} split of {a.dataset}: {len(sentences):,} sentences, {nwords:,} words; model {a.model}\n")
    print("| input | entity micro P | R | F1 (by character spans) | seqeval F1 (tags) | words/s (logged) | command s | peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    rates = {}
    for name, inp, fmt, extra, gold in runs:
        out = os.path.join(tmp, f"{fmt}-{len(rates)}.jsonl")
        wall, rate, peak = run_predict(a.ours, a.model, inp, fmt, out, extra)
        rates[name] = (rate, wall)
        p, r, f = prf(gold, predicted_entities(out))
        seq = "-"
        if fmt == "conll":
            pred = [json.loads(l)["tags"] for l in open(out, encoding="utf-8")]
            seq = f"{f1_score(gold_tags, pred):.4f}"
        print(f"| {name} | {p:.4f} | {r:.4f} | {f:.4f} | {seq} | {rate:,.0f} | {wall:.1f} | {peak:.0f} |")
        if fmt == "text" and not extra:
            split = [json.loads(l)["words"] for l in open(out, encoding="utf-8")]
            same = [x == [w for w, _, _ in s] for x, s in zip(split, sentences)]
            diffs = [(x, [w for w, _, _ in s]) for x, s, ok in zip(split, sentences, same) if not ok]
    print(f"\nThe raw text split back into the corpus's words exactly: {sum(same):,} of {len(same):,} sentences")
    for x, g in diffs[:5]:
        d = next(k for k in range(min(len(x), len(g)) + 1) if k == min(len(x), len(g)) or x[k] != g[k])
        print(f"  e.g. ours {x[max(0, d - 2):d + 3]} vs corpus {g[max(0, d - 2):d + 3]}")
    if a.repeat > 1:
        big = os.path.join(tmp, "big.txt")
        with open(big, "w", encoding="utf-8") as f:
            for _ in range(a.repeat):
                f.write(open(text_file, encoding="utf-8").read())
        size = os.path.getsize(big) / 1e6
        wall, rate, peak = run_predict(a.ours, a.model, big, "text", os.path.join(tmp, "big.jsonl"), [])
        print(f"| raw text ×{a.repeat} ({size:.1f} MB) | | | | | {rate:,.0f} | {wall:.1f} | {peak:.0f} |")
    if a.big_gb:
        big_file(a, text_file, tmp)
    print()
    if a.no_torch:
        return
    words = [[w for w, _, _ in s] for s in sentences]
    ours_rate = rates["raw text, POS from the tagger"][0]
    print("| precision | PyTorch no_grad words/s | nerpos-predict --format text words/s | ratio |")
    print("|---|---|---|---|")
    theirs = torch_words_per_sec(a.model, words, a.threads, False)
    print(f"| f32 | {theirs:,.0f} | {ours_rate:,.0f} | {ours_rate / theirs:.2f}× |")
    if a.no_bf16:
        return
    bf16_rate = rates["raw text, --precision bf16"][0]
    theirs_bf16 = torch_words_per_sec(a.model, words, a.threads, True)
    print(f"| bf16 (PyTorch autocast; ours --precision bf16) | {theirs_bf16:,.0f} | {bf16_rate:,.0f} | "
          f"{bf16_rate / theirs_bf16:.2f}× |")
    print(f"| PyTorch bf16 autocast against our f32 | {theirs_bf16:,.0f} | {ours_rate:,.0f} | "
          f"{ours_rate / theirs_bf16:.2f}× |")


if __name__ == "__main__":
    main()
