"""Class names for the summary and the report: a text file, one name per line, in label order.

Line 1 names label 0, line 2 label 1, and so on (the order the console's label column counts
in). The influence CSV keeps the numeric labels; only what people read shows the names.
"""

from __future__ import annotations

import math
import os
from typing import List, Mapping, Optional, Sequence

from .errors import InputError

_FIX = "write one class name per line, line 1 for label 0"


def read_label_names(path: str) -> List[str]:
    """Read and check a label-names file.

    Surrounding spaces are dropped; blank lines at the very end are ignored.

    Args:
        path: UTF-8 text file, one name per line, in label order.

    Returns:
        The names; ``names[k]`` is the name of label ``k``.

    Raises:
        InputError: the file is missing or unreadable, empty, has a blank line between names,
            or names a class twice.

    """
    if os.path.exists(path) and not os.path.isfile(path):
        raise InputError(
            f"{path}: is not a regular file (a folder, or a device such as /dev/null); give a "
            f"text file with the class names: {_FIX}"
        )
    if not os.path.isfile(path):
        raise InputError(
            f"{path}: label-names file not found (check the path; relative paths start at "
            f"{os.getcwd()})"
        )
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the label names ({e}); save it as UTF-8 text") from e
    names = [line.strip() for line in lines]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise InputError(f"{path}: the label-names file is empty; {_FIX}")
    seen = {}
    for i, name in enumerate(names):
        if not name:
            raise InputError(
                f"{path} line {i + 1}: blank class name; {_FIX} (a blank line would shift "
                "every later name to the wrong label)"
            )
        if name in seen:
            raise InputError(
                f"{path} line {i + 1}: '{name}' is already the name of label {seen[name]} "
                f"(line {seen[name] + 1}); every class needs its own name"
            )
        seen[name] = i
    return names


def check_label_names(
    names: Sequence[str],
    labels: Optional[Sequence[str]],
    names_path: str,
    csv_path: str,
    numbers: Optional[Sequence[int]] = None,
    classes: Optional[Mapping[str, int]] = None,
) -> None:
    """Check that every label of the training CSV has a name, and that the file has no more
    names than the network has classes (more is another problem's file, or a shifted one).

    Args:
        names: from :func:`read_label_names`.
        labels: the label cells of the training CSV, row by row (None: no label column).
        names_path: the label-names file, for messages.
        csv_path: the training CSV, for messages.
        numbers: each label's row number in messages (default: i + 1; see
            :func:`~sgd_influence_plugin.dataset.read_csv_rows`).
        classes: the network's label column -> number of classes
            (:attr:`.nnabla_adapter.definition.ModelInfo.label_classes`), or None.

    Raises:
        InputError: there is no label column, a label is not a whole number >= 0, a label
            has no name (the file lists fewer names than the classes seen), or the file has
            more names than the network's classes.

    """
    count = list((classes or {}).values())
    if len(count) == 1 and len(names) > count[0]:
        raise InputError(
            f"{names_path}: {len(names)} names but the network has {count[0]} classes; give "
            f"one name per class ({_FIX}): is it another problem's file?"
        )
    if labels is None:
        raise InputError(
            f"{csv_path}: no label column the network reads, so the names in {names_path} "
            "have nothing to name; leave out the label names"
        )
    for i, cell in enumerate(labels):
        row = numbers[i] if numbers else i + 1
        k = label_index(cell)
        if k is None:
            raise InputError(
                f"{csv_path} row {row}: label '{cell}' is not a class number 0, 1, 2, ...; "
                f"label names ({names_path}) need integer class labels"
            )
        if k >= len(names):
            raise InputError(
                f"{names_path}: {len(names)} names but {csv_path} row {row} has label {k}; "
                f"{_FIX}, one line for every class up to label {k}"
            )


def label_index(cell: str) -> Optional[int]:
    """The class number of a label cell ('3', ' 3', '3.0' -> 3), or None if it is not one."""
    try:
        value = float(cell)
    except ValueError:
        return None
    if not value.is_integer() or value < 0:
        return None
    return int(value)


def canonical_label(cell: str) -> str:
    """One spelling per label value, for grouping: ``'3'``, ``' 3'``, ``'3.0'`` and ``'+3'``
    are all ``'3'`` (the loader reads them as the same number); other numbers are written as
    Python writes the float (``'2.50'`` -> ``'2.5'``); anything else is the stripped text.
    """
    text = cell.strip()
    try:
        value = float(text)
    except ValueError:
        return text
    if not math.isfinite(value):
        return text
    return str(int(value)) if value.is_integer() else repr(value)


def display_label(cell: str, names: Optional[Sequence[str]]) -> str:
    """How a label reads in the summary and the report: ``'Bag (8)'``, or the cell as is."""
    if names is None:
        return cell
    k = label_index(cell)
    return cell if k is None or k >= len(names) else f"{names[k]} ({k})"


def class_pairs(
    given: Sequence[str], model: Sequence[str], rows: Sequence[int], names=None, top: int = 5
) -> List[str]:
    """The class pairs a set of changed rows concentrates on, most rows first: each row counts
    for the unordered pair {its given label, the model's class}, so ``Shirt <-> T-shirt`` sums
    both directions (look-alike classes confused either way). Rows whose model class equals the
    given label, or is unknown (``''``/-1), count as ``label <-> (same)``.

    Args:
        given: (N,) label cells as written; ``model``: (N,) the model's class per row.
        rows: indices of the changed rows.
        names: class names for :func:`display_label`, or None.
        top: most pairs returned.

    Returns:
        Lines ``"Shirt (6) <-> T-shirt/top (0): 41 rows"``, at most ``top``, ties in label order.

    """
    counts = {}
    for j in rows:
        a, b = canonical_label(str(given[j])), canonical_label(str(model[j]))
        b = "(same)" if b in ("", "-1", a) else b
        key = (a, b) if b == "(same)" else tuple(sorted((a, b), key=_order))
        counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], _order(kv[0][0]), _order(kv[0][1])))
    return [
        f"{display_label(a, names)} <-> "
        f"{b if b == '(same)' else display_label(b, names)}: {k} row{'s' if k != 1 else ''}"
        for (a, b), k in ranked[:top]
    ]


def _order(cell: str):
    k = label_index(cell)
    return (0, k, "") if k is not None else (1, 0, cell)
