"""Write what the user sees: the influence CSV, thumbnails, summary, settings, cleansed CSV.

Influence CSV (NNC dataset format, so the console's viewer shows and sorts it)::

    x:image,y:label,influence,loss,suggested_label,confidence,neighbour_agreement,action,datasource_index,original
    influence_thumbnails/000123.png,3,-0.0123,2.31,5,0.93,0.042,relabel,123,train/000123.png

- rows sorted by ``influence`` ascending: the most harmful (most negative) first;
- ``x:image``: the sample's image, path relative to the CSV's folder: the training image
  itself when it fits the thumbnail box (the network's input is at most ``thumb_size``
  pixels high and wide: nothing is copied), otherwise a reduced PNG in the thumbnails folder;
  a data file that is not an image (``.npy``, ...) is always shown where it is. Paths are
  computed between the real (symbolic links resolved) folders, so they open from the CSV's
  folder even when the output folder or the data is reached through a link;
- ``influence``: the trials' combined score (units of the mean validation loss; with the
  default target ``class-centred`` relative to an average row of the sample's class, see
  :mod:`.target`; negative = harmful); ``loss``: the sample's training loss at the trained
  parameters;
- ``suggested_label``: the model's class for the sample, ``confidence`` its probability (both
  empty when the run cannot recommend, e.g. for regression); ``neighbour_agreement``: the
  share of the sample's nearest validation rows, in the network's feature space, that carry
  its label (0-1; low = a likely wrong label; empty when not measured, see
  :mod:`.neighbours`); ``action``: the run's
  recommendation, ``keep``, ``relabel`` (to ``suggested_label``) or ``remove`` (see
  :mod:`.recommend`);
- ``datasource_index``: 0-based data row of the sample in the training CSV;
- ``original``: the sample's image cell exactly as written in the training CSV.

Everything else is named after the CSV (see :data:`COMPANIONS`): for ``out/influence.csv``,
``out/influence_thumbnails/``, ``out/influence_settings.yaml``, ``out/influence_summary.txt``,
``out/influence_trials.csv`` (each trial's raw scores: ``datasource_index,trial_0,...`` in
training-row order), ``out/influence_cleansed.csv`` (the training CSV with the recommendation
applied, or without a share of the most harmful rows when one is given) and, on request,
``out/influence_report.html``.

Ownership (:mod:`.ownership`, the rule every writer follows): the tool replaces only what it
wrote, recorded in each output folder's ledger, and a thumbnails folder only when it holds the
marker; anything else is refused (:class:`~sgd_influence_plugin.errors.OutputError`) before
computing. A run's files are staged in a hidden folder first and put in place all together or
not at all (:func:`~sgd_influence_plugin.ownership.commit_staged`).
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import interrupts
from .cells import cell_path, data_path
from .dataset import Dataset
from .errors import DatasetError, SettingsError
from .labels import canonical_label, class_pairs
from .made_folders import write_marker
from .ownership import (  # noqa: F401 - re-exported: the rule's names, where callers know them
    LEDGER,
    THUMBNAILS_MARKER,
    check_replaceable,
    commit_staged,
    read_ledger,
    set_name,
    staging,
    written_by_tool,
)
from .summary import ranking, recommendation_text, summary_text
from .table_columns import find_columns, influence_header, row_details

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")

#: Every file or folder a run may write beside ``<stem>.csv``: kind -> suffix of the stem.
#: The one list the naming, ownership and overlap rules read.
COMPANIONS: Dict[str, str] = {
    "thumbnails": "_thumbnails",  # folder of PNGs, holds THUMBNAILS_MARKER
    "settings": "_settings.yaml",
    "summary": "_summary.txt",
    "report": "_report.html",
    "trials": "_trials.csv",
    "cleansed": "_cleansed.csv",
}
#: Companions that only show the influence CSV's content: an old one that a new run does not
#: write again is removed (if the tool wrote it), so no stale view sits beside a new CSV. A
#: cleansed CSV is data the user may be training on: it is never removed, only replaced.
_VIEWS = ("thumbnails", "report", "trials")
_ABOUT = "Thumbnails by sgd-influence; it replaces this folder as a whole."


@dataclass
class OutputPaths:
    """Where a run's files go (absolute paths); None = not written by this run."""

    csv: str
    thumbnails: Optional[str]
    settings: str
    summary: str
    report: Optional[str] = None
    cleansed: Optional[str] = None
    trials: Optional[str] = None


