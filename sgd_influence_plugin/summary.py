"""The run's summary (``<stem>_summary.txt``): counts, the run's facts, the harmful share per
class (or, for a regression, by the size of the residual), the top rows and the
recommendation in words.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from .dataset import Dataset
from .labels import canonical_label, class_pairs, display_label
from .report import format_score
from .target import centring_words


def ranking(scores: np.ndarray) -> np.ndarray:
    """Row indices sorted by score ascending (most harmful first); ties keep row order."""
    return np.argsort(scores, kind="stable")


def _rate_lines(sel: dict) -> list:
    """The summary's line on how the rate was chosen (``lr_selection``), if any: the bound
    that set an automatic rate, or which console rate ``--lr solver`` took when it is not the
    base rate (e.g. ``the console's final rate (Cosine from 0.1)``).
    """
    if sel.get("stable_lr_reason") and sel.get("source") == "auto":
        return [f"lr chosen automatically: {sel['stable_lr_reason']}"]
    words = sel.get("solver_rate", "the console's rate")
    return (
        [f"lr: {words}"] if sel.get("source") == "solver" and words != "the console's rate" else []
    )


def summary_text(
    scores, labels, train: Dataset, image_col, info: Dict, names=None, losses=None, details=None
) -> str:
    """The summary's first part: counts, facts, per-class (or per-residual) harmful shares and
    the ten most harmful rows. ``scores``/``losses``: float64 (N,), training-row order;
    ``labels``: (N,) label cells or None; ``names``: class names or None; ``details``: (N,)
    each row's values where it has no data file (a table's features), or None.
    """
    n = len(scores)
    harmful = scores < 0
    lines = [
        "SGD-influence summary",
        f"training samples: {n}   harmful (influence < 0): {int(harmful.sum())}   "
        f"helpful (> 0): {int((scores > 0).sum())}   zero: {int((scores == 0).sum())}",
        "influence = estimated change of the mean validation loss if the sample were removed,",
        centring_words(info.get("used", {}).get("target")) + ";",
        "negative = removing it would lower the validation loss (harmful).",
        "",
    ]
    facts = {**info, **info.get("used", {})}
    for k in (
        "model",
        "train_csv",
        "val_csv",
        "validation_loss",
        "lr",
        "weight_decay",
        "batch_size",
        "epochs",
        "trials",
        "cache",
    ):
        if k in facts:
            lines.append(f"{k}: {facts[k]}")
    lines += _rate_lines(info.get("lr_selection", {}))
    if info.get("task") == "regression":
        lines += _residual_lines(scores, losses)
    elif labels is not None:
        labels = [canonical_label(x) for x in labels]  # '3', '3.0' and '+3' are one class
        lines += ["", "harmful share per class (label: harmful / total):"]
        for lab in sorted(set(labels), key=_label_key):
            mask = np.array([x == lab for x in labels])
            lines.append(
                f"  {display_label(lab, names)}: {int(harmful[mask].sum())} / {int(mask.sum())} "
                f"({harmful[mask].mean():.1%})"
            )
    what = "original" if image_col or not details else "values"
    lines += ["", f"top 10 harmful (datasource_index, label, influence, {what}):"]
    for i in ranking(scores)[:10]:
        lab = display_label(labels[i], names) if labels is not None else ""
        orig = train.cell(int(i), image_col) if image_col else (details[i] if details else "")
        lines.append(f"  {int(i)}, {lab}, {format_score(scores[i])}, {orig}")
    for w in info.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines) + "\n"


def _residual_lines(scores: np.ndarray, losses: Optional[np.ndarray]) -> List[str]:
    """A regression's summary by the size of each row's training loss (its residual, as the
    loss measures it): the harmful share in each quarter, smallest residuals first.
    """
    if losses is None or len(losses) < 4:
        return []
    lines = ["", "harmful share by training loss (residual) quarter, smallest first:"]
    order = np.argsort(losses, kind="stable")
    for q, part in enumerate(np.array_split(order, 4)):
        lo, hi = float(losses[part].min()), float(losses[part].max())
        harmful = int((scores[part] < 0).sum())
        lines.append(
            f"  Q{q + 1} (loss {format_score(lo)} .. {format_score(hi)}): {harmful} / "
            f"{len(part)} ({harmful / len(part):.1%})"
        )
    return lines


def recommendation_text(rec, actions, labels, suggested, names=None, cleansed="") -> str:
    """The summary's recommendation section: what, how many, why, and what to do next."""
    lines = ["", "RECOMMENDATION"]
    if rec is None:
        return "\n".join(lines + ["none computed", ""])
    counts = {a: sum(1 for x in actions if x == a) for a in ("keep", "relabel", "remove")}
    lines.append(
        f"keep {counts['keep']}, relabel {counts['relabel']}, remove {counts['remove']} "
        f"of {len(actions)} rows"
    )
    lines.append(f"why: {rec.reason}")
    if rec.check.get("design"):
        lines.append(f"check: {rec.check['design']}")
    for c in rec.checked:
        lines.append(
            f"  checked: {c.action} {len(c.rows)} rows ({c.describe()}): "
            f"held-out loss {c.loss_change:+.4g} (z {c.z:+.1f})"
            + (f", accuracy {c.accuracy_change:+.2%}" if np.isfinite(c.accuracy_change) else "")
            + ("  <- recommended" if c is rec.chosen else "")
        )
    again = rec.check.get("second_order")
    if again:
        lines.append(
            f"  checked again in a second sample order: {again['action']} {again['rows']} "
            f"rows: held-out loss {again['heldout_loss_change']:+.4g} (z {again['z']:+.1f}), "
            + ("passes" if again["passes"] else "does not pass")
        )
    if counts["relabel"] or counts["remove"]:
        lines.append(
            f"next: retrain on {cleansed or 'the cleansed CSV'} (beside this file), which "
            "applies it; review the rows marked remove in the influence CSV first if you can "
            "(where only the label is wrong, set action to relabel, which gives the row "
            "suggested_label, and run sgd-influence cleanse)"
        )
        changed = [j for j, a in enumerate(actions) if a != "keep"]
        if labels is not None:
            lines.append("class pairs the changes concentrate on (check these first):")
            lines += [f"  {p}" for p in class_pairs(labels, suggested, changed, names)]
            lines.append("changes per given label (given -> action, the model's class: rows):")
            pairs: Dict[Tuple[str, str, str], int] = {}
            for j in changed:
                key = (labels[j], actions[j], suggested[j])
                pairs[key] = pairs.get(key, 0) + 1
            for (g, act, sug), k in sorted(pairs.items(), key=lambda kv: -kv[1])[:15]:
                shown = display_label(sug, names) if sug not in ("", None) else "-"
                lines.append(f"  {display_label(g, names)} -> {act}, model: {shown}: {k}")
    else:
        lines.append(
            "next: nothing to change; the cleansed CSV equals the training CSV. To remove rows "
            "anyway, give a remove ratio (it overrides the recommendation)"
        )
    return "\n".join(lines) + "\n"


def _label_key(x: str):
    try:
        return (0, float(x), x)
    except ValueError:
        return (1, 0.0, x)
