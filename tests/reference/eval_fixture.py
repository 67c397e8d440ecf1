"""Generates crates/nerpos-eval/tests/fixtures/seqeval_cases.json: random tag sequences over 5 entity
types in IOB2, IOBES and BILOU — with deliberately ill-formed ones (I- after O, type switches inside a chunk, I- at a sentence
start, all-O sentences, sentences and whole cases with no predictions, empty sentences, odd tags) — and
seqeval's classification_report (default mode and strict mode), accuracy_score and text tables for
them. The Rust tests replay every case and compare every number (to 1e-9) and every table (exactly).

Run: tests/reference/eval_fixture.sh (installs seqeval into .venv-ref/). Deterministic (seeded).
Tags are stored compactly: each sentence is a string of one character per token, indexing `legend`.
"""

import json
import math
import os
import sys
import warnings

import numpy as np
import seqeval
from seqeval.metrics import accuracy_score, classification_report
from seqeval.scheme import BILOU, IOB2, IOBES

TYPES = ["DATE", "LOC", "MISC", "ORG", "PER"]
ODD = ["B", "I", "X-PER", "B-", "I--LOC", "."]
# BILOU's L-/U- come last so that the codes of the older cases stay as they were.
LEGEND = ["O"] + [f"{p}-{t}" for t in TYPES for p in "BIES"] + ODD + [f"{p}-{t}" for t in TYPES for p in "LU"]
# Per scheme: the prefixes of begin, inside, end and single-token chunks.
LETTERS = {"IOB2": "BIIB", "IOBES": "BIES", "BILOU": "BILU"}
CODE = {t: chr(ord("a") + i) for i, t in enumerate(LEGEND)}


def entity_sentence(rng, scheme):
    n = int(rng.integers(0, 25))
    tags = []
    while len(tags) < n:
        if rng.random() < 0.55:
            tags.append("O")
            continue
        ty = TYPES[rng.integers(len(TYPES))]
        length = int(rng.integers(1, 4))
        b, i, e, s = LETTERS[scheme]
        for k in range(length):
            if scheme == "IOB2":
                p = "B" if k == 0 else "I"
            else:
                p = s if length == 1 else b if k == 0 else e if k == length - 1 else i
            tags.append(f"{p}-{ty}")
    tags = tags[:n]
    # Ill-formed sequences a tagger produces: an I- after O or at the start, a type switch inside a
    # chunk, a lone continuation.
    for _ in range(int(rng.integers(0, 3))):
        if not tags or rng.random() < 0.4:
            continue
        i = int(rng.integers(len(tags)))
        ty = TYPES[rng.integers(len(TYPES))]
        tags[i] = f"I-{ty}" if scheme == "IOB2" or rng.random() < 0.5 else f"{LETTERS[scheme][2]}-{ty}"
    return tags


def perturb(rng, gold, scheme, p):
    pred = list(gold)
    for i, t in enumerate(pred):
        if rng.random() >= p:
            continue
        r = rng.random()
        if r < 0.3:
            pred[i] = "O"
        elif r < 0.55 and t != "O":
            pred[i] = t[0] + "-" + TYPES[rng.integers(len(TYPES))]
        elif r < 0.8 and t != "O":
            choices = "BI" if scheme == "IOB2" else LETTERS[scheme]
            pred[i] = choices[rng.integers(len(choices))] + t[1:]
        else:
            choices = "BI" if scheme == "IOB2" else LETTERS[scheme]
            pred[i] = choices[rng.integers(len(choices))] + "-" + TYPES[rng.integers(len(TYPES))]
    return pred


def clean(x):
    x = float(x)
    return None if math.isnan(x) else x


def report(y_true, y_pred, **kw):
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = classification_report(y_true, y_pred, output_dict=True, **kw)
        out["report"] = {k: {"precision": clean(v["precision"]), "recall": clean(v["recall"]),
                             "f1": clean(v["f1-score"]), "support": int(v["support"])}
                         for k, v in d.items()}
        try:
            out["text2"] = classification_report(y_true, y_pred, digits=2, **kw)
            out["text4"] = classification_report(y_true, y_pred, digits=4, **kw)
        except ValueError:
            pass  # no entity at all: seqeval cannot size its table
    return out


