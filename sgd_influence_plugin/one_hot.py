"""Class labels written one-hot: a vector column ``y__0..y__{C-1}`` that the loss compares
with a Softmax over C classes (``KLMultinomial`` or ``BinaryCrossEntropy`` on the Softmax,
:func:`.nnabla_adapter.losses.one_hot_targets`). Its rows hold classes when each is one-hot
(a single 1, the rest 0); a soft row (``0.7,0.3,0``), two 1s or none make it a probability or
multi-label target, without classes. The datasets decide, before anything is computed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .dataset import Dataset


def not_one_hot(dataset: Dataset, column: str) -> str:
    """Where the vector ``column`` of ``dataset`` is first not one-hot (values 0 or 1, one 1
    per row): the file, row, cells and values; empty when every row is.
    """
    values = dataset.arrays[column].reshape(dataset.size, -1)
    good = np.all((values == 0) | (values == 1), axis=1) & (values.sum(axis=1) == 1)
    if good.all():
        return ""
    r = int(np.argmin(good))
    cells = dataset.columns.get(column, [])
    shown = ",".join(dataset.cell(r, c).strip() for c in cells) if cells else str(values[r])
    named = f"{cells[0]}..{cells[-1]}" if cells else column
    return f"{dataset.path} row {dataset.row_number(r)}: {named} = {shown} is not one-hot"


def settle_one_hot(info, datasets: Sequence[Dataset]) -> None:
    """Whether the model's vector label (``info.one_hot``: a loss compares it with a Softmax
    over C classes) holds classes: when every row of every dataset is one-hot, the column
    joins ``info.label_classes`` (C classes, the task a classification on it), and the run
    gives the model's class, class-centred scores and the recommendation; otherwise (soft
    or several labels in a row) the model has no classes and ``info.class_note`` says which
    row decided it. Changes ``info`` in place; a column settled before stays settled.
    """
    for column, classes in dict(getattr(info, "one_hot", {}) or {}).items():
        if column in info.label_classes:
            continue
        why = next((w for w in (not_one_hot(d, column) for d in datasets
                                if column in d.arrays) if w), "")  # fmt: skip
        if why:
            info.class_note = why
            continue
        info.label_classes[column] = int(classes)
        info.task, info.target_column, info.class_note = "classification", column, ""


def settled_as(info, like) -> None:
    """``info``'s one-hot labels settled as ``like``'s were (:func:`settle_one_hot`): the
    same definition trained again (``evaluate --retrain scratch``), whose datasets decided
    them once. Changes ``info`` in place.
    """
    for column in dict(getattr(info, "one_hot", {}) or {}):
        if column in like.label_classes and column not in info.label_classes:
            info.label_classes[column] = like.label_classes[column]
            info.task, info.target_column = like.task, like.target_column
            info.class_note = like.class_note
