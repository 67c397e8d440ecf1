"""Benchmark: nerpos-prep against the Python reference pipeline (tests/reference/prep_reference.py) on
the same corpus and tokenizer, in one run, alternating, on this machine. Prints a Markdown table of
wall time and peak memory (median of --runs), the ratio, and whether both produced the same sub-word
ids and labels for every sentence.

Run through tests/bench/prep.sh, which builds the release binary and the reference environment.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import pyarrow.parquet as pq


def timed(cmd):
    """Wall seconds and peak RSS (MB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss / 1024


def compare(ours_dir, ref_dir):
    """Per sentence: same input ids, same labels by name. A sentence we split into windows is compared
    as the concatenation of its windows without their [CLS]/[SEP]. Returns (compared, differing,
    windowed)."""
    import json

    manifest = json.load(open(os.path.join(ours_dir, "manifest.json")))
    ours_labels = manifest["labels"]
    ours = {}
    windows = {}
    for split in ("train", "dev", "test"):
        for shard in manifest["splits"][split]["shards"]:
            t = pq.read_table(os.path.join(ours_dir, shard["file"]),
                              columns=["sentence_index", "window", "num_windows", "input_ids", "labels"]).to_pydict()
            for i, w, n, ids, labels in zip(t["sentence_index"], t["window"], t["num_windows"],
                                            t["input_ids"], t["labels"]):
                named = [ours_labels[l] if l >= 0 else None for l in labels]
                if n > 1:
                    windows.setdefault(i, []).append((w, ids[1:-1], named[1:-1]))
                else:
                    ours[i] = (ids, named)
    windowed = set(windows)
    for i, parts in windows.items():
        parts.sort()
        ours[i] = ([x for _, ids, _ in parts for x in ids], [x for _, _, ls in parts for x in ls])
    ref_vocab = json.load(open(os.path.join(ref_dir, "vocab.json")))["labels"]
    ref = pq.read_table(os.path.join(ref_dir, "all.parquet"),
                        columns=["sentence_index", "input_ids", "labels"]).to_pydict()
    differing = 0
    compared = 0
    for i, ids, labels in zip(ref["sentence_index"], ref["input_ids"], ref["labels"]):
        compared += 1
        named = [ref_vocab[l] if l >= 0 else None for l in labels]
        if i in windowed:
            ids, named = ids[1:-1], named[1:-1]
        if ours.get(i) != (ids, named):
            differing += 1
    return compared, differing, len(windowed)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nerpos-prep", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    reference = os.path.join(os.path.dirname(__file__), "..", "reference", "prep_reference.py")

    with tempfile.TemporaryDirectory() as tmp:
        ours_out, ref_out = os.path.join(tmp, "ours"), os.path.join(tmp, "ref")
        ours_cmd = [args.nerpos_prep, "--format", "gmb", "--input", args.input,
                    "--tokenizer", args.tokenizer, "--out", ours_out, "--force"]
        ref_cmd = [sys.executable, reference, "--input", args.input,
                   "--tokenizer", args.tokenizer, "--out", ref_out]
        ours, ref = [], []
        for _ in range(args.runs):
            ref.append(timed(ref_cmd))
            ours.append(timed(ours_cmd))
        compared, differing, windowed = compare(ours_out, ref_out)

    med = lambda xs, k: statistics.median(x[k] for x in xs)
    ow, rw = med(ours, 0), med(ref, 0)
    print(f"| pipeline | wall (s, median of {args.runs}) | peak memory (MB) |")
    print("|---|---:|---:|")
    print(f"| Python reference (pandas + HF tokenizers + pyarrow) | {rw:.2f} | {med(ref, 1):.0f} |")
    print(f"| nerpos-prep | {ow:.2f} | {med(ours, 1):.0f} |")
    print(f"| **ratio (reference / nerpos-prep)** | **{rw / ow:.1f}×** | |")
    print()
    print(f"Same input ids and labels: {compared - differing:,} of {compared:,} sentences "
          f"({differing} differ; {windowed} sentence(s) longer than 128 sub-words compared as the "
          f"concatenation of their windows).")
    print(f"Machine: {os.cpu_count()} CPUs; runs alternate reference/ours.")


if __name__ == "__main__":
    main()