def encode(sentences):
    return ["".join(CODE[t] for t in s) for s in sentences]


def case(name, y_true, y_pred, strict=None):
    c = {"name": name, "true": encode(y_true), "pred": encode(y_pred)}
    c["default"] = report(y_true, y_pred)
    c["default"]["accuracy"] = clean(accuracy_score(y_true, y_pred)) if any(y_true) else None
    if strict is not None:
        scheme = {"IOB2": IOB2, "IOBES": IOBES, "BILOU": BILOU, "auto": None}[strict]
        c["strict"] = report(y_true, y_pred, mode="strict", scheme=scheme)
        c["strict"]["scheme"] = strict
    return c


def main(out_path):
    rng = np.random.default_rng(20261124)
    cases = []
    for k in range(30):
        scheme = "IOB2"
        gold = [entity_sentence(rng, scheme) for _ in range(100)]
        pred = [perturb(rng, s, scheme, p=float(rng.uniform(0.02, 0.4))) for s in gold]
        for i in rng.choice(len(pred), size=int(rng.integers(0, 10)), replace=False):
            pred[i] = ["O"] * len(pred[i])  # sentences with no predictions
        cases.append(case(f"iob2-{k}", gold, pred, strict="IOB2" if k % 5 else "auto"))
    for k in range(8):
        gold = [entity_sentence(rng, "IOBES") for _ in range(100)]
        pred = [perturb(rng, s, "IOBES", p=float(rng.uniform(0.02, 0.3))) for s in gold]
        cases.append(case(f"iobes-{k}", gold, pred, strict="IOBES" if k % 4 else "auto"))
    for k in range(4):
        gold = [entity_sentence(rng, "IOB2") for _ in range(60)]
        pred = [[ODD[rng.integers(len(ODD))] if rng.random() < 0.15 else t for t in s] for s in gold]
        gold = [[ODD[rng.integers(len(ODD))] if rng.random() < 0.05 else t for t in s] for s in gold]
        cases.append(case(f"odd-tags-{k}", gold, pred))
    gold = [entity_sentence(rng, "IOB2") for _ in range(50)]
    cases.append(case("no-predictions", gold, [["O"] * len(s) for s in gold], strict="IOB2"))
    only_o = [["O"] * len(s) for s in gold]
    cases.append(case("gold-all-O", only_o, gold, strict="IOB2"))
    cases.append(case("nothing-anywhere", only_o, only_o, strict="IOB2"))
    cases.append(case("single-type-only-predicted",
                      [["B-PER", "I-PER", "O"], ["O", "O"]], [["B-PER", "I-PER", "O"], ["B-LOC", "O"]],
                      strict="IOB2"))
    # 1/8 precision: the rounding of exact ties in the text table.
    cases.append(case("rounding-ties",
                      [["B-PER", "O"]] + [["O", "O"]] * 7,
                      [["B-PER", "O"]] + [["B-PER", "O"]] * 7, strict="IOB2"))
    for k in range(8):
        gold = [entity_sentence(rng, "BILOU") for _ in range(100)]
        pred = [perturb(rng, s, "BILOU", p=float(rng.uniform(0.02, 0.3))) for s in gold]
        cases.append(case(f"bilou-{k}", gold, pred, strict="BILOU" if k % 4 else "auto"))

    n_seq = sum(len(c["true"]) for c in cases)
    with open(out_path, "w") as f:
        json.dump({"generator": "tests/reference/eval_fixture.py", "seqeval": seqeval.__version__
                   if hasattr(seqeval, "__version__") else "1.2.2", "legend": LEGEND,
                   "sequences": n_seq, "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    print(f"{out_path}: {len(cases)} cases, {n_seq} sequences")


if __name__ == "__main__":
    main(sys.argv[1])
