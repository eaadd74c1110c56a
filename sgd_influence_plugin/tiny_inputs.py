"""Inputs too small for a result worth having (issue 34, case 11).

- A training set of fewer than 2 rows has nothing to rank, and one smaller than a batch
  replays a single step in which every sample shares one gradient: both are refused before
  computing, with the fix (more rows, or a smaller ``--batch-size``).
- No recommendation is made from fewer than :data:`MIN_RECOMMEND_ROWS` training rows: "remove
  1 of 2 rows" measured on a handful of rows is noise. The run still writes the scores and
  says why it changes nothing.
"""

from __future__ import annotations

from typing import Optional

from .errors import DatasetError

#: Fewest training rows the recommendation (keep / remove) is made from.
MIN_RECOMMEND_ROWS = 100


def check_training_size(train_csv: str, n: int, batch_size: int, flag: Optional[str]) -> None:
    """Refuse a training set with nothing to rank, or smaller than one batch.

    Raises:
        DatasetError: one line naming the file, its size and the fix.

    """
    if n < 2:
        raise DatasetError(
            f"{train_csv}: {n} training row{'s' if n != 1 else ''}; the influence ranks samples "
            "against each other: give a training CSV with many rows (at least 2)"
        )
    if n < batch_size:
        smaller = f"give {flag} {n} or less, or " if flag else ""
        raise DatasetError(
            f"{train_csv}: {n} training rows, fewer than one batch of {batch_size}, so the "
            f"replayed epoch would be a single step in which all samples share one gradient; "
            f"{smaller}use a training CSV with more rows"
        )


def too_few_to_recommend(n: int) -> Optional[str]:
    """Why a training set of ``n`` rows gets no recommendation, or None if it may."""
    if n < MIN_RECOMMEND_ROWS:
        return (
            f"no recommendation: {n} training rows; at least {MIN_RECOMMEND_ROWS} are needed "
            "for a change to be told from noise"
        )
    return None
