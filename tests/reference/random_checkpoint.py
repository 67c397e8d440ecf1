"""A seeded random BERT checkpoint in a Hugging Face folder: Hugging Face's own initialisation of
`BertModel` from FOLDER's config.json, saved with FOLDER's tokenizer files beside it. The GPU check's
train step starts both trainers from it when its bundle could not carry the real weights.

  random_checkpoint.py FOLDER OUT [--seed 42]
"""

import argparse
import os
import shutil

import torch
from transformers import BertConfig, BertModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", help="a checkpoint folder with config.json and its tokenizer files")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    model = BertModel(BertConfig.from_json_file(os.path.join(a.folder, "config.json")), add_pooling_layer=True)
    tmp = a.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for name in os.listdir(a.folder):
        if name != "config.json" and (name.endswith(".json") or name.endswith(".txt")):
            shutil.copy(os.path.join(a.folder, name), tmp)
    shutil.rmtree(a.out, ignore_errors=True)
    os.replace(tmp, a.out)
    print(f"random checkpoint (seed {a.seed}) in {a.out}")


if __name__ == "__main__":
    main()
