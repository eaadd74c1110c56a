"""A run's output set: what it holds, and the one call that writes it.

For ``out/influence.csv`` the set is (see :data:`COMPANIONS`):

- ``out/influence.csv``: the scores, one row per training row (:mod:`.influence_csv`);
- ``out/influence_thumbnails/``: only when the images are larger than the thumbnail box
  (:mod:`.influence_csv`);
- ``out/influence_settings.yaml``: the settings and the run's facts (:mod:`.settings`);
- ``out/influence_summary.txt``: counts, per-class shares, the recommendation (:mod:`.summary`);
- ``out/influence_report.html``: on request (:mod:`.report`);
- ``out/influence_trials.csv``: each trial's raw scores (:mod:`.trials_csv`);
- ``out/influence_cleansed.csv``: the training CSV with the recommendation applied, or without
  a share of the most harmful rows when one is given (:mod:`.cleansed_csv`).

The run's content travels as one :class:`RunContent`; :func:`write_influence_output` plans
the set and writes it through :func:`.output_set.write`, which stages every file and puts them
in place all together or not at all, replacing only what the tool wrote (:mod:`.ownership`).
An old view the new set does not write (thumbnails, report, trials) is removed if the tool
wrote it, so no stale view sits beside a new CSV; a cleansed CSV is data the user may be
training on: it is never removed, only replaced.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np

from . import influence_csv
from . import report as html_report
from .cleansed_csv import label_place, run_changes, write_cleansed
from .dataset import Dataset
from .errors import SettingsError
from .file_cells import shown_where_they_are
from .influence_csv import RowCells, image_cells, row_cells
from .labels import canonical_label, class_pairs
from .output_set import OutputSet, Writer, write
from .output_set import companion_path as named_after
from .settings import write_yaml
from .summary import recommendation_text, summary_text
from .table_columns import TableColumns, find_columns, row_details
from .trials_csv import write_trials

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
#: Companions that only show the influence CSV's content: removed when a new set lacks them.
_VIEWS = ("thumbnails", "report", "trials")


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
    return named_after(out_csv, COMPANIONS[kind])


def planned_paths(out_csv: str) -> OutputPaths:
    """Every path a run with output ``out_csv`` may write (see :data:`COMPANIONS`)."""
    return OutputPaths(
        csv=os.path.abspath(out_csv),
        **{kind: companion_path(out_csv, kind) for kind in COMPANIONS},
    )


@dataclass
class RunContent:
    """What a run's output set shows.

    Attributes:
        scores: float64 (N,) in training-row order (negative = harmful).
        train: the training :class:`Dataset` the scores belong to.
        used_columns: dataset variables the network reads (to find file and label columns).
        info: settings and run facts, written to ``<stem>_settings.yaml`` and summarised;
            the writer adds the recommendation, its class pairs and its own timings.
        losses: float64 (N,) per-row training losses for the ``loss`` column (empty if None).
        trial_scores: float64 (M, N) each trial's raw scores, for ``<stem>_trials.csv``
            (None: no trials CSV).
        recommendation: the run's :class:`~.recommendation.Recommendation` (None: every row
            ``keep``, no suggested label).
        label_names: class names, ``label_names[k]`` for label k (checked by the caller);
            the summary and the report show them beside the numbers, the CSV keeps numbers.
        target: the dataset variable the loss compares with (``ModelInfo.target_column``):
            its column is the label; None = the first single-cell number column.
        remove_ratio: ``<stem>_cleansed.csv`` is the training CSV without the
            ``round(remove_ratio * N)`` most harmful rows, overriding the recommendation
            (None = apply the recommendation).
        candidate_scores: float64 (M, N) each trial's scores from the candidates' half of the
            validation rows (:mod:`.crossfit`), written to the trials CSV after
            ``trial_scores`` (None: none); ``half_b_scores`` the same from half B (the
            two-way check, :mod:`.pooled_check`), after them.

    """

    scores: np.ndarray
    train: Dataset
    used_columns: Sequence[str]
    info: Dict
    losses: Optional[np.ndarray] = None
    trial_scores: Optional[np.ndarray] = None
    recommendation: object = None
    label_names: Optional[Sequence[str]] = None
    target: Optional[str] = None
    remove_ratio: Optional[float] = None
    candidate_scores: Optional[np.ndarray] = None
    half_b_scores: Optional[np.ndarray] = None


def write_influence_output(
    out_csv: str,
    content: RunContent,
    report: bool = False,
    thumb_size: int = 64,
    flag: str = "--output",
    progress=None,
) -> OutputPaths:
    """Write a run's output set (see the module docstring): all of it, or nothing.

    Args:
        out_csv: path of the influence CSV; its folder is created if needed.
        content: the run's scores, rows and facts.
        report: also write ``<stem>_report.html``.
        thumb_size: thumbnail bounding box in pixels.
        flag: the output option of the calling interface, for messages.
        progress: optional ``(stage, done, total)`` callback, told of the thumbnails. The
            seconds spent on thumbnails and on the CSVs go into ``info["timings_seconds"]``
            (as ``thumbnails`` and ``write_csvs``) before the settings file is written.

    Raises:
        OutputError: a target holds something the tool did not write, or writing failed
            (disk full, permissions).
        DatasetError: a training image cannot be read for its thumbnail.
        SettingsError: the scores do not fit the training rows, or are not finite.

    """
    train, scores = content.train, content.scores
    if len(scores) != train.size:
        raise SettingsError(f"{len(scores)} scores for {train.size} training rows")
    if not np.all(np.isfinite(scores)):
        raise SettingsError("refusing to write non-finite influence scores")
    one_hot = bool(content.info.get("label_one_hot"))  # a relabel writes its one-hot vector
    columns = find_columns(train, content.used_columns, content.target, one_hot)
    cells = row_cells(train, columns, scores, content.recommendation)
    _record_recommendation(content, cells)
    thumbs = any(cells.images) and not influence_csv.fits_box(train, columns.file, thumb_size)
    plan = run_set(out_csv, flag, thumbs, report, content.trial_scores is not None)
    view = _RunView(content, columns, cells, plan, thumb_size, progress)
    write(plan, view.writers())
    return OutputPaths(**{kind: plan.get(kind) for kind in ("csv", *COMPANIONS)})


def run_set(out_csv: str, flag: str, thumbnails: bool, report: bool, trials: bool) -> OutputSet:
    """The output set of a run into ``out_csv``: the influence CSV, settings, summary and
    cleansed CSV always; thumbnails, report and trials when asked; an old view the set lacks
    is removed (if the tool wrote it).
    """
    plan = planned_paths(out_csv)
    wanted = {"thumbnails": thumbnails, "report": report, "trials": trials}
    written = {k: getattr(plan, k) for k in COMPANIONS if wanted.get(k, True)}
    return OutputSet(
        plan.csv,
        "run",
        flag,
        companions=written,
        folders=("thumbnails",),
        stale=[getattr(plan, k) for k in _VIEWS if k not in written],
    )


def _record_recommendation(content: RunContent, cells: RowCells) -> None:
    """The recommendation in ``info`` (settings, report), with the class pairs its changes
    concentrate on when rows have labels.
    """
    rec = content.recommendation
    if rec is None:
        return
    info = content.info
    info.setdefault("recommendation", rec.to_dict())
    if cells.labels is not None:
        changed = [j for j, a in enumerate(cells.actions) if a != "keep"]
        info["recommendation"]["class_pairs"] = class_pairs(
            cells.labels, cells.suggested, changed, content.label_names
        )


class _RunView:
    """The writers of a run's set: each member from the same content and row cells."""

    def __init__(self, content, columns: TableColumns, cells: RowCells, plan, size, progress):
        self.content, self.columns, self.cells, self.plan = content, columns, cells, plan
        self.size, self.progress = size, progress
        thumbs = plan.get("thumbnails")
        self.files = image_cells(
            content.train,
            columns.file,
            cells.images,
            plan.folder,
            os.path.basename(thumbs) if thumbs else "",
        )
        self.details = row_details(content.train, columns, cells.images)
        #: the labels by class (summary, report): none where the label is a data file
        self.classes = None if columns.label_files else cells.labels
        if columns.label_files:  # the CSV's target files open from its folder
            cells.labels = shown_where_they_are(content.train, columns.label, plan.folder)
        self.other_files = {
            c: shown_where_they_are(content.train, c, plan.folder) for c in columns.other_files
        }
        self.spent = {"thumbnails": 0.0, "write_csvs": 0.0}  # seconds, for the settings

    def writers(self) -> Dict[str, Writer]:
        """The writer of each member of the plan (kind -> writer), in the order they run."""
        every = {
            "thumbnails": self._timed("thumbnails", self.write_thumbnails),
            "csv": self._timed("write_csvs", self.write_csv),
            "trials": self._timed("write_csvs", self.write_trials),
            "settings": self.write_settings,
            "summary": self.write_summary,
            "report": self.write_report,
            "cleansed": self.write_cleansed,
        }
        return {kind: w for kind, w in every.items() if self.plan.get(kind)}

    def _timed(self, what: str, writer: Writer) -> Writer:
        def timed(path: str) -> None:
            t0 = time.perf_counter()
            writer(path)
            self.spent[what] += time.perf_counter() - t0

        return timed

    def write_thumbnails(self, path: str) -> None:
        c = self.content
        influence_csv.write_thumbnails(
            path, c.train, self.columns.file, self.cells.images, self.size, self.progress
        )

    def write_csv(self, path: str) -> None:
        c = self.content
        influence_csv.write_influence_csv(
            path,
            c.train,
            self.columns,
            self.cells,
            self.files,
            c.scores,
            c.losses,
            self.other_files,
        )

    def write_trials(self, path: str) -> None:
        c = self.content
        write_trials(path, c.trial_scores, c.candidate_scores, c.half_b_scores)

    def write_settings(self, path: str) -> None:
        timings = self.content.info.setdefault("timings_seconds", {})
        timings.update({what: round(seconds, 4) for what, seconds in self.spent.items()})
        write_yaml(path, self.content.info)

    def write_summary(self, path: str) -> None:
        c, cells = self.content, self.cells
        text = summary_text(
            c.scores,
            self.classes,
            c.train,
            self.columns.file,
            c.info,
            c.label_names,
            c.losses,
            self.details,
        ) + recommendation_text(
            c.recommendation,
            cells.actions,
            self.classes,
            cells.suggested,
            c.label_names,
            os.path.basename(self.plan.path("cleansed")),
        )
        with open(path, "w") as f:
            f.write(text)

    def write_report(self, path: str) -> None:
        c, cells = self.content, self.cells
        # Thumbnails are read from the staging folder; files shown where they are, from here.
        base = os.path.dirname(path) if self.plan.get("thumbnails") else self.plan.folder
        thumbs = [
            os.path.join(base, t) if image else "" for t, image in zip(self.files, cells.images)
        ]
        html_report.write_report(
            path,
            c.scores,
            [canonical_label(x) for x in self.classes] if self.classes else None,
            thumbs if cells.images else [""] * c.train.size,
            c.info,
            label_names=c.label_names,
            actions=cells.actions,
            suggested=cells.suggested,
            details=self.details,
        )

    def write_cleansed(self, path: str) -> None:
        train, cells = self.content.train, self.cells
        label = self.columns.label or list(self.columns.one_hot)
        drop, relabel = run_changes(
            cells.order, cells.actions, cells.suggested, self.content.remove_ratio, bool(label)
        )
        write_cleansed(
            train.header,
            train.rows,
            drop,
            train.folder,
            self.plan.folder,
            path,
            relabel,
            label_place(train.header, label) if label else None,
        )