def companion_path(out_csv: str, kind: str) -> str:
    """The absolute path of companion ``kind`` (a key of :data:`COMPANIONS`) of ``out_csv``."""
    folder, name = os.path.split(os.path.abspath(out_csv))
    return os.path.join(folder, os.path.splitext(name)[0] + COMPANIONS[kind])


def planned_paths(out_csv: str) -> OutputPaths:
    """Every path a run with output ``out_csv`` may write (see :data:`COMPANIONS`)."""
    return OutputPaths(
        csv=os.path.abspath(out_csv),
        **{kind: companion_path(out_csv, kind) for kind in COMPANIONS},
    )


def is_image(cell: str) -> bool:
    """True if a data cell names an image file (one a thumbnail can be made of)."""
    return os.path.splitext(cell.strip())[1].lower() in _IMAGE_EXTS


def _has_parent_step(cell: str) -> bool:
    return ".." in cell.replace("\\", "/").split("/")


def _relative_from(full: str, out_real: str, real_dirs: Dict[str, str]) -> str:
    """``full`` as a path relative to the real folder ``out_real``, from the real location of
    its folder (cached in ``real_dirs``); absolute where none exists (another drive).
    """
    folder = os.path.dirname(full)
    if folder not in real_dirs:
        real_dirs[folder] = os.path.realpath(folder)
    real = os.path.join(real_dirs[folder], os.path.basename(full))
    try:
        return os.path.relpath(real, out_real)
    except ValueError:
        return real


def _shown_where_they_are(train: Dataset, image_col: str, out_folder: str) -> List[str]:
    """Each row's file path for a CSV in ``out_folder``: relative paths rebased, absolute
    ones kept.

    The relative path runs from the real location of ``out_folder`` to the real location of
    the training CSV's folder (symbolic links resolved): text like ``../data/...`` computed
    from the link's own path would resolve under the link's target instead. One prefix serves
    every row (no file is looked up again: the reader opened each); a cell with a ``..``
    step, which may climb out of a linked folder, is resolved on its own.
    """
    out_real = os.path.realpath(out_folder)
    try:
        prefix = os.path.relpath(os.path.realpath(train.folder), out_real)
    except ValueError:
        prefix = os.path.realpath(train.folder)
    col = train.header.index(image_col)
    out = []
    real_dirs: Dict[str, str] = {}
    for row in train.rows:
        cell = cell_path(row[col])
        if os.path.isabs(cell):
            out.append(cell)
        elif _has_parent_step(cell):
            out.append(_relative_from(os.path.join(train.folder, cell), out_real, real_dirs))
        else:
            out.append(os.path.normpath(os.path.join(prefix, cell)))
    return out


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


def _recommendation_cells(rec, n: int):
    """Per-row ``(action, suggested_label, confidence, neighbour_agreement)`` cells of the
    influence CSV.
    """
    if rec is None:
        return ["keep"] * n, [""] * n, [""] * n, [""] * n
    return (
        [str(a) for a in rec.action],
        [str(int(k)) if k >= 0 else "" for k in rec.suggested],  # -1: no class (regression)
        [f"{c:.4f}" if np.isfinite(c) else "" for c in rec.confidence],
        [""] * n if rec.agreement is None else [f"{a:.3f}" for a in rec.agreement],
    )


def _rebase(cell: str, src_folder: str, out_real: str, real_dirs: Dict[str, str]) -> str:
    """A file cell of a CSV in ``src_folder`` rewritten for a CSV in ``out_folder`` (given as
    ``out_real``, its real location; ``real_dirs`` caches the real locations of folders).

    Relative paths to existing files become relative to ``out_folder`` (absolute where no
    relative path exists, e.g. another drive on Windows), computed between real locations
    (symbolic links resolved), so they open from ``out_folder``; numbers, absolute paths and
    cells naming no existing file are returned unchanged.
    """
    text = cell_path(cell)
    if (
        os.path.splitext(text)[1]
        and not os.path.isabs(text)
        and os.path.exists(data_path(src_folder, text))
    ):
        return _relative_from(data_path(src_folder, text), out_real, real_dirs)
    return cell


def write_cleansed(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    drop: set,
    src_folder: str,
    out_folder: str,
    path: str,
    relabel: Optional[Dict[int, str]] = None,
    label_col: Optional[int] = None,
) -> None:
    """Write ``rows`` without the indices in ``drop`` and with ``relabel[j]`` in column
    ``label_col`` of row j; file cells are rewritten relative to ``out_folder`` (where the
    CSV will live), so the console finds the images from there.
    """
    data_cols = [c for c, cell in enumerate(header) if not cell.startswith("#")]
    out_real = os.path.realpath(out_folder)
    real_dirs: Dict[str, str] = {}
    relabel = relabel or {}
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for j, row in enumerate(rows):
            if j in drop:
                continue
            out = [
                _rebase(c, src_folder, out_real, real_dirs) if k in data_cols else c
                for k, c in enumerate(row)
            ]
            if j in relabel:
                out[label_col] = relabel[j]
            w.writerow(out)


