"""The Python pipeline nerpos-prep replaces, as a user would write it: pandas read + forward fill +
group, the Hugging Face fast tokenizer with is_split_into_words, first-sub-word label alignment, a seeded
80/10/10 sentence split, pyarrow Parquet (zstd). Used as the benchmark reference and as an independent
check of nerpos-prep's ids (see tests/bench/prep_bench.py).

Reads the GMB CSV as Windows-1252 and with keep_default_na=False: latin-1 would turn its curly quotes
and dashes into control characters the tokenizer deletes (21 words lose their label), and the default
NA parsing turns the word "None" into NaN.
"""

import argparse
import json
import os
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--tokenizer", required=True, help="checkpoint folder with tokenizer.json")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--encoding", default="cp1252")
    args = ap.parse_args()
    t0 = time.perf_counter()

    df = pd.read_csv(args.input, encoding=args.encoding, keep_default_na=False, dtype=str)
    df["Sentence #"] = df["Sentence #"].replace("", None).ffill()
    grouped = df.groupby("Sentence #", sort=False)
    sentences = grouped["Word"].apply(list).tolist()
    tags = grouped["Tag"].apply(list).tolist()
    pos = grouped["POS"].apply(list).tolist()
    ids = grouped["Sentence #"].first().tolist()

    labels = sorted(set(df["Tag"]))
    label_id = {l: i for i, l in enumerate(labels)}
    rng = np.random.default_rng(42)
    order = rng.permutation(len(sentences))
    n_train, n_dev = round(0.8 * len(order)), round(0.1 * len(order))
    train = set(order[:n_train].tolist())
    pos_vocab = ["<pad>", "<unk>"] + sorted({p for i in train for p in pos[i]})
    pos_id = {p: i for i, p in enumerate(pos_vocab)}

    tok = Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    encodings = tok.encode_batch(sentences, is_pretokenized=True)

    rows = {"sentence_index": [], "sentence_id": [], "input_ids": [], "attention_mask": [],
            "labels": [], "pos_ids": [], "word_ids": [], "words": [], "tags": []}
    for i, enc in enumerate(encodings):
        word_ids = enc.word_ids
        lab, pids, prev = [], [], None
        for w in word_ids:
            if w is None:
                lab.append(-100)
                pids.append(0)
            else:
                lab.append(label_id[tags[i][w]] if w != prev else -100)
                pids.append(pos_id.get(pos[i][w], 1))
            prev = w
        rows["sentence_index"].append(i)
        rows["sentence_id"].append(ids[i])
        rows["input_ids"].append(enc.ids)
        rows["attention_mask"].append(enc.attention_mask)
        rows["labels"].append(lab)
        rows["pos_ids"].append(pids)
        rows["word_ids"].append([-1 if w is None else w for w in word_ids])
        rows["words"].append(sentences[i])
        rows["tags"].append(tags[i])
    os.makedirs(args.out, exist_ok=True)
    pq.write_table(pa.table(rows), os.path.join(args.out, "all.parquet"), compression="zstd")
    with open(os.path.join(args.out, "vocab.json"), "w") as f:
        json.dump({"labels": labels, "pos": pos_vocab}, f)
    print(json.dumps({
        "sentences": len(sentences),
        "words": int(len(df)),
        "tags": len(labels),
        "pos_tags": int(df["POS"].nunique()),
        "subwords_with_specials": sum(len(e.ids) for e in encodings),
        "labelled": sum(sum(1 for l in r if l != -100) for r in rows["labels"]),
        "seconds_in_process": round(time.perf_counter() - t0, 3),
    }))


if __name__ == "__main__":
    main()
