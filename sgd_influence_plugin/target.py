"""What a score estimates: the replay's raw leave-one-out estimate, or that estimate relative to
the sample's class (the default).

The replay (:func:`.replay.replay`) gives, for each training row j, ``infl[j]``: the first-order
change of the mean validation loss if row j were left out of the replayed epoch (target
``plain``, Hara et al.). On a classifier that change holds a part shared by every row of a
class: leaving out any row of class c shifts the model's prior for c (its output bias and
everything that acts like it) the same way. Where that shared part dominates, e.g. raw,
unscaled table features feeding ReLU units, the sign of ``infl`` follows the label: every row
of one class harmful, every row of the other helpful (issue 36).

Target ``class-centred`` (the default) removes it::

    score[j] = infl[j] - mean(infl[i] for the training rows i with j's given label)

= the change of the mean validation loss if row j were left out, minus the change if an
average row of its class were left out: what is particular to the row. It is an exact linear
function of the replay's estimates (each class's scores sum to zero), so it is as faithful as
they are. Negative = leaving the row out lowers the validation loss more than leaving out a
typical row of its class = harmful. Models without exactly one categorical label
(regression, several outputs) have no classes, and their scores stay ``plain``.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

#: What the scores estimate: ``class-centred`` (the default: the replay's estimate minus the
#: mean of its class's estimates) or ``plain`` (the replay's estimate as it is).
TARGETS = ("class-centred", "plain")
#: The sign convention's second half, where the scores are class-centred.
CENTRING_SENTENCE = "with target class-centred, more than removing an average sample of its class"


def centring_words(target_applied) -> str:
    """What the summary and the report say the scores are besides the change of the mean
    validation loss, for the target :func:`applied` gave (None: a record without it).
    """
    if target_applied == "plain":
        return "not centred by class (settings: target)"
    return "minus the same for an average sample of its class (settings: target)"


def _label_column(info) -> Optional[str]:
    """The model's one categorical label column (``info.label_classes``), or None."""
    classes = dict(getattr(info, "label_classes", {}) or {})
    return next(iter(classes)) if len(classes) == 1 else None


def one_hot_label(info) -> bool:
    """Whether the model's one class label is written one-hot (``info.one_hot``, settled
    into ``info.label_classes`` by the datasets).
    """
    column = _label_column(info)
    return column is not None and column in (getattr(info, "one_hot", {}) or {})


def class_labels(info, arrays: Mapping[str, np.ndarray]) -> Optional[np.ndarray]:
    """The given class of every training row, or None for a model without classes.

    Args:
        info: the model's ``ModelInfo``; its ``label_classes`` (column -> C) must name exactly
            one categorical label column.
        arrays: the training arrays, column -> (N, ...); the label column holds 0..C-1.

    Returns:
        int64 (N,), or None when the model has no single categorical label or the arrays lack
        its column.

    """
    column = _label_column(info)
    if column is None or column not in arrays:
        return None
    return given_classes(arrays[column])


def given_classes(values: np.ndarray) -> np.ndarray:
    """The class of every row of a label column's array: a class index (N, 1) as it is, a
    one-hot vector (N, C > 1) by the place of its 1 (the model's ``one_hot`` labels, checked
    one-hot by ``label_values.check_label_values``); int64 (N,).
    """
    values = np.asarray(values)
    flat = values.reshape(len(values), -1)
    if flat.shape[1] > 1:
        return np.argmax(flat, axis=1).astype(np.int64)
    return np.rint(flat[:, 0]).astype(np.int64)


def with_classes(values: np.ndarray, rows, classes) -> np.ndarray:
    """A copy of a label column's array (as :func:`given_classes` reads it) with ``rows``
    given ``classes``: the index written, or the one-hot vector of the class.
    """
    out = np.array(values, copy=True)
    flat = out.reshape(len(out), -1)
    rows = np.asarray(rows, dtype=np.int64)
    if flat.shape[1] > 1:
        flat[rows] = 0
        flat[rows, np.asarray(classes, dtype=np.int64)] = 1
    else:
        flat[rows, 0] = classes
    return out


def centre_by_class(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each score minus the mean score of the rows with the same label; a class of a single
    row keeps its score (it has no average row to be compared with: centred, it would be 0 by
    construction and say nothing).

    Args:
        scores: float (N,) replay estimates, training-row order.
        labels: int (N,) the given class of each row, same order.

    Returns:
        float64 (N,): within every class of two rows or more the scores sum to zero (up to
        rounding).

    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"{len(labels)} labels for {len(scores)} scores")
    _, group = np.unique(labels, return_inverse=True)
    sums = np.bincount(group, weights=scores)
    counts = np.bincount(group)
    means = np.where(counts >= 2, sums / counts, 0.0)
    return scores - means[group]


def applied(target: str, info) -> str:
    """The target the scores are given: ``target``, except ``plain`` where ``class-centred``
    has no class to centre by (a regression, a vector target: ``info.label_classes`` does
    not name exactly one label column), as :func:`apply_target` does; what the settings,
    the summary and the report say the scores are.
    """
    if target == "class-centred" and _label_column(info) is None:
        return "plain"
    return target


def apply_target(
    scores: np.ndarray, target: str, info, arrays: Mapping[str, np.ndarray]
) -> np.ndarray:
    """The scores of ``target`` (one of :data:`TARGETS`) from the replay's estimates.

    Args:
        scores: float (N,) the replay's ``infl`` (change of the mean validation loss if the
            row were left out; negative = harmful); or (K, N), one row per query vector
            (:mod:`.crossfit`), each row on its own.
        target: ``plain`` returns them as float64; ``class-centred`` applies
            :func:`centre_by_class` with :func:`class_labels` (unchanged without classes).
        info / arrays: the model's ``ModelInfo`` and the training arrays (for the labels).

    Raises:
        ValueError: unknown ``target``.

    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")
    labels = class_labels(info, arrays) if target == "class-centred" else None
    scores = np.asarray(scores, dtype=np.float64)
    if labels is None:
        return scores
    if scores.ndim == 2:
        return np.stack([centre_by_class(row, labels) for row in scores])
    return centre_by_class(scores, labels)
