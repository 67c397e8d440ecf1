"""Reads a run's TensorBoard event files with TensorBoard's own event reader and prints every scalar as
JSON: {"tag": [[step, value], ...], ...}. The trainer's tests compare it with what the run logged. A
non-finite value (a diverged step's loss) is printed as null: JSON has no NaN.

Usage: read_tensorboard.py TB_DIR
"""
import json
import math
import sys
from pathlib import Path

from tensorboard.backend.event_processing import event_file_loader

scalars = {}
files = sorted(Path(sys.argv[1]).glob("events.out.tfevents.*"))
if not files:
    sys.exit(f"no event files in {sys.argv[1]}")
for path in files:
    for event in event_file_loader.EventFileLoader(str(path)).Load():
        for value in event.summary.value:
            # TensorBoard's loader migrates simple_value scalars to tensors; read either form.
            if value.HasField("simple_value"):
                x = value.simple_value
            else:
                x = value.tensor.float_val[0]
            scalars.setdefault(value.tag, []).append([event.step, x if math.isfinite(x) else None])
print(json.dumps(scalars))
