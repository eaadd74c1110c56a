"""One run from files to files; the console plugin, the CLI and the tests call :func:`run`."""

from __future__ import annotations

import errno
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import __version__, interrupts, parallel, validation
from .api import InfluenceResult, compute_influence
from .core import mean_loss
from .dataset import load_dataset
from .errors import ComputationError, OutputError, SettingsError
from .io_utils import makedirs_tracked, try_lock
from .labels import check_labels, read_label_names
from .nnabla_adapter import load_model
from .output import OutputPaths, find_columns, write_influence_output
from .settings import InfluenceSettings
from .validation import CLI_FLAGS, FlagNames


@dataclass
class RunRequest:
    """Files and options of one run.

    Attributes:
        output: path of the influence CSV to write.
        model: ``results.nnp``; or ``config`` (``net.nntxt``) with ``params`` (``.h5``).
        train / val: dataset CSVs; None = the ones the network definition names (the
            optimizer's dataset and the validation monitor's), resolved from the cwd.
        settings: the influence settings.
        cache_dir: keep the cache here; None = temporary, removed at the end.
        report: also write ``<stem>_report.html``.
        remove_ratio: also write ``<stem>_cleansed.csv`` beside the output without this share
            of the most harmful rows (None = don't).
        thumb_size: thumbnail box in pixels (16..512).
        label_names: text file with one class name per line, line 1 for label 0 (see
            :mod:`.labels`); the summary and the report show the names. None = numbers only.

    """

    output: str
    model: Optional[str] = None
    config: Optional[str] = None
    params: Optional[str] = None
    train: Optional[str] = None
    val: Optional[str] = None
    settings: InfluenceSettings = field(default_factory=InfluenceSettings)
    cache_dir: Optional[str] = None
    report: bool = False
    remove_ratio: Optional[float] = None
    thumb_size: int = 64
    label_names: Optional[str] = None


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


def _lock_cache_dir(path: str, flag: str):
    """Lock the cache folder for this run (an open file; closing it releases the lock).

    Two runs writing one cache folder overwrite each other's parameters (and HDF5 refuses a
    file another process has open), so a second run is refused.

    Raises:
        OutputError: another run holds the lock.

    """
    f = open(os.path.join(path, validation.CACHE_LOCK), "a+")
    if not try_lock(f):
        f.close()
        raise OutputError(validation.cache_in_use(path, flag))
    return f


def _prepare_cache_dir(path: str) -> Optional[str]:
    """Create the cache folder (if new) with its marker; the shallowest folder this call
    created (to remove on failure), or None.
    """
    created = makedirs_tracked(path)
    marker = os.path.join(path, validation.CACHE_MARKER)
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("Cache of sgd-influence; the tool may write and replace files here.\n")
    return created[0] if created else None


