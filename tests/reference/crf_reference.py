"""The CRF head's reference: pytorch-crf (torchcrf.CRF, PyPI pytorch-crf 0.7.2) on random inputs —
each sequence's log-likelihood, the gradient of the summed negative log-likelihood with respect to
the emissions, transitions, start and end scores (autograd), and the Viterbi paths — written as the
committed fixture crates/nerpos-model/tests/fixtures/crf/reference.json that nerpos-model's CRF tests
read (in f64; its parameters are pytorch-crf's: transitions[i][j] from tag i to tag j).

Usage: crf_reference.py OUT.json
"""

import json
import sys

import torch
from torchcrf import CRF


def main() -> None:
    torch.manual_seed(7)
    labels, lengths = 5, [1, 3, 6, 9]
    crf = CRF(labels, batch_first=True).double()
    with torch.no_grad():
        for p in (crf.transitions, crf.start_transitions, crf.end_transitions):
            p.uniform_(-1.0, 1.0)
    cases = []
    for n in lengths:
        emissions = torch.randn(1, n, labels, dtype=torch.float64).mul(2.0).requires_grad_(True)
        tags = torch.randint(0, labels, (1, n))
        crf.zero_grad()
        nll = -crf(emissions, tags, reduction="sum")
        nll.backward()
        # (a one-word sequence uses no transition: autograd leaves its gradient unset)
        grad = lambda p: (p.grad if p.grad is not None else torch.zeros_like(p)).flatten().tolist()
        cases.append({
            "emissions": emissions.detach()[0].flatten().tolist(),
            "labels": tags[0].tolist(),
            "nll": nll.item(),
            "d_emissions": emissions.grad[0].flatten().tolist(),
            "d_transitions": grad(crf.transitions),
            "d_start": grad(crf.start_transitions),
            "d_end": grad(crf.end_transitions),
            "viterbi": crf.decode(emissions.detach())[0],
        })
    out = {
        "labels": labels,
        "transitions": crf.transitions.detach().flatten().tolist(),
        "start": crf.start_transitions.detach().tolist(),
        "end": crf.end_transitions.detach().tolist(),
        "cases": cases,
    }
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