def recommended_changes(actions: Sequence[str], suggested: Sequence) -> Tuple[set, Dict[int, str]]:
    """``(rows to drop, {row: new label})`` from per-row actions (training-row order)."""
    drop = {j for j, a in enumerate(actions) if a == "remove"}
    relabel = {j: str(suggested[j]) for j, a in enumerate(actions) if a == "relabel"}
    return drop, relabel


def write_influence_output(
    out_csv: str,
    scores: np.ndarray,
    train: Dataset,
    used_columns: Sequence[str],
    info: Dict,
    thumb_size: int = 64,
    report: bool = False,
    remove_ratio: Optional[float] = None,
    recommendation=None,
    flag: str = "--output",
    losses: Optional[np.ndarray] = None,
    trial_scores: Optional[np.ndarray] = None,
    label_names: Optional[Sequence[str]] = None,
    progress=None,
    target: Optional[str] = None,
) -> OutputPaths:
    """Write the influence CSV and its companions (see the module docstring).

    Everything is staged first; an interrupt or error before the final moves leaves the old
    output (if any) as it was and nothing new behind.

    Args:
        out_csv: path of the influence CSV; its folder is created if needed.
        scores: float64 (N,) in training-row order (negative = harmful).
        train: the training :class:`Dataset` the scores belong to.
        used_columns: dataset variables the network reads (to find image and label columns).
        target: the dataset variable the loss compares with (``ModelInfo.target_column``):
            its column is the label; None = the first single-cell number column.
        info: settings and run facts, written to ``<stem>_settings.yaml`` and summarised.
        thumb_size: thumbnail bounding box in pixels.
        report: also write ``<stem>_report.html``.
        remove_ratio: ``<stem>_cleansed.csv`` is the training CSV without the
            ``round(remove_ratio * N)`` most harmful rows, overriding the recommendation
            (None = apply the recommendation).
        recommendation: the run's :class:`~.recommend.Recommendation` (None: every row
            ``keep``, no suggested label).
        flag: the output option of the calling interface, for messages.
        losses: float64 (N,) per-sample training losses for the ``loss`` column (empty if None).
        trial_scores: float64 (M, N) each trial's raw scores, for ``<stem>_trials.csv``.
        label_names: class names, ``label_names[k]`` for label k (checked by the caller);
            the summary and the report show them beside the numbers, the CSV keeps numbers.
        progress: optional ``(stage, done, total)`` callback, told of the thumbnails. The
            seconds spent on thumbnails and on the CSVs go into ``info["timings_seconds"]``
            (as ``thumbnails`` and ``write_csvs``) before the settings file is written.

    Raises:
        OutputError: a target holds something the tool did not write, or writing failed
            (disk full, permissions).
        DatasetError: a training image cannot be read for its thumbnail.

    """
    if len(scores) != train.size:
        raise SettingsError(f"{len(scores)} scores for {train.size} training rows")
    if not np.all(np.isfinite(scores)):
        raise SettingsError("refusing to write non-finite influence scores")
    plan = planned_paths(out_csv)
    folder = os.path.dirname(plan.csv)
    columns = find_columns(train, used_columns, target)
    image_col, label_col = columns.file, columns.label
    labels = [train.cell(i, label_col).strip() for i in range(train.size)] if label_col else None
    order = ranking(scores)
    actions, suggested, confidence, agreement = _recommendation_cells(recommendation, train.size)
    if recommendation is not None:
        info.setdefault("recommendation", recommendation.to_dict())
        if labels is not None:  # the class pairs the changes concentrate on (summary, report)
            changed = [j for j, a in enumerate(actions) if a != "keep"]
            info["recommendation"]["class_pairs"] = class_pairs(
                labels, suggested, changed, label_names
            )
    images = [is_image(train.cell(i, image_col)) for i in range(train.size)] if image_col else []
    make_thumbs = any(images) and not fits_box(train, image_col, thumb_size)
    paths = OutputPaths(
        csv=plan.csv,
        thumbnails=plan.thumbnails if make_thumbs else None,
        settings=plan.settings,
        summary=plan.summary,
        report=plan.report if report else None,
        cleansed=plan.cleansed,
        trials=plan.trials if trial_scores is not None else None,
    )
    # What this run writes: every companion set in ``paths`` (a new one only needs its path
    # set there and its file written into the staging folder).
    written = [kind for kind in COMPANIONS if getattr(paths, kind)]
    owner = set_name("run", paths.csv)
    for kind in written:
        check_replaceable(getattr(paths, kind), flag, folder=kind == "thumbnails", owner=owner)
    check_replaceable(paths.csv, flag, owner=owner)
    with staging(folder, flag) as stage:

        def staged(path: str) -> str:
            return os.path.join(stage, os.path.basename(path))

        t0 = time.perf_counter()
        thumbs_rel: List[str] = [""] * train.size
        if image_col:  # every file where it is; rows that get a thumbnail change below
            thumbs_rel = _shown_where_they_are(train, image_col, folder)
        if make_thumbs:
            thumbs_dir = os.path.basename(paths.thumbnails)
            os.makedirs(os.path.join(stage, thumbs_dir))
            for i in range(train.size):
                interrupts.check()
                if not images[i]:
                    continue  # a data file that is no image (.npy, ...) is shown where it is
                rel = f"{thumbs_dir}/{i:06d}.png"
                src = data_path(train.folder, train.cell(i, image_col))
                make_thumbnail(src, os.path.join(stage, rel), thumb_size)
                thumbs_rel[i] = rel
                if progress is not None:
                    progress("thumbnails", i + 1, train.size)
            # The marker lists the thumbnails: a file not among them stops a later run.
            write_marker(os.path.join(stage, thumbs_dir), THUMBNAILS_MARKER, _ABOUT, False)
        t1 = time.perf_counter()
        with open(staged(paths.csv), "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(influence_header(columns))
            for i in order:
                w.writerow(
                    ([thumbs_rel[i]] if image_col else [])
                    + ([labels[i]] if labels else [])
                    + [train.cell(int(i), c) for c in columns.features]
                    + [
                        repr(float(scores[i])),
                        repr(float(losses[i])) if losses is not None else "",
                        suggested[i],
                        confidence[i],
                        agreement[i],
                        actions[i],
                        int(i),
                    ]
                    + ([train.cell(int(i), image_col)] if image_col else [])
                )
        if trial_scores is not None:
            with open(staged(paths.trials), "w", newline="") as f:
                w = csv.writer(f, lineterminator="\n")
                w.writerow(["datasource_index"] + [f"trial_{m}" for m in range(len(trial_scores))])
                for i in range(train.size):
                    w.writerow([i] + [repr(float(t[i])) for t in trial_scores])
        from .settings import write_yaml

        timings = info.setdefault("timings_seconds", {})
        timings["thumbnails"] = round(t1 - t0, 4)
        timings["write_csvs"] = round(time.perf_counter() - t1, 4)
        write_yaml(staged(paths.settings), info)
        details = row_details(train, columns, images)  # a row's values where no image shows it
        with open(staged(paths.summary), "w") as f:
            f.write(
                summary_text(scores, labels, train, image_col, info, label_names, losses, details)
                + recommendation_text(
                    recommendation,
                    actions,
                    labels,
                    suggested,
                    label_names,
                    os.path.basename(paths.cleansed),
                )
            )
        if report:
            from .report import write_report

            write_report(
                staged(paths.report),
                scores,
                [canonical_label(x) for x in labels] if labels else None,
                [
                    (os.path.join(stage if make_thumbs else folder, t) if images[i] else "")
                    for i, t in enumerate(thumbs_rel)
                ]
                if images
                else [""] * train.size,
                info,
                label_names=label_names,
                actions=actions,
                suggested=suggested,
                details=details,
            )
        if remove_ratio is not None:
            drop, relabel = set(order[: int(round(remove_ratio * train.size))].tolist()), {}
        else:
            drop, relabel = recommended_changes(actions, suggested)
        if relabel and label_col is None:
            raise SettingsError("the recommendation relabels rows but no label column was found")
        write_cleansed(
            train.header,
            train.rows,
            drop,
            train.folder,
            folder,
            staged(paths.cleansed),
            relabel,
            train.header.index(label_col) if label_col else None,
        )
        # Companions first, the CSV last: a reader of the CSV never sees half a set.
        moves = [(staged(getattr(paths, k)), getattr(paths, k)) for k in written]
        stale = [getattr(plan, k) for k in _VIEWS if getattr(paths, k) is None]
        moves.append((staged(paths.csv), paths.csv))
        commit_staged(folder, moves, stale, flag, owner=owner)
    return paths
