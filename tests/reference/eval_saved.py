"""Scores a model folder saved by nerpos-train (best/ or last/) with the PyTorch reference's own
evaluation (train_reference.evaluate: Hugging Face BertModel + head, seqeval micro F1 on the dev split):
separates "does nerpos train differently" from "does nerpos score differently".

  eval_saved.py --data DATASET_DIR --model RUN_DIR/best [--split dev]
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import BertModel

sys.path.insert(0, os.path.dirname(__file__))
from model_reference import BertNerPos  # noqa: E402
from train_reference import evaluate, read_split  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--split", default="dev")
    a = ap.parse_args()
    manifest = json.load(open(os.path.join(a.data, "manifest.json")))
    meta = json.load(open(os.path.join(a.model, "nerpos.json")))
    assert meta["labels"] == manifest["labels"], "label vocabularies differ"
    bert = BertModel.from_pretrained(a.model, add_pooling_layer=False)
    model = BertNerPos(bert, len(meta["pos"]), meta["pos_dim"], len(meta["labels"]), 0.0)
    w = load_file(os.path.join(a.model, "model.safetensors"))
    with torch.no_grad():
        model.pos_embedding.weight.copy_(w["pos_embedding.weight"])
        model.classifier.weight.copy_(w["classifier.weight"])
        model.classifier.bias.copy_(w["classifier.bias"])
    rows = read_split(a.data, manifest, a.split)
    f1 = evaluate(model, rows, manifest["labels"], manifest["tokenizer"]["pad_token_id"])
    print(json.dumps({"model": a.model, "split": a.split, "micro_f1": f1}))


if __name__ == "__main__":
    main()
