"""The influence CSV and its thumbnails.

The influence CSV is a console dataset CSV, so the console's viewer shows and sorts it::

    x:image,y:label,influence,loss,suggested_label,confidence,neighbour_agreement,action,datasource_index,original
    influence_thumbnails/000123.png,3,-0.0123,2.31,5,0.93,0.042,relabel,123,train/000123.png

- rows sorted by ``influence`` ascending: the most harmful (most negative) first;
- ``x:image``: the sample's image, path relative to the CSV's folder: the training image
  itself when it fits the thumbnail box (the network's input is at most ``thumb_size``
  pixels high and wide: nothing is copied), otherwise a reduced PNG in the thumbnails folder;
  a data file that is not an image (``.npy``, ...) is always shown where it is. Paths open
  from the CSV's folder even through symbolic links (:mod:`.file_cells`);
- the training CSV's label and feature columns under their own names (:mod:`.table_columns`);
- ``influence``: the trials' combined score (units of the mean validation loss; with the
  default target ``class-centred`` relative to an average row of the sample's class, see
  :mod:`.target`; negative = harmful); ``loss``: the sample's training loss at the trained
  parameters;
- ``suggested_label``: the model's class for the sample, ``confidence`` its probability (both
  empty when the run cannot recommend, e.g. for regression); ``neighbour_agreement``: the
  share of the sample's nearest validation rows, in the network's feature space, that carry
  its label (0-1; low = a likely wrong label; empty when not measured, see
  :mod:`.neighbours`); ``action``: the run's recommendation, ``keep``, ``relabel`` (to
  ``suggested_label``) or ``remove`` (see :mod:`.recommend`);
- ``datasource_index``: 0-based data row of the sample in the training CSV;
- ``original``: the sample's image cell exactly as written in the training CSV.

The thumbnails folder holds ``NNNNNN.png`` (N = the row) and a marker listing them
(:data:`~.ownership.THUMBNAILS_MARKER`), so a later run may replace the folder as a whole.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import List, Mapping, Optional

import numpy as np

from . import interrupts
from .cells import data_path
from .dataset import Dataset
from .errors import DatasetError
from .file_cells import shown_where_they_are
from .made_folders import write_marker
from .ownership import THUMBNAILS_MARKER
from .table_columns import TableColumns, influence_header

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
_ABOUT = "Thumbnails by sgd-influence; it replaces this folder as a whole."


def is_image(cell: str) -> bool:
    """True if a data cell names an image file (one a thumbnail can be made of)."""
    return os.path.splitext(cell.strip())[1].lower() in _IMAGE_EXTS


def fits_box(train: Dataset, image_col: str, size: int) -> bool:
    """True if every image of ``image_col`` is at most ``size`` pixels high and wide.

    The images were decoded to the network's input shape (C, H, W), and the loader refuses
    any other size, so the shape of the decoded variable decides for all rows at once.
    """
    for name, cells in train.columns.items():
        if image_col in cells and name in train.arrays:
            shape = train.arrays[name].shape[1:]
            return len(shape) >= 2 and max(shape[-2:]) <= size
    return False


def make_thumbnail(src: str, dst: str, size: int = 64) -> None:
    """Save a PNG of ``src`` reduced (Lanczos, aspect kept) to fit ``size`` x ``size``.

    Only images larger than the box get one; images that fit are shown as they are (see
    :func:`fits_box`).

    Raises:
        DatasetError: ``src`` cannot be read as an image.
        OSError: ``dst`` cannot be written.

    """
    from PIL import Image

    try:
        im = Image.open(src)
        im.load()
    except (OSError, ValueError) as e:
        raise DatasetError(
            f"{src}: cannot read this image for its thumbnail ({e}); replace or remove the file"
        ) from e
    with im:
        out = im.copy()
        out.thumbnail((size, size), Image.LANCZOS)
        if out.mode not in ("L", "RGB", "RGBA"):
            out = out.convert("RGBA" if "A" in out.mode else "RGB")
        out.save(dst, format="PNG")


def _thumbnail_name(i: int) -> str:
    return f"{i:06d}.png"


@dataclass
class RowCells:
    """What the run's files show of each training row (training-row order, N rows).

    Attributes:
        order: row indices sorted by score ascending (most harmful first, ties in row order).
        labels: each row's label cell, stripped, or its one-hot cells' class
            (:meth:`.table_columns.TableColumns.label_cells`); None without a label.
        actions / suggested / confidence / agreement: the influence CSV's ``action``,
            ``suggested_label``, ``confidence`` and ``neighbour_agreement`` cells.
        images: per row, whether its data-file cell names an image ([] without a file
            column).

    """

    order: np.ndarray
    labels: Optional[List[str]]
    actions: List[str]
    suggested: List[str]
    confidence: List[str]
    agreement: List[str]
    images: List[bool]


def row_cells(train: Dataset, columns: TableColumns, scores: np.ndarray, rec) -> RowCells:
    """The :class:`RowCells` of ``train`` for ``scores`` (float64 (N,)) and the run's
    :class:`~.recommendation.Recommendation` ``rec`` (None: every row ``keep``, no class).
    """
    n = train.size
    if rec is None:
        cells = ["keep"] * n, [""] * n, [""] * n, [""] * n
    else:
        cells = (
            [str(a) for a in rec.action],
            [str(int(k)) if k >= 0 else "" for k in rec.suggested],  # -1: no class (regression)
            [f"{c:.4f}" if np.isfinite(c) else "" for c in rec.confidence],
            [""] * n if rec.agreement is None else [f"{a:.3f}" for a in rec.agreement],
        )
    file = columns.file
    return RowCells(
        np.argsort(scores, kind="stable"),
        columns.label_cells(train),
        *cells,
        [is_image(train.cell(i, file)) for i in range(n)] if file else [],
    )


def image_cells(
    train: Dataset, file_col: Optional[str], images: List[bool], out_folder: str, thumbs: str
) -> List[str]:
    """Each row's ``x:image`` cell for an influence CSV in ``out_folder``: its thumbnail in
    the folder named ``thumbs`` for an image row when ``thumbs`` is given, else the data file
    where it is; '' for every row without a file column.
    """
    if not file_col:
        return [""] * train.size
    shown = shown_where_they_are(train, file_col, out_folder)
    if thumbs:
        for i in range(train.size):
            if images[i]:  # a data file that is no image (.npy, ...) is shown where it is
                shown[i] = f"{thumbs}/{_thumbnail_name(i)}"
    return shown


def write_thumbnails(
    folder: str, train: Dataset, file_col: str, images: List[bool], size: int, progress=None
) -> None:
    """Make the thumbnails folder ``folder``: a PNG of each image row reduced to fit
    ``size`` x ``size`` (:func:`make_thumbnail`), named as :func:`image_cells` names it, and
    the marker listing them (a file not among them stops a later run).

    ``progress``: optional ``(stage, done, total)`` callback.
    """
    os.makedirs(folder)
    for i in range(train.size):
        interrupts.check()
        if not images[i]:
            continue
        src = data_path(train.folder, train.cell(i, file_col))
        make_thumbnail(src, os.path.join(folder, _thumbnail_name(i)), size)
        if progress is not None:
            progress("thumbnails", i + 1, train.size)
    write_marker(folder, THUMBNAILS_MARKER, _ABOUT, False)


def write_influence_csv(
    path: str,
    train: Dataset,
    columns: TableColumns,
    cells: RowCells,
    files: List[str],
    scores: np.ndarray,
    losses: Optional[np.ndarray],
    other_files: Optional[Mapping[str, List[str]]] = None,
) -> None:
    """Write the influence CSV (see the module docstring) to ``path``.

    Args:
        cells: what the CSV shows of each row; ``files``: each row's ``x:image`` cell
            (:func:`image_cells`); ``other_files``: each of ``columns.other_files`` -> its
            rows' cells as they open from the CSV's folder
            (:func:`.file_cells.shown_where_they_are`).
        scores / losses: float64 (N,) in training-row order; no losses: ``loss`` is empty.

    """
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(influence_header(columns))
        for i in cells.order:
            w.writerow(
                ([files[i]] if columns.file else [])
                + ([cells.labels[i]] if columns.label else [])
                + [other_files[c][i] for c in columns.other_files]
                + [train.cell(int(i), c) for c in columns.notes + columns.features]
                + [
                    repr(float(scores[i])),
                    repr(float(losses[i])) if losses is not None else "",
                    cells.suggested[i],
                    cells.confidence[i],
                    cells.agreement[i],
                    cells.actions[i],
                    int(i),
                ]
                + ([train.cell(int(i), columns.file)] if columns.file else [])
            )
