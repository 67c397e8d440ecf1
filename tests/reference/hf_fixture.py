"""Writes crates/nerpos-prep/tests/fixtures/hf/: one small CoNLL-2003-shaped corpus (tokens, POS tags,
chunk tags, NER tags; train/validation/test) stored by Hugging Face `datasets` as users have it —
a `save_to_disk` DatasetDict (train in two Arrow shards) and a Parquet export per split — and the same
sentences as CoNLL files, which nerpos-prep must turn into the same dataset. Also the bad cases:
integer ids without names (Parquet written by pyarrow, no `huggingface` metadata), a record whose tag
list is shorter than its tokens, and string tags.

Run with the reference environment: .venv-ref/bin/python tests/reference/hf_fixture.py
"""

from pathlib import Path
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

OUT = Path(__file__).resolve().parents[2] / "crates/nerpos-prep/tests/fixtures/hf"
POS = ['"', "''", "#", "$", "(", ")", ",", ".", ":", "``", "CC", "CD", "DT", "IN", "JJ", "NN", "NNP",
       "NNS", "TO", "VBD", "VBZ"]
CHUNK = ["O", "B-NP", "I-NP", "B-VP", "B-PP"]
NER = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]

# (word, POS, chunk, NER) — words the tests' small vocabulary knows.
SPLITS = {
    "train": [
        [("the", "DT", "B-NP", "O"), ("new", "JJ", "I-NP", "B-ORG"), ("york", "NNP", "I-NP", "I-ORG"),
         ("troops", "NNS", "I-NP", "I-ORG"), ("marched", "VBD", "B-VP", "O")],
        [("paris", "NNP", "B-NP", "B-LOC"), ("is", "VBZ", "B-VP", "O"), ("in", "IN", "B-PP", "O"),
         ("war", "NN", "B-NP", "O")],
        [("london", "NNP", "B-NP", "B-LOC"), ("and", "CC", "O", "O"), ("paris", "NNP", "B-NP", "B-LOC"),
         (".", ".", "O", "O")],
        [("british", "JJ", "B-NP", "B-ORG"), ("troops", "NNS", "I-NP", "O"), (".", ".", "O", "O")],
    ],
    "validation": [
        [("british", "JJ", "B-NP", "B-ORG"), ("demonstrators", "NNS", "I-NP", "O"),
         ("marched", "VBD", "B-VP", "O"), ("to", "TO", "B-PP", "O"), ("iraq", "NNP", "B-NP", "B-LOC")],
    ],
    "test": [
        [("new", "NNP", "B-NP", "B-PER"), ("york", "NNP", "I-NP", "I-PER")],
        [("the", "DT", "B-NP", "O"), ("war", "NN", "I-NP", "O"), ("of", "IN", "B-PP", "O"),
         ("iraq", "NNP", "B-NP", "B-LOC")],
    ],
}

FEATURES = Features({
    "id": Value("string"),
    "tokens": Sequence(Value("string")),
    "pos_tags": Sequence(ClassLabel(names=POS)),
    "chunk_tags": Sequence(ClassLabel(names=CHUNK)),
    "ner_tags": Sequence(ClassLabel(names=NER)),
})


def records(sentences):
    return {
        "id": [str(i) for i in range(len(sentences))],
        "tokens": [[w for w, _, _, _ in s] for s in sentences],
        "pos_tags": [[POS.index(p) for _, p, _, _ in s] for s in sentences],
        "chunk_tags": [[CHUNK.index(c) for _, _, c, _ in s] for s in sentences],
        "ner_tags": [[NER.index(n) for _, _, _, n in s] for s in sentences],
    }


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "conll").mkdir(parents=True)
    (OUT / "parquet").mkdir()
    (OUT / "bad").mkdir()
    for split, sentences in SPLITS.items():
        lines = ["-DOCSTART- -X- -X- O", ""]
        for s in sentences:
            lines += [" ".join(t) for t in s] + [""]
        (OUT / "conll" / f"{split}.txt").write_text("\n".join(lines))
    dd = DatasetDict({k: Dataset.from_dict(records(v), features=FEATURES) for k, v in SPLITS.items()})
    dd.save_to_disk(str(OUT / "dict"), num_shards={"train": 2, "validation": 1, "test": 1})
    for split, ds in dd.items():
        ds.to_parquet(str(OUT / "parquet" / f"{split}.parquet"))

    train = records(SPLITS["train"])
    # Integer ids and no names anywhere: pyarrow writes no `huggingface` metadata.
    pq.write_table(pa.table({k: train[k] for k in ("tokens", "ner_tags")}), OUT / "bad/no-names.parquet")
    # Record 2's tags one short of its tokens (datasets does not check list lengths against each other).
    short = dict(train)
    short["ner_tags"] = [t if i != 2 else t[:-1] for i, t in enumerate(train["ner_tags"])]
    Dataset.from_dict(short, features=FEATURES).to_parquet(str(OUT / "bad/short-tags.parquet"))
    # String tags (a dataset built from strings, or cast with `cast_column`).
    strings = {
        "tokens": train["tokens"],
        "pos_tags": [[p for _, p, _, _ in s] for s in SPLITS["train"]],
        "ner_tags": [[n for _, _, _, n in s] for s in SPLITS["train"]],
    }
    Dataset.from_dict(strings).to_parquet(str(OUT / "strings.parquet"))
    for cache in OUT.rglob("cache-*.arrow"):
        cache.unlink()


if __name__ == "__main__":
    main()
