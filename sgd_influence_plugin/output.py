"""Write what the user sees: the influence CSV, thumbnails, summary, settings, cleansed CSV.

Influence CSV (NNC dataset format, so the console's viewer shows and sorts it)::

    x:image,y:label,influence,loss,datasource_index,original
    thumbnails/000123.png,3,-0.0123,2.31,123,train/000123.png

- rows sorted by ``influence`` ascending: the most harmful (most negative) first;
- ``x:image``: a thumbnail PNG, path relative to the CSV's folder;
- ``influence``: the trials' combined score (units of the mean validation loss, negative =
  harmful); ``loss``: the sample's training loss at the trained parameters;
- ``datasource_index``: 0-based data row of the sample in the training CSV;
- ``original``: the sample's image cell exactly as written in the training CSV.

Beside it: ``thumbnails/``, ``settings.yaml``, ``summary.txt``, ``<stem>_trials.csv`` (each
trial's raw scores: ``datasource_index,trial_0,trial_1,...`` in training-row order) and, on
request, ``report.html``.
An existing output is replaced as a whole: everything is staged in a hidden folder first.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .dataset import Dataset, read_csv_table
from .errors import InputError, SettingsError
from .io_utils import atomic_write
from .labels import display_label

INFLUENCE_COLUMNS = ["x:image", "y:label", "influence", "loss", "datasource_index", "original"]
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class OutputPaths:
    """Where a run's files went."""

    csv: str
    thumbnails: Optional[str]
    settings: str
    summary: str
    report: Optional[str] = None
    cleansed: Optional[str] = None
    trials: Optional[str] = None


def find_columns(train: Dataset, used_columns: Sequence[str]):
    """``(image header cell or None, label header cell or None)`` among the columns the
    network reads: the first whose first row is an image path, and the first scalar one.
    """
    image_col = label_col = None
    for var in used_columns:
        cells = train.columns.get(var, [])
        if len(cells) != 1:
            continue
        first = train.cell(0, cells[0]).strip()
        if os.path.splitext(first)[1].lower() in _IMAGE_EXTS:
            image_col = image_col or cells[0]
        else:
            label_col = label_col or cells[0]
    return image_col, label_col


