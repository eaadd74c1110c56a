"""The word indices a text classifier reads, checked before anything is computed.

An ``Embed`` layer takes each value of its input as a row of its weight W (V rows, one per word
of the dictionary the dataset was made with: the console's text plugin writes 0 for the end of
a text, 1 for a word outside the dictionary). nnabla truncates the value toward zero and reads
that row with no bounds check, so a value outside 0..V-1 reads memory beyond W: a wrong loss,
gradient and score with no error, or, far outside, a process killed by a segmentation fault.
:func:`check_word_indices` refuses such a value in one line naming its cell; the columns come
from the model (``ModelInfo.word_indices``, :mod:`.nnabla_adapter.indices`).
"""

from __future__ import annotations

from typing import Mapping, Tuple

import numpy as np

from .dataset import Dataset
from .errors import DatasetError


def check_word_indices(dataset: Dataset, word_indices: Mapping[str, Tuple[str, int]]) -> None:
    """Every value an Embed layer reads is a whole number in 0..V-1, as nnabla gets it.

    Args:
        dataset: a decoded dataset (its float32 arrays are what the network is fed).
        word_indices: dataset column -> (Embed layer, V), e.g. ``{"x": ("Embed", 50)}``.

    Raises:
        DatasetError: the first value that is not, naming the file, the row, the column (and
            the value's place in a per-sample file), the layer and what to do.

    """
    for column, (layer, words) in word_indices.items():
        if column not in dataset.arrays:
            continue
        values = np.asarray(dataset.arrays[column], dtype=np.float64).reshape(dataset.size, -1)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (values != np.floor(values)) | (values < 0)
            bad |= values >= words
        if not bad.any():
            continue
        r, k = (int(i) for i in np.argwhere(bad)[0])
        where, text = _place(dataset, column, r, k, values)
        v = values[r, k]
        if np.isfinite(v) and v != np.floor(v) and 0 <= v < words:
            raise DatasetError(
                f"{where}: {text} is not a whole number, but Embed layer '{layer}' reads it as a "
                f"word index (nnabla would take word {int(v)}); word indices are whole numbers "
                f"0..{words - 1}: check that this column holds the text's word indices"
            )
        raise DatasetError(
            f"{where}: {text} is not a word index of Embed layer '{layer}' (0..{words - 1}: its "
            f"dictionary has {words} words), and nnabla would read memory outside the layer's "
            "weights; make the dataset with the dictionary (index file) the model was trained "
            "with, or give the Embed layer as many words (NumClass) and train again"
        )


def _place(dataset: Dataset, column: str, r: int, k: int, values) -> Tuple[str, str]:
    """``(where, the value as written)`` of element k of variable ``column`` in data row r:
    ``"train.csv row 5, column 'x__2'"`` and the cell's text, or, for a per-sample file,
    ``"... column 'x:image' (text/9.csv, value 7 of 12)"`` and the value read from it.
    """
    cells = dataset.columns.get(column, [])
    row = f"{dataset.path} row {dataset.row_number(r)}"
    if len(cells) == values.shape[1]:  # one header cell per value: x__0, x__1, ...
        return f"{row}, column '{cells[k]}'", dataset.cell(r, cells[k]).strip()
    if len(cells) == 1:  # one file cell holds them all
        file = dataset.cell(r, cells[0]).strip()
        where = f"{row}, column '{cells[0]}' ({file}, value {k + 1} of {values.shape[1]})"
        return where, f"{values[r, k]:g}"
    return f"{row}, variable '{column}' (value {k + 1} of {values.shape[1]})", f"{values[r, k]:g}"
