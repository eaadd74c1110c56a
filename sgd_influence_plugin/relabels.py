"""The labels a user gives rows in an influence CSV (``action = relabel``, ``suggested_label``)
are checked like training labels before ``cleanse`` writes them: whole numbers in 0..C-1.

C is the number of classes the run recorded in ``STEM_settings.yaml`` beside the influence
CSV (``label_classes``); without that file (moved, or an older version's run), the classes
are those of the training labels, 0 up to the largest one.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

from .errors import InputError


def recorded_facts(influence_csv: str) -> Optional[dict]:
    """What the run that wrote ``influence_csv`` recorded (``STEM_settings.yaml``), or None
    when the file is not there (moved, or an older version's run).

    Raises:
        InputError: the file is there but is no YAML mapping (damaged or replaced): falling
            back silently would check the labels against other classes than the run's.

    """
    import yaml

    path = os.path.splitext(os.path.abspath(influence_csv))[0] + "_settings.yaml"
    try:
        with open(path, encoding="utf-8") as f:
            facts = yaml.safe_load(f)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        facts = e
    if not isinstance(facts, dict):
        why = type(facts).__name__ if not isinstance(facts, Exception) else "unreadable"
        raise InputError(
            f"{path}: the run's settings are damaged ({why}, not the YAML the run wrote); "
            "restore it, or move it away to check new labels against the training labels"
        )
    return facts


def _classes(facts: Optional[dict]) -> Optional[int]:
    try:
        classes = list(facts["label_classes"].values())
        return int(classes[0]) if len(classes) == 1 and int(classes[0]) > 0 else None
    except (KeyError, AttributeError, TypeError, ValueError):  # an older run: no classes
        return None


def relabel_without_class(path: str, r: int, no_classes: bool) -> str:
    """Why row ``r`` (0-based) of the influence CSV ``path`` cannot be relabelled: every
    row's suggested_label is empty (``no_classes``: the network has no class to give), or
    this one's alone (the file is damaged).
    """
    if no_classes:
        return (
            f"{path} row {r + 1}: action relabel, but suggested_label is empty in every row: "
            "the network that scored them has no classes (a regression, an autoencoder, an "
            "image target or a label map); set the row's action to keep or remove"
        )
    return (
        f"{path} row {r + 1}: action relabel without a suggested_label; this influence CSV "
        "is damaged: compute it again with 'sgd-influence run'"
    )


def _number(text: str) -> Optional[float]:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def check_relabels(
    influence_csv: str,
    actions: Sequence[str],
    suggested: Sequence[str],
    labels: Sequence[Optional[str]],
) -> None:
    """Every row marked ``relabel`` must have a ``suggested_label`` that is a class.

    Args:
        influence_csv: the influence CSV (rows in file order), for messages and its settings.
        actions / suggested / labels: its ``action``, ``suggested_label`` and ``y:label``
            cells, in file order.

    Raises:
        InputError: the first row whose new label is not a whole number in 0..C-1, naming
            the row and the fix.

    """
    facts = recorded_facts(influence_csv)
    classes = _classes(facts)
    task = (facts or {}).get("task")
    if classes is None and task not in (None, "classification") and "relabel" in actions:
        raise InputError(
            f"{influence_csv} row {list(actions).index('relabel') + 1}: action relabel, but "
            f"the network that scored these rows has no classes (task '{task}': a "
            "regression, an autoencoder, an image target or a label map), so no class to "
            "give the row; set its action to keep or remove"
        )
    source = f"the network's {classes} classes"
    if classes is None:
        given = [_number(x) for x in labels if x is not None]
        whole = [v for v in given if v is not None and v == int(v) and v >= 0]
        if not whole:
            return  # no numeric labels to compare with: the training CSV decides
        classes = int(max(whole)) + 1
        source = f"the {classes} classes of the training labels"
    for r, (action, text) in enumerate(zip(actions, suggested)):
        if action != "relabel":
            continue
        v = _number(text)
        if v is None or v != int(v) or not 0 <= v < classes:
            raise InputError(
                f"{influence_csv} row {r + 1}: suggested_label '{text}' is not a class of "
                f"{source} (a whole number 0..{classes - 1}); fix it, or set the row's action "
                "to keep or remove"
            )