def run(
    request: RunRequest,
    log: Callable[[str], None] = lambda m: None,
    progress=None,
    flags: FlagNames = CLI_FLAGS,
) -> tuple[OutputPaths, InfluenceResult]:
    """Load, validate every input, compute, and write the outputs (see :mod:`.output`).

    Every check of :mod:`.validation` runs before the computation starts; what is computed is
    checked (finite scores) before anything is written. A stop requested by Ctrl-C or SIGTERM
    (see :mod:`.interrupts`) takes effect at the next step and leaves nothing behind.

    Args:
        request: files and options.
        log: callback for user-facing messages.
        progress: optional ``(stage, done, total)`` callback.
        flags: the calling interface's option names, for messages.

    Raises:
        SGDInfluenceError: any bad input, before anything is written; ComputationError when
            the validation loss at the trained parameters is not finite; UnstableReplayError
            when a trial stays unstable after its retries (nothing is written).
        KeyboardInterrupt: on Ctrl-C / SIGTERM; nothing partial is left.

    """
    validation.check_options(request, flags)
    settings = request.settings.validate()
    model = load_model(request.model, request.config, request.params, settings.context)
    info = model.info
    train_csv = dataset_path(request.train, info.train_dataset, "training", flags.train)
    val_csv = dataset_path(request.val, info.val_dataset, "validation", flags.val)
    inputs = [
        request.model,
        request.config,
        request.params,
        train_csv,
        val_csv,
        request.label_names,
    ]
    validation.check_output_places(
        request, flags, inputs, validation.image_folders(train_csv, val_csv)
    )
    interrupts.check()
    normalize = info.train_dataset.normalize if info.train_dataset else True
    log(f"reading {train_csv} and {val_csv}")
    t_read = time.perf_counter()

    def rows_progress(stage: str):
        report = _stage(progress, stage)

        def call(done: int, total: int) -> None:
            interrupts.check()
            if report is not None:
                report(done, total)

        return call

    # The CSVs are decoded by as many workers as the trials may use (forked: none with a
    # CUDA context, as for the trials).
    jobs = (settings.jobs or parallel.usable_cores()) if settings.context.startswith("cpu") else 1
    train = load_dataset(
        train_csv, info.input_shapes, normalize, rows_progress("reading training CSV"), jobs
    )
    val = load_dataset(
        val_csv, info.input_shapes, normalize, rows_progress("reading validation CSV"), jobs
    )
    t_read = time.perf_counter() - t_read
    validation.check_loaded(request, info, train, val, model.n_params, flags)
    names = read_label_names(request.label_names) if request.label_names else None
    if names is not None:
        _, label_col = find_columns(train, list(info.input_shapes))
        labels = [train.cell(i, label_col) for i in range(train.size)] if label_col else None
        check_labels(names, labels, request.label_names, train_csv, train.numbers)
    interrupts.check()
    for note in info.notes:
        log("replay network: " + note)
    log(
        f"{train.size} training and {val.size} validation samples; "
        f"{model.n_params} trained parameters"
    )
    loss0 = mean_loss(model, val.arrays, settings.val_batch_size)
    if not math.isfinite(loss0):
        raise ComputationError(
            f"{info.source}: the validation loss at the trained parameters is {loss0} on "
            f"{val_csv}; check that the parameters belong to this network and the data to it"
        )
    made_cache: Optional[str] = None
    lock = None
    try:
        if request.cache_dir is not None:
            made_cache = _prepare_cache_dir(request.cache_dir)
            lock = _lock_cache_dir(request.cache_dir, flags.cache_dir or "cache folder")
        result = compute_influence(
            model,
            train.arrays,
            val.arrays,
            settings,
            request.cache_dir,
            progress=interrupts.checked_progress(progress),
            log=log,
            val_loss_start=loss0,
        )
        facts = run_facts(result, settings, info, model.n_params, train_csv, val_csv)
        facts["n_train"], facts["n_val"] = train.size, val.size
        facts["timings_seconds"]["reading"] = round(t_read, 4)
        facts["label_names"] = os.path.abspath(request.label_names) if request.label_names else None
        paths = write_influence_output(
            request.output,
            result.scores,
            train,
            list(info.input_shapes),
            facts,
            request.thumb_size,
            request.report,
            remove_ratio=request.remove_ratio,
            flag=flags.output,
            losses=result.losses,
            trial_scores=result.trial_scores,
            label_names=names,
            progress=None if progress is None else interrupts.checked_progress(progress),
        )
    except BaseException as e:
        if lock is not None:
            lock.close()
            lock = None
        if made_cache:
            shutil.rmtree(made_cache, ignore_errors=True)
        if isinstance(e, OSError):
            # Writing the cache failed (the outputs convert their own errors): a full disk,
            # or a folder made read-only while running.
            where = flags.cache_dir or "cache folder"
            fix = (
                f"free some space or choose another {where}"
                if e.errno in (errno.ENOSPC, errno.EDQUOT)
                else f"check that folder (is another program using it?) or choose another {where}"
            )
            raise OutputError(
                f"{e.filename or request.cache_dir or 'the temporary folder'}: cannot write the "
                f"cache ({e.strerror or e}); {fix}"
            ) from e
        raise
    finally:
        if lock is not None:
            lock.close()
    return paths, result


def run_facts(result: InfluenceResult, settings, info, n_params, train_csv, val_csv) -> dict:
    """What ``settings.yaml`` records: what was asked (``requested``), what was used
    (``used``), how the learning rate was chosen, each trial, timings and versions.
    """
    return {
        "requested": settings.to_dict(),
        "used": {
            "lr": result.run.lr,
            "weight_decay": result.run.weight_decay,
            "batch_size": result.run.batch_size,
            "epochs": settings.epochs,
            "trials": settings.trials,
            "cache": settings.cache,
            "context": settings.context,
            "seeds": [o.seed for o in result.trials],
        },
        "lr_selection": result.run.lr_selection(),
        "trials": [
            {
                "seed": o.seed,
                "lr": o.lr,
                "attempts": o.attempts,
                "u_growth": float(f"{o.u_growth:.4g}"),
                "scale_rms": float(f"{s:.6g}"),
                "validation_loss": round(o.val_loss, 6),
            }
            for o, s in zip(result.trials, result.trial_scales)
        ],
        "model": info.source,
        "train_csv": os.path.abspath(train_csv),
        "val_csv": os.path.abspath(val_csv),
        "n_params": n_params,
        "validation_loss": round(result.val_loss, 6),
        "cache_bytes": result.cache_bytes,
        "timings_seconds": {k: round(float(v), 4) for k, v in result.timings.items()},
        "network_changes": list(info.notes),
        "warnings": list(result.warnings),
        "versions": {
            "sgd_influence_plugin": __version__,
            "nnabla": _nnabla_version(),
            "python": platform.python_version(),
        },
        "sign": "influence < 0: removing the sample lowers the validation loss (harmful)",
        "influence": "trials combined: each trial divided by its RMS, averaged, times the "
        "median RMS; units of the mean validation loss",
    }


def _stage(progress, stage: str):
    """``(done, total)`` callback that reports to ``progress`` as ``stage`` (None: none)."""
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


def _nnabla_version() -> str:
    import nnabla

    return nnabla.__version__
