"""The trials CSV (``<stem>_trials.csv``): each trial's raw scores, in training-row order.

For example::

    datasource_index,trial_0,trial_1
    0,-0.0012,-0.0009

A run that recommends adds ``candidate_order_0,...``: each trial's scores from half A of the
validation rows, which ordered the candidates (:mod:`.crossfit`); the two-way check of a
small validation set (:mod:`.pooled_check`) also ``candidate_order_b_0,...``, half B's.
Scores keep every digit (``repr`` of the float64).
"""

from __future__ import annotations

import csv
from typing import Optional

import numpy as np


def write_trials(
    path: str,
    trial_scores: np.ndarray,
    candidate_scores: Optional[np.ndarray] = None,
    half_b_scores: Optional[np.ndarray] = None,
) -> None:
    """Write ``trial_scores`` (float64 (M, N): M trials, N training rows) to ``path``, then
    ``candidate_scores`` and ``half_b_scores`` (the same shape) when given.
    """
    heads = [f"trial_{m}" for m in range(len(trial_scores))]
    every = list(trial_scores)
    for name, more in (("candidate_order", candidate_scores), ("candidate_order_b", half_b_scores)):
        if more is not None:
            heads += [f"{name}_{m}" for m in range(len(more))]
            every += list(more)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["datasource_index"] + heads)
        for i in range(np.shape(trial_scores)[1]):
            w.writerow([i] + [repr(float(t[i])) for t in every])
