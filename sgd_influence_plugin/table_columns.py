"""Which of the training CSV's columns the influence CSV repeats, and under which names.

The influence CSV keeps the dataset's own header: its data-file column (``x:image``, shown as
a thumbnail or a path), its label column (``y:label``, ``y:Survived``, a bare ``y``), any
other data-file column the network reads (a second image input, as a path), its comment
columns (``# x:text``: the console feeds them to no variable, but the text classifier's
words are there), and every number column the network reads (``x__0:Pclass`` ...
``x__6:Embarked``), then the run's own columns (:data:`SCORE_COLUMNS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .cells import is_file_cell
from .dataset import Dataset, parse_header_cell
from .target import one_hot_label

#: The run's columns, after the training CSV's own (see :func:`influence_header`).
SCORE_COLUMNS = [
    "influence",
    "loss",
    "suggested_label",
    "confidence",
    "neighbour_agreement",
    "action",
    "datasource_index",
]


@dataclass(frozen=True)
class TableColumns:
    """The training CSV's columns (header cells) that the influence CSV repeats.

    Attributes:
        file: the column of data files (images, per-sample ``.csv``), shown as a thumbnail
            or a path and repeated as ``original``; None for number-only tables.
        label: the column the loss compares the output with (the class label, or the
            regression target), e.g. ``y:label``, ``y:Survived`` or ``y``; None if unknown.
        features: every other number column the network reads, in the CSV's order, e.g.
            ``x__0:Pclass`` ... ``x__6:Embarked``, so a row reads without the training CSV.
        notes: the comment columns (header cell starting with ``#``, e.g. ``# x:text``, the
            words of a text classifier's row), in the CSV's order.
        one_hot: a class label written one-hot, ``y__0`` ... ``y__{C-1}`` (class k's cell
            at place k; ``label`` is then None): they stay among ``features`` as written,
            and each row's class is the place of its 1.
        label_files: the label column names data files (an image-to-image target
            ``y:image``, a label map): no classes, and its cells are paths to rebase.
        other_files: the network's other data-file columns (a second image input), in the
            order it reads them; their cells are paths to rebase.

    """

    file: Optional[str]
    label: Optional[str]
    features: Tuple[str, ...] = ()
    notes: Tuple[str, ...] = ()
    one_hot: Tuple[str, ...] = ()
    label_files: bool = False
    other_files: Tuple[str, ...] = ()

    def label_cells(self, train: Dataset) -> Optional[List[str]]:
        """Each row's label as text: its label cell, stripped, or the class of its one-hot
        cells (``"2"`` for ``0,0,1``); None without a label column.
        """
        if self.label:
            return [train.cell(i, self.label).strip() for i in range(train.size)]
        if self.one_hot:
            return [
                str(
                    max(
                        range(len(self.one_hot)),
                        key=lambda k: float(train.cell(i, self.one_hot[k])),
                    )
                )
                for i in range(train.size)
            ]
        return None


def find_columns(
    train: Dataset, used_columns: Sequence[str], target: Optional[str] = None, one_hot=False
) -> TableColumns:
    """The :class:`TableColumns` of ``train`` for a network that reads ``used_columns``
    (dataset variables) and whose loss compares with variable ``target`` (None: the first
    single-cell number column is taken for the label); ``one_hot``: ``target`` is a class
    label written one-hot (``ModelInfo.one_hot`` settled into its classes).

    The file column is the first file column other than the target's (an image target's
    ``y:image`` is the label); an autoencoder's target is its input ``x``: its file column,
    and no label.
    """
    files: List[Tuple[str, str]] = []  # (variable, header cell) of each file column
    label_col = None
    numbers: List[str] = []
    for var in used_columns:
        cells = train.columns.get(var, [])
        ci = [train.header.index(c) for c in cells]
        if len(cells) == 1 and any(is_file_cell(row[ci[0]]) for row in train.rows):
            files.append((var, cells[0]))
        elif len(cells) == 1 and target is None and label_col is None:
            label_col = cells[0]
        else:
            numbers.extend(cells)
    others = [c for var, c in files if var != target] or [c for _, c in files]
    file_col = others[0] if others else None
    if target is not None and len(train.columns.get(target, [])) == 1:
        label_col = train.columns[target][0]
        label_col = None if label_col == file_col else label_col
    features = tuple(c for c in train.header if c in numbers and c != label_col)
    cells = train.columns.get(target, []) if one_hot and target is not None else []
    by_class = tuple(sorted(cells, key=lambda c: parse_header_cell(c)[1] or 0))
    notes = tuple(c for c in train.header if c.startswith("#"))
    one_hot_cells = by_class if len(cells) > 1 else ()
    label_files = label_col in (c for _, c in files)
    more = tuple(c for _, c in files if c not in (file_col, label_col))
    return TableColumns(
        file_col, label_col, features, notes=notes, one_hot=one_hot_cells,
        label_files=label_files, other_files=more,
    )  # fmt: skip


def model_label_cells(train: Dataset, info) -> Optional[List[str]]:
    """Each training row's label as the model ``info`` reads it
    (:meth:`TableColumns.label_cells` of its label column, one-hot or not), or None.
    """
    columns = find_columns(train, list(info.input_shapes), info.target_column, one_hot_label(info))
    return columns.label_cells(train)


def influence_header(columns: TableColumns) -> List[str]:
    """The influence CSV's header: the training CSV's file, label, other file, comment and
    feature columns under their own names, the run's :data:`SCORE_COLUMNS`, then
    ``original`` (the file cell as written in the training CSV) when there is a file column.
    """
    own = [c for c in (columns.file, columns.label) if c] + list(
        columns.other_files + columns.notes + columns.features
    )
    return own + SCORE_COLUMNS + (["original"] if columns.file else [])


def row_details(train: Dataset, columns: TableColumns, images: Sequence[bool]) -> List[str]:
    """What the report shows for a row with no image: its comment cells (a text
    classifier's words), then its feature values (``Pclass=3, Age=22``, names from the
    header's label part), or the data file it names.
    """
    names = [parse_header_cell(c)[2] or c for c in columns.features]
    out = []
    for i in range(train.size):
        if images and images[i]:
            out.append("")
            continue
        parts = [f"{n}={train.cell(i, c).strip()}" for n, c in zip(names, columns.features)]
        if columns.file:
            parts.insert(0, train.cell(i, columns.file).strip())
        parts[:0] = [train.cell(i, c).strip() for c in columns.notes]
        out.append(", ".join(parts))
    return out
