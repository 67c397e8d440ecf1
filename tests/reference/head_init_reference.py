"""The design's head as PyTorch draws it: nn.Embedding for the POS tags and nn.Linear for the classifier,
with PyTorch's own default initialisation (the design's module sets nothing itself).

Usage: head_init_reference.py NUM_POS POS_DIM FEATURES NUM_LABELS SEED
Prints JSON: the drawn values of each parameter (flattened) and the bound nn.Linear's initialisation
uses (from PyTorch's own fan-in computation), for nerpos-model's head-initialisation test.
"""

import json
import math
import sys

import torch
from torch import nn


def main() -> None:
    num_pos, pos_dim, features, num_labels, seed = (int(a) for a in sys.argv[1:6])
    torch.manual_seed(seed)
    pos = nn.Embedding(num_pos, pos_dim)
    classifier = nn.Linear(features, num_labels)
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(classifier.weight)
    json.dump(
        {
            "pos_embedding.weight": pos.weight.detach().flatten().tolist(),
            "classifier.weight": classifier.weight.detach().flatten().tolist(),
            "classifier.bias": classifier.bias.detach().flatten().tolist(),
            "linear_bound": 1.0 / math.sqrt(fan_in),
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
