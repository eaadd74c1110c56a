"""The trials CSV (``<stem>_trials.csv``): each trial's raw scores, in training-row order.

For example::

    datasource_index,trial_0,trial_1
    0,-0.0012,-0.0009

Scores keep every digit (``repr`` of the float64).
"""

from __future__ import annotations

import csv

import numpy as np


def write_trials(path: str, trial_scores: np.ndarray) -> None:
    """Write ``trial_scores`` (float64 (M, N): M trials, N training rows) to ``path``."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["datasource_index"] + [f"trial_{m}" for m in range(len(trial_scores))])
        for i in range(np.shape(trial_scores)[1]):
            w.writerow([i] + [repr(float(t[i])) for t in trial_scores])
