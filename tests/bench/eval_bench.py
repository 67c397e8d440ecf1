"""Benchmark: nerpos-eval against seqeval on the same 1,000,000-token CoNLL file, in one run.

Writes a deterministic CoNLL file (gold and predicted tags over 5 types, ~14 tokens per sentence,
predictions perturbed from the gold), then times, alternating, --runs times each:
  - seqeval 1.2.2: classification_report (digits=4) + accuracy_score on lists already in memory
    (reading the file is not counted for seqeval, only scoring);
  - nerpos-eval FILE --digits 4: the whole command (process start, reading, scoring, printing).
Checks that both print the same table, and prints a Markdown table with the ratio.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
from seqeval.metrics import accuracy_score, classification_report
from seqeval.scheme import IOB2

TYPES = ["DATE", "LOC", "MISC", "ORG", "PER"]


def make_corpus(path, tokens, seed=7):
    rng = np.random.default_rng(seed)
    gold_all, pred_all = [], []
    n = 0
    with open(path, "w") as f:
        while n < tokens:
            length = int(min(rng.integers(3, 26), tokens - n))
            gold = []
            while len(gold) < length:
                if rng.random() < 0.7:
                    gold.append("O")
                else:
                    ty = TYPES[rng.integers(5)]
                    gold += [f"B-{ty}"] + [f"I-{ty}"] * int(rng.integers(0, 3))
            gold = gold[:length]
            pred = []
            for t in gold:
                r = rng.random()
                if r < 0.04:
                    pred.append("O")
                elif r < 0.07:
                    pred.append(("B-" if rng.random() < 0.5 else "I-") + TYPES[rng.integers(5)])
                else:
                    pred.append(t)
            for i, (g, p) in enumerate(zip(gold, pred)):
                f.write(f"w{i} X {g} {p}\n")
            f.write("\n")
            gold_all.append(gold)
            pred_all.append(pred)
            n += length
    return gold_all, pred_all


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nerpos-eval", required=True)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pred.conll")
        gold, pred = make_corpus(path, args.tokens)
        rows = []
        for mode, kw, flags in [("default", {}, []),
                                ("strict IOB2", {"mode": "strict", "scheme": IOB2}, ["--mode", "strict"])]:
            ours_t, ref_t = [], []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ref_text = classification_report(gold, pred, digits=4, **kw)
                    accuracy_score(gold, pred)
                ref_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                out = subprocess.run([args.nerpos_eval, path, "--digits", "4", *flags], check=True,
                                     capture_output=True, text=True).stdout
                ours_t.append(time.perf_counter() - t0)
            rows.append((mode, statistics.median(ref_t), statistics.median(ours_t), out.startswith(ref_text),
                         ref_text, out))
    print(f"{args.tokens:,} tokens, {len(gold):,} sentences; seconds, median of {args.runs} runs:")
    print()
    print("| mode | seqeval 1.2.2 (scoring lists in memory) | nerpos-eval CLI (read + score + print) | ratio | same table |")
    print("|---|---:|---:|---:|---|")
    for mode, r, o, same, _, _ in rows:
        print(f"| {mode} | {r:.3f} | {o:.3f} | **{r / o:.0f}×** | {'yes' if same else 'NO'} |")
    for mode, _, _, same, ref_text, out in rows:
        print()
        print(f"{mode}, seqeval `classification_report(digits=4)`:")
        print("```")
        print(ref_text.rstrip("\n"))
        print("```")
        print(f"{mode}, `nerpos-eval --digits 4`:")
        print("```")
        print(out.rstrip())
        print("```")
    if not all(r[3] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
