"""Do a training row's nearest validation rows share its label? A signal for the
recommendation that the trained model's own probabilities lack.

A network trained on a wrong label for 20 epochs often fits it: the model's probability of
the given label is then high, and neither the training loss nor the margin flags the row. The
validation rows carry labels that the user trusts and that the training did not fit. In the
network's own feature space (the input of its last learned layer, see
``NnablaModel.features``), a training row whose nearest validation rows mostly carry another
label is likelier to be mislabelled than one whose neighbours agree with it (the deep k-nearest
neighbours filter of Bahri et al., 2020, here with the clean validation rows as the reference).

Distances are cosine (features scaled to unit length), so the scale of the features does not
weigh in. The number of neighbours is ``round(sqrt(V))`` for V reference rows
(:func:`neighbour_count`): the usual rate for a consistent k-nearest-neighbour estimate (k
grows, k / V shrinks), not a value tuned to a dataset.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .probabilities import as_probabilities
from .target import given_classes

#: Training rows compared with the reference rows at once (bounds the memory to
#: CHUNK x V float32 distances).
CHUNK = 1024
#: Features of the training rows larger than this (N x width float32) are not computed: the
#: signal is skipped (a network whose last learned layer reads a wide map, say).
MAX_FEATURE_BYTES = 2**30


def neighbour_count(n_reference: int) -> int:
    """K for ``n_reference`` reference rows: ``round(sqrt(n_reference))``, between 1 and
    ``n_reference`` (e.g. 71 for 5,000 rows, 10 for 100).
    """
    return max(1, min(int(n_reference), int(round(math.sqrt(n_reference)))))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def label_agreement(
    features: np.ndarray,
    labels: np.ndarray,
    reference_features: np.ndarray,
    reference_labels: np.ndarray,
    k: Optional[int] = None,
) -> np.ndarray:
    """For each row, the share of its k nearest reference rows whose label is the row's.

    Args:
        features: (N, ...) the training rows' features (flattened per row).
        labels: (N,) their given labels.
        reference_features: (V, ...) the reference (validation) rows' features, same width.
        reference_labels: (V,) their labels.
        k: neighbours per row (default :func:`neighbour_count` of V).

    Returns:
        float64 (N,) in [0, 1]: 0 = no neighbour carries the row's label (a likely wrong
        label), 1 = all do. Nearest = largest cosine similarity (among reference rows
        exactly as near as the k-th, numpy's selection decides, the same in every run).

    Raises:
        ValueError: widths differ, no reference rows, or features that are not finite.

    """
    q = _unit(features)
    ref = _unit(reference_features)
    if q.shape[1] != ref.shape[1]:
        raise ValueError(f"feature widths differ: {q.shape[1]} and {ref.shape[1]}")
    if len(ref) == 0:
        raise ValueError("no reference rows")
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(ref))):
        raise ValueError("features are not finite")
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    ref_labels = np.asarray(reference_labels).reshape(-1).astype(np.int64)
    k = neighbour_count(len(ref)) if k is None else max(1, min(int(k), len(ref)))
    out = np.empty(len(q), dtype=np.float64)
    for start in range(0, len(q), CHUNK):
        sim = q[start : start + CHUNK] @ ref.T  # (b, V)
        nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # the k largest, any order
        same = ref_labels[nearest] == labels[start : start + CHUNK, None]
        out[start : start + CHUNK] = same.mean(axis=1)
    return out


#: Float32 copies of the features held at once: gathered batch by batch and joined, then
#: scaled to unit length (:func:`_unit`).
FEATURE_COPIES = 2
#: Bytes per entry of a chunk's distances: the float32 similarities, their negation and
#: the int64 selection of the nearest.
DISTANCE_BYTES = 16


def computed_width(width: Optional[int], n: int) -> int:
    """Values per row of the features computed for ``n`` training rows of a network whose
    features are ``width`` wide (None: it has none): 0 when none are, as for a network
    without them or features over :data:`MAX_FEATURE_BYTES`.
    """
    return int(width) if width and n * int(width) * 4 <= MAX_FEATURE_BYTES else 0


def memory_need(width: Optional[int], n: int, n_reference: int) -> int:
    """Bytes the agreement of ``n`` training rows with ``n_reference`` rows takes at most
    (the memory check's estimate, :mod:`.memory`): :data:`FEATURE_COPIES` of both rows'
    features and one chunk's distances; 0 when no features are computed.
    """
    width = computed_width(width, n)
    if not width:
        return 0
    copies = FEATURE_COPIES * 4 * width * (n + n_reference)
    return copies + DISTANCE_BYTES * min(n, CHUNK) * n_reference


def why_not(model, n: int, reference, label_column: str) -> Optional[str]:
    """Why the agreement cannot be measured for ``n`` training rows with ``model`` and the
    ``reference`` rows, or None when it can: no reference rows, no feature layer
    (``model.feature_width`` is None), or features over :data:`MAX_FEATURE_BYTES`.
    """
    if reference is None or len(reference[label_column]) == 0:
        return "no validation rows for the influence"
    width = model.feature_width
    if width is None:
        return "the executor network has no layer with parameters"
    if not computed_width(width, n):
        return (
            f"{width} features per row would take more than {MAX_FEATURE_BYTES >> 20} MiB for "
            f"{n} training rows"
        )
    return None


def model_agreement(model, features, labels, reference, label_column: str):
    """``(agreement float64 (N,) or None, what was measured: dict)``: for each training row
    (``features`` (N, D) from ``model.features``, given ``labels`` (N,)), the share of its
    nearest ``reference`` rows (the validation rows the influence used) in ``model``'s
    feature space that carry its label (:func:`label_agreement`). None, and the dict says
    why, when the features are not finite.
    """
    ref_feats = model.features(reference)
    ref_labels = given_classes(reference[label_column])
    try:
        agreement = label_agreement(features, labels, ref_feats, ref_labels)
    except ValueError as e:
        return None, {"used": False, "why": f"features: {e}"}
    return agreement, {
        "used": True,
        "feature": model.info.runtime_features,
        "width": int(ref_feats.shape[1]),
        "reference_rows": int(len(ref_feats)),
        "k": neighbour_count(len(ref_feats)),
    }


def training_signals(model, train, reference, label_column: str, *more):
    """``(prob float64 (N, C), agreement float64 (N,) or None, neighbours: dict)``: the
    model's class probabilities on the training rows and their validation neighbours'
    agreement with the ``reference`` rows (this module; the dict says what was
    measured, or why not), from one pass of the executor over the training rows. Each
    reference of ``more`` (the two-way check's, :mod:`.pooled_check`) adds two items: the
    same with it.
    """
    n = len(train[label_column])
    refs = [reference, *more]
    whys = [why_not(model, n, r, label_column) for r in refs]
    if all(why is not None for why in whys):
        prob = as_probabilities(model.predict(train))
        out, feats = None, None
    else:
        out, feats = model.predict_with_features(train)
        prob = as_probabilities(out)
    labels = given_classes(train[label_column])
    signals = [prob]
    for ref, why in zip(refs, whys):
        if why is not None:
            signals += [None, {"used": False, "why": why}]
        else:
            signals += list(model_agreement(model, feats, labels, ref, label_column))
    return tuple(signals)
