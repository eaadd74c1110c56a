"""Applying an influence CSV to its training CSV (``sgd-influence cleanse``): reading and checking
the influence CSV against the training CSV, then writing the cleansed CSV with the
recommendation (the ``action`` column) or a number of most harmful rows removed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from . import places, validation
from .cells import is_file_cell
from .cleansed_csv import recommended_changes, write_cleansed
from .dataset import parse_header_cell, read_csv_rows, read_csv_table
from .errors import InputError
from .io_utils import data_path
from .output import companion_path
from .output_set import MAIN, OutputSet, write
from .ownership import output_set, read_ledger, set_name
from .relabels import check_relabels, relabel_without_class


@dataclass
class InfluenceTable:
    """An influence CSV as ``sgd-influence run`` wrote it, in file order.

    Attributes:
        index: int64 (n,) datasource_index; ``influence``: float64 (n,).
        original / labels: the ``original`` and label cells (None entries without the
            column); the label column is :func:`label_header`'s.
        actions / suggested: the ``action`` and ``suggested_label`` cells (None without the
            columns, e.g. a CSV from an older version).

    """

    index: np.ndarray
    influence: np.ndarray
    original: List[Optional[str]]
    labels: List[Optional[str]]
    actions: Optional[List[str]] = None
    suggested: Optional[List[str]] = None
    label_header: Optional[str] = None
    one_hot: Tuple[str, ...] = ()


def label_header(header: List[str]) -> Optional[str]:
    """The label column of an influence CSV: ``y:label``, else the one single-value column of
    the console's label variable ``y`` under the training CSV's own name (``y:Survived``,
    ``y``); None when there is none.
    """
    if "y:label" in header:
        return "y:label"
    named_y = [c for c in header if parse_header_cell(c)[:2] == ("y", None)]
    return named_y[0] if len(named_y) == 1 else None


def one_hot_header(header: List[str], rows: List[List[str]]) -> Tuple[str, ...]:
    """The cells ``y__0..y__{C-1}`` (C > 1) of a class label written one-hot, class k's at
    place k, when the header has them and every row is one-hot; else ().
    """
    cells = {parse_header_cell(c)[1]: c for c in header if parse_header_cell(c)[0] == "y"}
    if len(cells) < 2 or None in cells or sorted(cells) != list(range(len(cells))):
        return ()
    cols = [header.index(cells[k]) for k in range(len(cells))]
    for row in rows:
        values = [_number(row[c]) for c in cols]  # "1", "1.0", " 1" as the loader reads them
        if None in values or sorted(values) != [0.0] * (len(cols) - 1) + [1.0]:
            return ()
    return tuple(cells[k] for k in range(len(cells)))


def _number(cell: str) -> Optional[float]:
    try:
        return float(cell)
    except ValueError:
        return None


def read_influence_csv(path: str) -> InfluenceTable:
    """Read an influence CSV that ``sgd-influence run`` wrote, in file order.

    Raises:
        InputError: missing file or columns, a non-numeric cell, an influence that is NaN
            or infinite, or an unknown action.

    """
    header, rows = read_csv_table(path)
    for col in ("influence", "datasource_index"):
        if col not in header:
            raise InputError(
                f"{path}: no '{col}' column; give the influence CSV that 'sgd-influence run' wrote"
            )
    ci, cs = header.index("datasource_index"), header.index("influence")
    co = header.index("original") if "original" in header else None
    label, one_hot, cl = _label_cells(header, rows)
    ca = header.index("action") if "action" in header else None
    cg = header.index("suggested_label") if "suggested_label" in header else None
    idx, infl, orig, labels, actions, suggested = [], [], [], [], [], []
    for r, row in enumerate(rows):
        try:
            idx.append(int(row[ci]))
            infl.append(float(row[cs]))
        except ValueError as e:
            raise InputError(
                f"{path} row {r + 1}: datasource_index '{row[ci]}' / influence "
                f"'{row[cs]}' must be numbers"
            ) from e
        if not np.isfinite(infl[-1]):
            raise InputError(
                f"{path} row {r + 1}: influence '{row[cs]}' is not a finite number; this "
                "influence CSV is damaged: compute it again with 'sgd-influence run'"
            )
        orig.append(row[co] if co is not None else None)
        labels.append(row[cl] if isinstance(cl, int) else _class_of(row, cl))
        if ca is not None:
            act = row[ca].strip()
            if act not in ("keep", "relabel", "remove"):
                raise InputError(
                    f"{path} row {r + 1}: action '{row[ca]}' must be keep, relabel or remove"
                )
            if act == "relabel" and (cg is None or not row[cg].strip()):
                raise InputError(relabel_without_class(path, r, cg is not None and not any(
                    x[cg].strip() for x in rows)))  # fmt: skip
            actions.append(act)
            suggested.append(row[cg].strip() if cg is not None else "")
    return InfluenceTable(
        np.array(idx, dtype=np.int64),
        np.array(infl, dtype=np.float64),
        orig,
        labels,
        actions if ca is not None else None,
        suggested if ca is not None else None,
        label,
        one_hot,
    )


def _label_cells(header: List[str], rows: List[List[str]]):
    """``(label column or None, one-hot cells, where a row's label is)``: the label column's
    index, or the one-hot cells' indices (:func:`one_hot_header`; [] without either).
    """
    label = label_header(header)
    one_hot = () if label else one_hot_header(header, rows)
    return label, one_hot, header.index(label) if label else [header.index(c) for c in one_hot]


def _class_of(row: List[str], cols: List[int]) -> Optional[str]:
    """The class of a row's one-hot cells at ``cols`` (the place of its 1), or None."""
    return next((str(k) for k, c in enumerate(cols) if _number(row[c]) == 1.0), None)


def _same_file(lab: str, have: str, files) -> bool:
    """True if the label cells name one file (an image target ``y:image``): the influence
    CSV's names it from its own folder, the training CSV's from its (``files``: the paths).
    """
    if not (is_file_cell(lab) and is_file_cell(have)):
        return False
    named = [os.path.realpath(data_path(os.path.dirname(os.path.abspath(f)), c))
             for f, c in zip(files, (lab, have))]  # fmt: skip
    return named[0] == named[1]


def _check_influence_rows(files, header, rows, table: InfluenceTable, numbers=None) -> None:
    """The influence CSV (``table``) must list every row of the training CSV once, with its
    image and its label (``files``: the two CSVs' paths); raises :class:`InputError` naming
    the first row that does not (training rows by their ``numbers``, blank lines counted,
    see :func:`.dataset.read_csv_rows`).
    """
    influence_csv, train_csv = files
    idx, orig, labels, label = table.index, table.original, table.labels, table.label_header
    numbers = numbers or list(range(1, len(rows) + 1))
    n = len(rows)
    seen: Dict[int, int] = {}
    for r, j in enumerate(idx.tolist()):
        if not 0 <= j < n:
            raise InputError(
                f"{influence_csv} row {r + 1}: datasource_index {j} is not a row of {train_csv} "
                f"(it has rows 0..{n - 1}); was the influence computed for this training CSV?"
            )
        if j in seen:
            raise InputError(
                f"{influence_csv} row {r + 1}: datasource_index {j} appears again (first in row "
                f"{seen[j] + 1}); the file is damaged: compute the influence again"
            )
        seen[j] = r
    if len(idx) != n:
        raise InputError(
            f"{influence_csv}: lists {len(idx)} samples but {train_csv} has {n} rows; compute "
            "the influence for this training CSV"
        )
    label = label if label in header else "y:label"
    label_col = header.index(label) if label in header else None
    if table.one_hot and all(c in header for c in table.one_hot):  # compared as classes
        rows = [r + [_class_of(r, [header.index(c) for c in table.one_hot]) or ""] for r in rows]
        label_col = len(header)
    for r, (j, o, lab) in enumerate(zip(idx, orig, labels)):
        if o and o not in rows[j]:
            raise InputError(
                f"{influence_csv} row {r + 1}: original '{o}' is not in "
                f"{train_csv} row {numbers[j]}; was the influence computed for this CSV?"
            )
        if not lab:
            continue
        have = rows[j][label_col].strip() if label_col is not None else None
        cells = [c.strip() for c in rows[j]]
        if have is not None and _same_file(lab, have, files):
            continue
        if (have != lab.strip()) if have is not None else (lab.strip() not in cells):
            shown = f"'{have}'" if have is not None else str(rows[j])
            raise InputError(
                f"{influence_csv} row {r + 1}: label '{lab}' of datasource_index {j} differs "
                f"from {train_csv} row {numbers[j]} ({shown}); the labels changed since the "
                "influence was computed: run 'sgd-influence run' again for this CSV"
            )


def cleanse(
    influence_csv: str,
    train_csv: str,
    output: str,
    remove: Optional[int] = None,
    remove_ratio: Optional[float] = None,
    flags=None,
) -> Dict:
    """Write ``train_csv`` with the run's recommendation applied (or without its most
    harmful rows), as a console dataset CSV.

    Everything is checked before anything is written: the output rules of
    :func:`~sgd_influence_plugin.places.check_output_csv` (a new ``.csv`` path, or one
    the tool wrote; not an input; not inside an image folder), and that the influence CSV
    lists every training row once with the same image and label and a finite influence.

    Args:
        influence_csv: written by ``sgd-influence run`` for this training CSV.
        train_csv: the training CSV (never modified).
        output: the cleansed CSV; file paths in it are rewritten relative to its folder.
        remove: number of top-harmful rows to drop; or
        remove_ratio: share of the rows (0 <= r < 1) to drop, rounded to the nearest integer;
            neither: apply the influence CSV's ``action`` column (relabelled rows keep their
            image and get ``suggested_label``; removed rows are dropped).
        flags: :class:`~sgd_influence_plugin.validation.FlagNames` of the calling interface,
            for messages (default: the CLI's).

    Returns:
        ``{"removed": [datasource indices], "relabelled": {index: new label}, "kept":
        n_kept, "output": path}``.

    Raises:
        SettingsError, InputError, OutputError: see above; nothing is written.

    """
    flags = flags or validation.CLI_FLAGS
    validation.check_remove_choice(remove, remove_ratio, flags)
    header, rows, numbers = read_csv_rows(train_csv)
    plan = _planned_set(influence_csv, train_csv, output, header, rows, flags)
    table = read_influence_csv(influence_csv)
    files = (influence_csv, train_csv)
    _check_influence_rows(files, header, rows, table, numbers)
    drop, relabel, label_col = _changes(table, files, header, rows, remove, remove_ratio, flags)
    src_folder = os.path.dirname(os.path.abspath(train_csv))

    def cleansed(path: str) -> None:
        write_cleansed(header, rows, drop, src_folder, plan.folder, path, relabel, label_col)

    write(plan, {MAIN: cleansed})
    return {
        "removed": sorted(drop),
        "relabelled": dict(sorted(relabel.items())),
        "kept": len(rows) - len(drop),
        "output": plan.main,
    }


def _planned_set(influence_csv, train_csv, output, header, rows, flags) -> OutputSet:
    """The set ``cleanse`` writes (the cleansed CSV alone), checked before anything is read
    further: the output place's rules and the file's owner (see :func:`_output_set`).
    """
    places.check_output_csv(
        output,
        flags.output,
        input_files=[train_csv, influence_csv],
        image_folders=places.image_folders_of_table(train_csv, header, rows),
    )
    if os.path.isdir(os.path.dirname(os.path.abspath(output))):
        read_ledger(os.path.dirname(os.path.abspath(output)))
    plan = OutputSet(output, "cleanse", flags.output, owner=_output_set(influence_csv, output))
    plan.check()
    return plan


def _changes(
    table: InfluenceTable, files, header, rows, remove, remove_ratio, flags
) -> Tuple[set, Dict[int, str], Optional[Union[int, List[int]]]]:
    """``(rows to drop, {row: new label}, the label column (or one-hot columns) to relabel
    in, or None)``: the
    ``remove`` most harmful rows (or that share), else the influence CSV's actions.

    Raises:
        InputError: no action column, every row marked remove, or no label column to
            relabel in.

    """
    influence_csv, train_csv = files
    n = len(rows)
    if remove is not None or remove_ratio is not None:
        remove = validation.rows_to_remove(n, remove, remove_ratio, flags, train_csv)
        order = table.index[np.argsort(table.influence, kind="stable")]
        return set(order[:remove].tolist()), {}, None
    if table.actions is None:
        raise InputError(
            f"{influence_csv}: no 'action' column (written by an older version); give "
            f"{flags.remove or 'a number of rows'} N or {flags.remove_ratio} R, or run "
            "'sgd-influence run' again"
        )
    actions = [""] * n
    suggested = [""] * n
    for j, a, g in zip(table.index.tolist(), table.actions, table.suggested):
        actions[j], suggested[j] = a, g
    check_relabels(influence_csv, table.actions, table.suggested, table.labels)
    drop, relabel = recommended_changes(actions, suggested)
    if len(drop) >= n:
        raise InputError(f"{influence_csv}: every row is marked remove; nothing would be left")
    if not relabel:
        return drop, relabel, None
    idx, labels, label = table.index, table.labels, table.label_header
    where = _label_column(header, rows, idx, labels, *files, flags, label, table.one_hot)
    _check_label_cells(files, header, rows, where, table.index, relabel)
    return drop, relabel, where


def _check_label_cells(files, header, rows, where, index, relabel) -> None:
    """A relabel writes a class into the label cell ``where``: refused where that cell names
    a file (an image target or a label map, ``y:image``), which a class would replace.
    """
    if not isinstance(where, int):
        return
    for j in sorted(relabel):
        cell = rows[j][where]
        if is_file_cell(cell):
            r = int(np.flatnonzero(index == j)[0]) + 1
            raise InputError(
                f"{files[0]} row {r}: action relabel, but {files[1]}'s {header[where]} of "
                f"datasource_index {j} is the file '{cell}' (an image target or a label map), "
                "not a class; set the row's action to keep or remove"
            )


def _output_set(influence_csv: str, output: str) -> str:
    """The output set ``cleanse`` writes ``output`` for: the run's own set when ``output`` is
    the cleansed CSV beside ``influence_csv`` (its run wrote it), else a set of its own.
    """
    beside = companion_path(influence_csv, "cleansed")
    if os.path.normcase(os.path.abspath(output)) == os.path.normcase(beside):
        return output_set(influence_csv) or set_name("cleanse", output)
    return set_name("cleanse", output)


def _label_column(
    header, rows, idx, labels, influence_csv, train_csv, flags, label=None, one_hot=()
) -> Union[int, List[int]]:
    """The training CSV's label column: the influence CSV's label column (``label``) when the
    training CSV has it, ``y:label``, the cells of a one-hot label (``one_hot``, C of them:
    their indices), else the one column that holds every row's label as the influence CSV
    gives it.

    Raises:
        InputError: no such column or several (the message says how to cleanse instead).

    """
    for name in (label, "y:label"):
        if name and name in header:
            return header.index(name)
    if one_hot and all(c in header for c in one_hot):
        return [header.index(c) for c in one_hot]
    if all(lab is None for lab in labels):
        raise InputError(
            f"{influence_csv}: action relabel, but it has no label column (the "
            "network reads none: an autoencoder); set the action to keep or remove"
        )
    fits = [
        c
        for c in range(len(header))
        if not header[c].startswith("#")
        and all(
            lab is not None and rows[j][c].strip() == lab.strip() for j, lab in zip(idx, labels)
        )
    ]
    if len(fits) != 1:
        raise InputError(
            f"{train_csv}: cannot tell which column holds the label to relabel "
            f"({len(fits)} columns match {influence_csv}'s y:label); give "
            f"{flags.remove or 'a number of rows'} N or {flags.remove_ratio} R to remove rows "
            "instead"
        )
    return fits[0]
