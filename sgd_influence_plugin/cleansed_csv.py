"""The cleansed CSV: the training CSV with rows removed or relabelled, ready to retrain on.

A run writes it beside its influence CSV (``<stem>_cleansed.csv``, the recommendation applied,
or without a share of the most harmful rows); ``sgd-influence cleanse`` writes it from an
influence CSV. Rows keep the training CSV's order and every column; file cells are rewritten
relative to the cleansed CSV's folder (:mod:`.file_cells`), so the console finds the images.
"""

from __future__ import annotations

import csv
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .errors import SettingsError
from .file_cells import rebased


def recommended_changes(actions: Sequence[str], suggested: Sequence) -> Tuple[set, Dict[int, str]]:
    """``(rows to drop, {row: new label})`` from per-row actions (training-row order)."""
    drop = {j for j, a in enumerate(actions) if a == "remove"}
    relabel = {j: str(suggested[j]) for j, a in enumerate(actions) if a == "relabel"}
    return drop, relabel


def run_changes(
    order: np.ndarray,
    actions: Sequence[str],
    suggested: Sequence,
    remove_ratio: Optional[float],
    has_label: bool,
) -> Tuple[set, Dict[int, str]]:
    """What a run's cleansed CSV changes: without the ``round(remove_ratio * N)`` first rows
    of ``order`` (most harmful first) when a ratio is given, else the recommendation.

    Raises:
        SettingsError: the recommendation relabels rows but there is no label column.

    """
    if remove_ratio is not None:
        return set(order[: int(round(remove_ratio * len(order)))].tolist()), {}
    drop, relabel = recommended_changes(actions, suggested)
    if relabel and not has_label:
        raise SettingsError("the recommendation relabels rows but no label column was found")
    return drop, relabel


def write_cleansed(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    drop: set,
    src_folder: str,
    out_folder: str,
    path: str,
    relabel: Optional[Dict[int, str]] = None,
    label_col: Optional[int] = None,
) -> None:
    """Write ``rows`` without the indices in ``drop`` and with ``relabel[j]`` in column
    ``label_col`` of row j; file cells are rewritten relative to ``out_folder`` (where the
    CSV will live), so the console finds the images from there.
    """
    data_cols = [c for c, cell in enumerate(header) if not cell.startswith("#")]
    out_abs = os.path.abspath(out_folder)
    real_dirs: Dict[str, str] = {}
    relabel = relabel or {}
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for j, row in enumerate(rows):
            if j in drop:
                continue
            out = [
                rebased(c, src_folder, out_abs, real_dirs) if k in data_cols else c
                for k, c in enumerate(row)
            ]
            if j in relabel:
                out[label_col] = relabel[j]
            w.writerow(out)