def make_thumbnail(src: str, dst: str, size: int = 64) -> None:
    """Save a PNG thumbnail of ``src`` that fits ``size`` x ``size`` with its aspect ratio.

    Images smaller than ``size`` are enlarged by the largest whole factor with nearest
    neighbour (8x8 -> 64x64, 28x28 -> 56x56) so their pixels stay sharp; larger ones are
    reduced with Lanczos filtering.
    """
    from PIL import Image

    with Image.open(src) as im:
        im.load()
        w, h = im.size
        if max(w, h) <= size:
            k = max(1, size // max(w, h))
            out = im.resize((w * k, h * k), Image.NEAREST)
        else:
            out = im.copy()
            out.thumbnail((size, size), Image.LANCZOS)
        if out.mode not in ("L", "RGB", "RGBA"):
            out = out.convert("RGBA" if "A" in out.mode else "RGB")
        out.save(dst, format="PNG")


def ranking(scores: np.ndarray) -> np.ndarray:
    """Row indices sorted by score ascending (most harmful first); ties keep row order."""
    return np.argsort(scores, kind="stable")


def _summary_text(scores, labels, train: Dataset, image_col, info: Dict, names=None) -> str:
    n = len(scores)
    harmful = scores < 0
    lines = [
        "SGD-influence summary",
        f"training samples: {n}   harmful (influence < 0): {int(harmful.sum())}   "
        f"helpful (> 0): {int((scores > 0).sum())}   zero: {int((scores == 0).sum())}",
        "influence = estimated change of the mean validation loss if the sample were removed;",
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
    reason = info.get("lr_selection", {}).get("stable_lr_reason")
    if reason and info.get("lr_selection", {}).get("source") == "auto":
        lines.append(f"lr chosen automatically: {reason}")
    if labels is not None:
        lines += ["", "harmful share per class (label: harmful / total):"]
        for lab in sorted(set(labels), key=_label_key):
            mask = np.array([x == lab for x in labels])
            lines.append(
                f"  {display_label(lab, names)}: {int(harmful[mask].sum())} / {int(mask.sum())} "
                f"({harmful[mask].mean():.1%})"
            )
    lines += ["", "top 10 harmful (datasource_index, label, influence, original):"]
    for i in ranking(scores)[:10]:
        lab = display_label(labels[i], names) if labels is not None else ""
        orig = train.cell(int(i), image_col) if image_col else ""
        lines.append(f"  {int(i)}, {lab}, {scores[i]:.6g}, {orig}")
    for w in info.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines) + "\n"


def _label_key(x: str):
    try:
        return (0, float(x), x)
    except ValueError:
        return (1, 0.0, x)


def _replace(src: str, dst: str) -> None:
    """Move ``src`` over ``dst`` (file or folder); an old folder is swapped out, then removed."""
    if os.path.isdir(dst) and not os.path.islink(dst):
        old = dst + ".old-" + uuid.uuid4().hex[:8]
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def write_influence_output(
    out_csv: str,
    scores: np.ndarray,
    train: Dataset,
    used_columns: Sequence[str],
    info: Dict,
    thumb_size: int = 64,
    report: bool = False,
    losses: Optional[np.ndarray] = None,
    trial_scores: Optional[np.ndarray] = None,
    label_names: Optional[Sequence[str]] = None,
) -> OutputPaths:
    """Write the influence CSV and its companions (see the module docstring).

    Args:
        out_csv: path of the influence CSV; its folder is created if needed.
        scores: float64 (N,) in training-row order (negative = harmful).
        train: the training :class:`Dataset` the scores belong to.
        used_columns: dataset variables the network reads (to find image and label columns).
        info: settings and run facts, written to settings.yaml and summarised.
        thumb_size: thumbnail bounding box in pixels.
        report: also write ``report.html``.
        losses: float64 (N,) per-sample training losses for the ``loss`` column (empty if None).
        trial_scores: float64 (M, N) each trial's raw scores, for ``<stem>_trials.csv``.
        label_names: class names, ``label_names[k]`` for label k (checked by the caller);
            the summary and the report show them beside the numbers, the CSV keeps numbers.

    """
    if len(scores) != train.size:
        raise SettingsError(f"{len(scores)} scores for {train.size} training rows")
    if not np.all(np.isfinite(scores)):
        raise SettingsError("refusing to write non-finite influence scores")
    folder = os.path.dirname(os.path.abspath(out_csv))
    os.makedirs(folder, exist_ok=True)
    image_col, label_col = find_columns(train, used_columns)
    labels = [train.cell(i, label_col).strip() for i in range(train.size)] if label_col else None
    order = ranking(scores)
    stage = tempfile.mkdtemp(dir=folder, prefix=".sgd_influence_staging_")
    try:
        thumbs_rel: List[str] = [""] * train.size
        if image_col:
            os.makedirs(os.path.join(stage, "thumbnails"))
            for i in range(train.size):
                rel = f"thumbnails/{i:06d}.png"
                src = os.path.join(train.folder, train.cell(i, image_col).strip())
                make_thumbnail(src, os.path.join(stage, rel), thumb_size)
                thumbs_rel[i] = rel
        with open(os.path.join(stage, "influence.csv"), "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(INFLUENCE_COLUMNS)
            for i in order:
                w.writerow(
                    [
                        thumbs_rel[i],
                        labels[i] if labels else "",
                        repr(float(scores[i])),
                        repr(float(losses[i])) if losses is not None else "",
                        int(i),
                        train.cell(int(i), image_col) if image_col else "",
                    ]
                )
        trials_name = os.path.splitext(os.path.basename(out_csv))[0] + "_trials.csv"
        if trial_scores is not None:
            with open(os.path.join(stage, trials_name), "w", newline="") as f:
                w = csv.writer(f, lineterminator="\n")
                w.writerow(["datasource_index"] + [f"trial_{m}" for m in range(len(trial_scores))])
                for i in range(train.size):
                    w.writerow([i] + [repr(float(t[i])) for t in trial_scores])
        from .settings import write_yaml

        write_yaml(os.path.join(stage, "settings.yaml"), info)
        with open(os.path.join(stage, "summary.txt"), "w") as f:
            f.write(_summary_text(scores, labels, train, image_col, info, label_names))
        if report:
            from .report import write_report

            write_report(
                os.path.join(stage, "report.html"),
                scores,
                labels,
                [os.path.join(stage, t) if t else "" for t in thumbs_rel],
                info,
                label_names=label_names,
            )
        paths = OutputPaths(
            csv=os.path.abspath(out_csv),
            thumbnails=os.path.join(folder, "thumbnails") if image_col else None,
            settings=os.path.join(folder, "settings.yaml"),
            summary=os.path.join(folder, "summary.txt"),
            report=os.path.join(folder, "report.html") if report else None,
        )
        # Companions first, the CSV last: a reader of the CSV never sees half a set.
        if image_col:
            _replace(os.path.join(stage, "thumbnails"), paths.thumbnails)
        _replace(os.path.join(stage, "settings.yaml"), paths.settings)
        _replace(os.path.join(stage, "summary.txt"), paths.summary)
        if trial_scores is not None:
            paths.trials = os.path.join(folder, trials_name)
            _replace(os.path.join(stage, trials_name), paths.trials)
        if report:
            _replace(os.path.join(stage, "report.html"), paths.report)
        _replace(os.path.join(stage, "influence.csv"), paths.csv)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return paths


# ----------------------------------------------------------------------------------------
# Cleansing
# ----------------------------------------------------------------------------------------


def read_influence_csv(path: str):
    """``(datasource_index int64 (n,), influence float64 (n,), original list)`` in file order.

    Raises:
        InputError: missing file or columns, or a non-numeric cell.

    """
    header, rows = read_csv_table(path)
    for col in ("influence", "datasource_index"):
        if col not in header:
            raise InputError(
                f"{path}: no '{col}' column; give the influence CSV that 'sgd-influence run' wrote"
            )
    ci, cs = header.index("datasource_index"), header.index("influence")
    co = header.index("original") if "original" in header else None
    idx, infl, orig = [], [], []
    for r, row in enumerate(rows):
        try:
            idx.append(int(row[ci]))
            infl.append(float(row[cs]))
        except ValueError as e:
            raise InputError(
                f"{path} row {r + 1}: datasource_index '{row[ci]}' / influence "
                f"'{row[cs]}' must be numbers"
            ) from e
        orig.append(row[co] if co is not None else None)
    return np.array(idx, dtype=np.int64), np.array(infl, dtype=np.float64), orig


def _same_file(a: str, b: str) -> bool:
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def cleanse(
    influence_csv: str,
    train_csv: str,
    output: str,
    remove: Optional[int] = None,
    remove_ratio: Optional[float] = None,
) -> Dict:
    """Write ``train_csv`` without its most harmful rows, as a console dataset CSV.

    Args:
        influence_csv: written by ``sgd-influence run`` for this training CSV.
        train_csv: the training CSV (never modified).
        output: the cleansed CSV; file paths in it are rewritten relative to its folder.
        remove: number of top-harmful rows to drop; or
        remove_ratio: share of the rows (0 <= r < 1) to drop, rounded to the nearest integer.

    Returns:
        ``{"removed": [datasource indices], "kept": n_kept, "output": path}``.

    """
    if (remove is None) == (remove_ratio is None):
        raise SettingsError("give exactly one of --remove N or --remove-ratio R")
    for src in (train_csv, influence_csv):
        if _same_file(output, src):
            raise SettingsError(
                f"{output}: refusing to overwrite the input {src}; choose another --output"
            )
    header, rows = read_csv_table(train_csv)
    idx, infl, orig = read_influence_csv(influence_csv)
    n = len(rows)
    if len(idx) != n or sorted(idx.tolist()) != list(range(n)):
        raise InputError(
            f"{influence_csv}: lists {len(idx)} samples but {train_csv} has {n} "
            "rows; compute the influence for this training CSV"
        )
    src_folder = os.path.dirname(os.path.abspath(train_csv))
    image_cols = [c for c, cell in enumerate(header) if not cell.startswith("#")]
    for r, (j, o) in enumerate(zip(idx, orig)):
        if o and o not in rows[j]:
            raise InputError(
                f"{influence_csv} row {r + 1}: original '{o}' is not in "
                f"{train_csv} row {j + 1}; was the influence computed for this CSV?"
            )
    if remove_ratio is not None:
        if not 0 <= remove_ratio < 1:
            raise SettingsError(f"--remove-ratio {remove_ratio}: must be in [0, 1)")
        remove = int(round(remove_ratio * n))
    if not 0 <= remove < n:
        raise SettingsError(f"--remove {remove}: must be between 0 and {n - 1}")
    order = idx[np.argsort(infl, kind="stable")]
    drop = set(order[:remove].tolist())
    out_folder = os.path.dirname(os.path.abspath(output))

    def rebase(cell: str) -> str:
        text = cell.strip()
        if (
            os.path.splitext(text)[1]
            and not os.path.isabs(text)
            and os.path.exists(os.path.join(src_folder, text))
        ):
            return os.path.relpath(os.path.join(src_folder, text), out_folder)
        return cell

    with atomic_write(output, newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for j, row in enumerate(rows):
            if j in drop:
                continue
            w.writerow([rebase(c) if k in image_cols else c for k, c in enumerate(row)])
    return {"removed": sorted(drop), "kept": n - len(drop), "output": os.path.abspath(output)}


def check_not_input(output: str, inputs: Sequence[Optional[str]]) -> None:
    """Refuse an output path that is one of the input files."""
    for src in inputs:
        if src and (os.path.abspath(src) == os.path.abspath(output) or _same_file(output, src)):
            raise SettingsError(
                f"{output}: refusing to overwrite the input {src}; choose another --output"
            )
