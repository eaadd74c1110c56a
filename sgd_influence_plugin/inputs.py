"""A command's inputs, read and checked before anything is computed.

``run`` (:mod:`.runner`) and ``check`` (:mod:`.check`) both start with :func:`load_inputs`: the
options, the model files, the dataset CSVs (given, or named by the network definition), the
output places, the decoded data and the validation loss at the trained parameters. Whatever
is wrong is reported before the first SGD step, with the calling interface's option names.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import interrupts, memory, neighbours, parallel, places, validation
from .cells import CACHED
from .core import per_sample_losses
from .dataset import Dataset, Normalize, decode, in_workers, read_rows
from .errors import ComputationError, SettingsError
from .nnabla_adapter import load_model
from .nnabla_adapter.rows import check_rows_independent
from .resolved import dominant_row_warning
from .validation import FlagNames


@dataclass
class Inputs:
    """What :func:`load_inputs` read.

    Attributes:
        model: the loaded :class:`~sgd_influence_plugin.nnabla_adapter.NnablaModel`.
        train_csv / val_csv: the dataset CSVs read (given, or the definition's).
        train / val: the decoded datasets.
        val_loss: mean validation loss at the trained parameters (finite).
        read_seconds: wall time of decoding both CSVs.
        val_losses: float64 (V,) each validation row's loss there (their mean is ``val_loss``).
        warnings: sentences about the inputs that do not stop the run (one validation row
            carrying most of the loss: :func:`.resolved.dominant_row_warning`).

    """

    model: object
    train_csv: str
    val_csv: str
    train: Dataset
    val: Dataset
    val_loss: float
    read_seconds: float
    val_losses: Optional[np.ndarray] = None
    warnings: List[str] = field(default_factory=list)


def dataset_path(given, ref, what, flag):
    """The dataset CSV to read: the one given, else the network definition's ``ref``.

    Raises:
        SettingsError: neither, naming the option ``flag`` that supplies it.

    """
    if given:
        return given
    if ref is None or not ref.uri:
        raise SettingsError(f"the network definition names no {what} dataset; pass {flag}")
    return ref.uri


def check_separate(datasets: Sequence[Tuple[str, str]]) -> None:
    """Refuse one file given as two of the ``(option, path)`` datasets: a validation loss
    that counts each training row itself, a recommendation's held-out check (or a test)
    that is not held out.

    Raises:
        SettingsError: the later option's file is the earlier one's.

    """
    for i, (flag_a, a) in enumerate(datasets):
        for flag_b, b in datasets[i + 1 :]:
            if os.path.exists(a) and places.same_file(a, b):  # a missing one: named when read
                raise SettingsError(
                    f"{b}: {flag_b} is the same file as {flag_a}; the influence is measured "
                    f"on rows kept out of training (a test too): give "
                    f"{flag_b} a CSV of other rows"
                )


def _reading_progress(progress, stage: str):
    """``(done, total)`` callback for decoding rows: a stop request ends it; reports to
    ``progress`` as ``stage`` when there is one.
    """

    def call(done: int, total: int) -> None:
        interrupts.check()
        if progress is not None:
            progress(stage, done, total)

    return call


def load_inputs(
    request,
    flags: FlagNames,
    check_places: Callable[[List[str], Iterable[str]], None],
    check_loaded: Callable[[object, Dataset, Dataset], None],
    extra_inputs: Iterable[Optional[str]] = (),
    log: Callable[[str], None] = lambda m: None,
    progress=None,
) -> Inputs:
    """Check the options, load the model, check the output places, decode and check the data.

    In this order: :func:`validation.check_options`; the model; the dataset CSVs;
    ``check_places``; decoding both CSVs (in as many forked workers as the trials may use,
    :func:`parallel.workers_for`); ``check_loaded``; every row's loss its own
    (:func:`.nnabla_adapter.rows.check_rows_independent`); the validation loss at the trained
    parameters. A stop request (Ctrl-C, SIGTERM) is honoured between the steps and while
    decoding.

    Args:
        request: a :class:`~sgd_influence_plugin.runner.RunRequest` (``output``, ``model``,
            ``config``, ``params``, ``train``, ``val``, ``settings`` and the options
            :func:`validation.check_options` reads); its settings are validated in place.
        flags: the calling interface's option names, for messages.
        check_places: ``(input_files, image_folders)``: the command's output places against
            the input files (model, parameters, dataset CSVs, ``extra_inputs``) and the folders
            of the images the CSVs name.
        check_loaded: ``(model, train, val)``: the command's checks of the decoded data
            (labels, weight decay, free space, ...).
        extra_inputs: more files the command reads (e.g. the class names file).
        log: callback for user-facing messages.
        progress: optional ``(stage, done, total)`` callback.

    Raises:
        SGDInfluenceError: the first problem found; ComputationError when the validation loss
            at the trained parameters is not finite.

    """
    validation.check_options(request, flags)  # validates the settings in place
    settings = request.settings
    model = load_model(request.model, request.config, request.params, settings.context)
    info = model.info
    train_csv = dataset_path(request.train, info.train_dataset, "training", flags.train)
    val_csv = dataset_path(request.val, info.val_dataset, "validation", flags.val)
    check_separate([(flags.train, train_csv), (flags.val, val_csv)])
    files = [request.model, request.config, request.params, train_csv, val_csv, *extra_inputs]
    check_places([f for f in files if f], places.image_folders(train_csv, val_csv))
    interrupts.check()
    log(f"reading {train_csv} and {val_csv}")
    t_read = time.perf_counter()
    train, val = _read_datasets(train_csv, val_csv, model, settings, progress)
    t_read = time.perf_counter() - t_read
    check_loaded(model, train, val)
    check_rows_independent(model, train.arrays, model.info.source)
    interrupts.check()
    losses, loss0 = _validation_losses(model, val, val_csv, settings.val_batch_size)
    dominant = dominant_row_warning(losses, val_csv, val.row_number)
    warnings = [dominant] if dominant else []
    return Inputs(model, train_csv, val_csv, train, val, loss0, t_read, losses, warnings)


def _read_datasets(train_csv: str, val_csv: str, model, settings, progress):
    """Both CSVs decoded for the network ``model`` describes (:func:`read_datasets`), in as
    many forked workers as the trials may use; a stop request ends the reading.
    """
    stages = [
        (train_csv, _reading_progress(progress, "reading training CSV")),
        (val_csv, _reading_progress(progress, "reading validation CSV")),
    ]
    return read_datasets(stages, model, settings, jobs=None)


def image_scaling(ref) -> Normalize:
    """How ``nnabla_cli train`` scales the 8-bit images of the dataset ``ref`` (a
    :class:`~.nnabla_adapter.definition.DatasetRef`) names: as the console writes it, through
    its cache (:data:`.cells.CACHED`); without a cache, by 1/255 in float64 (True, also where
    the definition names no dataset); or not at all (``no_image_normalization``).
    """
    if ref is None:
        return True
    return CACHED if ref.normalize and ref.cached else ref.normalize


def read_datasets(
    csvs: Sequence[Tuple[str, Optional[Callable[[int, int], None]]]],
    model,
    settings,
    jobs: Optional[int] = 1,
) -> List[Dataset]:
    """The dataset CSVs a command reads (training first), each decoded for ``model``'s
    inputs; the one place every command (``run``, ``check``, ``evaluate``) decodes them.
    Images are scaled as ``nnabla_cli train`` scales them (:func:`image_scaling`): the first
    CSV as the definition's training dataset, the others as its validation dataset.

    Every CSV's text is read and its columns checked first; then the memory the decoded
    arrays and the work on them (the network's parameters and features) need is checked
    against what this machine has (:func:`.memory.check_memory`, with the workers
    ``settings.context`` and ``settings.jobs`` give, :func:`parallel.workers_for`, and how
    they start); only then is any file a cell names opened.

    Args:
        csvs: ``(path, progress)`` of each CSV; ``progress(done, total)`` in rows, or None.
        model: the loaded model (its inputs' shapes, its trainable scalars).
        settings: the :class:`~.settings.InfluenceSettings` (context, jobs, trials).
        jobs: decoding workers (None: as many as the trials may use).

    Raises:
        InputError, DatasetError: a CSV cannot be read or decoded, or the data would not fit
            the memory (one line naming the CSVs and both sizes).

    """
    info = model.info
    train_scaling = image_scaling(info.train_dataset)  # every later CSV as the validation set
    val_scaling = image_scaling(info.val_dataset) if info.val_dataset else train_scaling
    scalings = [train_scaling] + [val_scaling] * (len(csvs) - 1)
    rows = [read_rows(p, info.input_shapes, k) for (p, _), k in zip(csvs, scalings)]
    workers = parallel.workers_for(settings.context, settings.jobs)
    jobs = workers if jobs is None else jobs
    sizes = [(r.path, len(r.rows), r.values_per_row, in_workers(len(r.rows), jobs)) for r in rows]
    n_val = len(rows[1].rows) if len(rows) > 1 else 0
    features = neighbours.memory_need(model.feature_width, len(rows[0].rows), n_val)
    spawned = workers > 1 and parallel.default_start() == "spawn"
    memory.check_memory(sizes, model.n_params, workers + 1, settings.trials, features, spawned)
    return [decode(r, report, jobs) for r, (_, report) in zip(rows, csvs)]


def _validation_losses(model, val: Dataset, val_csv: str, batch_size: int):
    """``(each validation row's loss, their mean)`` at the trained parameters.

    Raises:
        ComputationError: the mean is not finite.

    """
    losses = per_sample_losses(model, val.arrays, batch_size)
    loss0 = float(np.mean(losses))
    bad = np.flatnonzero(~np.isfinite(losses))
    if 0 < bad.size < losses.size:  # some rows only: their numbers, not the parameters
        raise ComputationError(
            f"{val_csv} row {val.row_number(int(bad[0]))}: the loss at the trained parameters "
            f"is {losses[bad[0]]} ({bad.size} of {losses.size} rows); check the row's numbers "
            "against those the network was trained on"
        )
    if not math.isfinite(loss0):
        raise ComputationError(
            f"{model.info.source}: the validation loss at the trained parameters is {loss0} on "
            f"{val_csv}; check that the parameters belong to this network and the data to it"
        )
    return losses, loss0
