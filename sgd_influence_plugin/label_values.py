"""The values of the labels a loss reads, checked once the datasets are decoded: class indices
in 0..C-1, one-hot rows (:mod:`.one_hot`), label maps (every pixel a class), and the word
indices an Embed reads (:mod:`.word_indices`). Every problem is a :class:`DatasetError` naming
the file, the row and the column.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .cells import is_file_cell
from .dataset import Dataset
from .errors import DatasetError
from .one_hot import not_one_hot, settle_one_hot
from .word_indices import check_word_indices


def check_label_values(dataset: Dataset, label_classes: Mapping[str, int]) -> None:
    """Every label that feeds a categorical loss is a whole number in 0..C-1.

    Args:
        dataset: a decoded dataset.
        label_classes: dataset column -> number of classes C (``ModelInfo.label_classes``).

    Raises:
        DatasetError: the first row whose label is not, naming the file, row and column.

    """
    for column, classes in label_classes.items():
        if column not in dataset.arrays:
            continue
        if dataset.arrays[column].reshape(dataset.size, -1).shape[1] > 1:
            why = not_one_hot(dataset, column)
            if why:
                raise DatasetError(f"{why}; each row needs one 1 and {classes - 1} zeros")
            continue
        cells = dataset.columns.get(column, [])
        header_cell = cells[0] if len(cells) == 1 else None
        ci = dataset.header.index(header_cell) if header_cell else None
        values = dataset.arrays[column].reshape(len(dataset.rows), -1)
        for r in range(dataset.size):
            text = dataset.rows[r][ci].strip() if ci is not None else ""
            if ci is not None and not is_file_cell(text):
                v = float(text)  # the loader accepted it as a number: exact, in float64
            else:
                v = float(values[r][0])
                text = f"{v:g}"
            where = f"{dataset.path} row {dataset.row_number(r)}, column '{header_cell or column}'"
            if v != int(v):
                raise DatasetError(
                    f"{where}: label '{text}' is not a whole number; labels are class indices "
                    f"0..{classes - 1}"
                )
            if not 0 <= v < classes:
                raise DatasetError(
                    f"{where}: label {text} is out of range for the network's {classes} classes "
                    f"(0..{classes - 1}); fix the label, or the size of the network's output"
                )


def check_label_maps(dataset: Dataset, label_maps: Mapping[str, int]) -> None:
    """Every value of a label map (``ModelInfo.label_maps``: column -> C) is a whole number in
    0..C-1, as :func:`check_label_values` checks one label.

    Raises:
        DatasetError: the first row holding another value, naming the file, row and column.

    """
    for column, classes in label_maps.items():
        if column not in dataset.arrays:
            continue
        values = dataset.arrays[column].reshape(dataset.size, -1).astype(np.float64)
        bad = (values != np.round(values)) | (values < 0) | (values >= classes)
        if not bad.any():
            continue
        r = int(np.argmax(bad.any(axis=1)))
        v = float(values[r][np.argmax(bad[r])])
        cells = dataset.columns.get(column, [column])
        where = f"{dataset.path} row {dataset.row_number(r)}, column '{cells[0]}'"
        raise DatasetError(
            f"{where}: the label map holds {v:g}, not a class index 0..{classes - 1}; a label "
            "map image must be read without the dataset's image normalization (it divides by "
            "255), and hold no class beyond the network's output"
        )


def check_labels(info, datasets: Sequence[Dataset]) -> None:
    """:func:`check_label_values` of each dataset for the model ``info`` describes (its
    one-hot labels settled first, :func:`settle_one_hot`), and the word indices its Embed
    layers read (:func:`.word_indices.check_word_indices`).

    Raises:
        DatasetError: the first label or word index out of place.

    """
    settle_one_hot(info, datasets)
    for d in datasets:
        check_label_values(d, getattr(info, "label_classes", {}))
        check_label_maps(d, getattr(info, "label_maps", {}))
        check_word_indices(d, getattr(info, "word_indices", {}))
