"""``sgd-influence check``: its inputs, its files, and the fidelity check in between.

The measurement itself (one influence trial against exact leave-one-out re-runs, the
correlations and the verdict) is :mod:`.fidelity`. This module reads and checks the inputs
the way ``run`` does (:func:`.inputs.load_inputs`) and writes, named after the ``--output``
CSV (``check.csv``): ``check.csv`` (one row per checked sample), ``check_plot.png`` (estimate
vs actual) and ``check_settings.yaml`` (settings and figures): one output set, written all
or nothing through :mod:`.output_set`.
"""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from . import interrupts, label_values, output, ownership, places, validation
from .errors import SettingsError
from .fidelity import (  # noqa: F401 - verdict_line: the CLI and the dialog import it here
    DEFAULT_SAMPLES,
    MIN_SAMPLES,
    CheckResult,
    check_fidelity,
    verdict_line,
)
from .figures import MAX_X_TICKS, axis_scale
from .inputs import load_inputs
from .output_set import MAIN, OutputSet, companion_path, write
from .runner import RunRequest
from .settings import InfluenceSettings, write_yaml
from .table_columns import find_columns

#: Companion files of the check CSV: kind -> suffix of its stem.
CHECK_COMPANIONS: Dict[str, str] = {
    "plot": "_plot.png",
    "settings": output.COMPANIONS["settings"],
}
CHECK_COLUMNS = ["datasource_index", "group", "estimate", "actual", "original"]


def companion(out_csv: str, kind: str) -> str:
    """Absolute path of companion ``kind`` (a key of :data:`CHECK_COMPANIONS`) of the CSV."""
    return companion_path(out_csv, CHECK_COMPANIONS[kind])


def check_check_outputs(
    out_csv: str,
    flag: str,
    input_files: Sequence[Optional[str]],
    image_dirs: Sequence[str] = (),
) -> None:
    """The check CSV and its companions: a new ``.csv`` path (or one the tool wrote), not an
    input, not in an image folder, writable; companions absent or written by the tool.

    Raises:
        SettingsError, OutputError: naming the path and the option to change.

    """
    inputs = [p for p in input_files if p]
    places.check_output_csv(out_csv, flag, inputs, image_dirs)
    folder = os.path.dirname(os.path.abspath(out_csv))
    if os.path.isdir(folder):
        ownership.read_ledger(folder)
    owner = ownership.set_name("check", out_csv)
    ownership.check_replaceable(os.path.abspath(out_csv), flag, owner=owner)
    for kind in CHECK_COMPANIONS:
        target = companion(out_csv, kind)
        for src in inputs:
            if places.same_file(src, target):
                raise SettingsError(
                    f"{target}: refusing to overwrite the input {src}; choose another {flag} name"
                )
        ownership.check_replaceable(target, flag, owner=owner)


def check_figure(result: CheckResult):
    """The check's plot: estimate against actual, one colour per group, the line
    estimate = actual; both axes in the same units, their power of ten in the axis labels
    (:func:`.figures.axis_scale`) rather than in offset text that would collide with them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    factor, suffix = axis_scale(np.concatenate([result.estimate, result.actual]))
    estimate, actual = result.estimate / factor, result.actual / factor
    fig, ax = plt.subplots(figsize=(5.5, 5))
    colors = {"harmful": "#cc3311", "helpful": "#0077bb", "random": "#555555", "all": "#555555"}
    for g in dict.fromkeys(result.group):
        mask = np.array([x == g for x in result.group])
        ax.scatter(estimate[mask], actual[mask], s=18, c=colors[g], label=g)
    lo = float(min(estimate.min(), actual.min()))
    hi = float(max(estimate.max(), actual.max()))
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1, ls="--", label="estimate = actual")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=MAX_X_TICKS - 1))
    ax.ticklabel_format(style="plain", useOffset=False)
    ax.set_xlabel(f"estimated influence{suffix}\n(change of the mean validation loss)")
    ax.set_ylabel(f"exact leave-one-out change{suffix}")
    ax.set_title(
        f"{result.verdict}: Spearman {result.spearman:.3f}, Pearson {result.pearson:.3f}\n"
        f"{len(result.index)} of {result.n_train} samples, lr {result.lr:g}",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    return fig


def _can_plot() -> bool:
    """True if matplotlib is there to draw the plot; the console's own Python may lack it."""
    try:
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        return False
    return True


def _write_plot(path: str, result: CheckResult) -> None:
    import matplotlib.pyplot as plt

    fig = check_figure(result)
    try:
        fig.savefig(path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)


def _write_check_csv(path: str, result: CheckResult, originals: Sequence[str]) -> None:
    """One row per checked sample, sorted by estimate ascending (most harmful first)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CHECK_COLUMNS)
        for i in np.argsort(result.estimate, kind="stable"):
            j = int(result.index[i])
            w.writerow(
                [
                    j,
                    result.group[i],
                    repr(float(result.estimate[i])),
                    repr(float(result.actual[i])),
                    originals[j],
                ]
            )


def check_set(out_csv: str, flag: str = "--output", plot: bool = True) -> OutputSet:
    """The output set ``check`` writes: the check CSV, its plot (with ``plot``) and its
    settings YAML.
    """
    kinds = [k for k in CHECK_COMPANIONS if plot or k != "plot"]
    return OutputSet(out_csv, "check", flag, companions={k: companion(out_csv, k) for k in kinds})


def write_check_output(
    out_csv: str,
    result: CheckResult,
    originals: Sequence[str],
    facts: Dict,
    flag: str = "--output",
) -> Dict[str, str]:
    """Write the check CSV, its plot and its settings YAML, staged and committed together.

    Args:
        out_csv: the check CSV: ``datasource_index,group,estimate,actual,original``, one row
            per checked sample, sorted by estimate ascending (most harmful first).
        result: what :func:`check_fidelity` returned.
        originals: (N,) each training row's image cell ("" if none), for ``original``.
        facts: settings and figures for ``<stem>_settings.yaml``.
        flag: the output option, for messages.

    Returns:
        ``{"csv": path, "plot": path, "settings": path}`` (absolute); no ``plot`` without
        matplotlib (the settings then say so).

    Raises:
        OutputError: a target holds something the tool did not write, or writing failed.

    """
    plan = check_set(out_csv, flag, plot=_can_plot())
    if "plot" not in plan.companions:
        facts = {**facts, "plot": "left out: matplotlib is not installed in this Python"}
    writers = {
        MAIN: lambda path: _write_check_csv(path, result, originals),
        "plot": lambda path: _write_plot(path, result),
        "settings": lambda path: write_yaml(path, facts),
    }
    write(plan, {kind: w for kind, w in writers.items() if kind in plan.kinds})
    return {kind: plan.path(kind) for kind in ("csv", *plan.companions)}


def check_facts(result: CheckResult, settings: InfluenceSettings, extra: Dict) -> Dict:
    """What ``<stem>_settings.yaml`` records: settings asked and used, the figures, time."""
    return {
        "verdict": result.verdict,
        "verdict_rule": "Spearman >= 0.7: good; >= 0.3: weak; else poor",
        "pearson": round(result.pearson, 6),
        "spearman": round(result.spearman, 6),
        "samples": len(result.index),
        "seconds": round(result.seconds, 3),
        "timings_seconds": {k: round(float(v), 4) for k, v in result.timings.items()},
        "requested": settings.to_dict(),
        "used": {
            "lr": result.lr,
            "weight_decay": result.weight_decay,
            "batch_size": result.batch_size,
            "epochs": settings.epochs,
            "cache": settings.cache,
            "seed": settings.seed,
            # the step the replay ran (a straight-through layer's exact step for fd)
            "replay_step": (result.resolved or settings).replay_step,
        },
        "lr_selection": result.resolved.lr_selection() if result.resolved is not None else {},
        "validation_loss_after_epoch": round(result.val_loss_full, 6),
        "u_growth": float(f"{result.u_growth:.4g}"),
        "n_train": result.n_train,
        **extra,
        "warnings": list(result.warnings),
        "sign": "influence < 0: removing the sample lowers the validation loss (harmful); "
        "actual = L_val(epoch without the sample) - L_val(full epoch)",
    }


@dataclass
class CheckRequest:
    """Files and options of one check (see :class:`~sgd_influence_plugin.runner.RunRequest`
    for the model and dataset fields); ``samples``: M rows to re-run; ``cluster``: a Dask
    scheduler's address to run the re-runs on (see :mod:`.cluster`), None = worker processes
    here (:mod:`.executor`).
    """

    output: str
    model: Optional[str] = None
    config: Optional[str] = None
    params: Optional[str] = None
    train: Optional[str] = None
    val: Optional[str] = None
    settings: InfluenceSettings = field(default_factory=InfluenceSettings)
    samples: int = DEFAULT_SAMPLES
    cluster: Optional[str] = None


def _check_samples(m, samples_flag: str) -> None:
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < MIN_SAMPLES:
        raise SettingsError(
            f"{samples_flag} {m}: check at least {MIN_SAMPLES} samples (default {DEFAULT_SAMPLES})"
        )


def run_check(
    request: CheckRequest,
    log: Callable[[str], None] = lambda m: None,
    progress=None,
    flags: validation.FlagNames = validation.CLI_FLAGS,
) -> tuple:
    """Load and check every input (:func:`.inputs.load_inputs`), run
    :func:`~.fidelity.check_fidelity` (one trial, whatever ``settings.trials`` says), write
    the outputs.

    Returns:
        ``(paths, result)``: see :func:`write_check_output` and :class:`~.fidelity.CheckResult`.

    Raises:
        SGDInfluenceError: bad input (before computing), an unstable trial, or a result that
            cannot be trusted (nothing written).

    """
    from .executor import open_executor

    request.settings.validate(flags.for_settings())  # --jobs before the workers start
    context, jobs = request.settings.context, request.settings.jobs
    with open_executor(request.cluster, context, jobs, log) as executor:
        return _run_check(request, log, progress, flags, executor)


def _run_check(request: CheckRequest, log, progress, flags, executor) -> tuple:
    settings = replace(request.settings, trials=1)  # the check runs and records one trial
    files = RunRequest(
        output=request.output,
        model=request.model,
        config=request.config,
        params=request.params,
        train=request.train,
        val=request.val,
        settings=settings,
    )
    m = request.samples
    _check_samples(m, flags.samples)

    def check_places(input_files, image_dirs) -> None:
        check_check_outputs(request.output, flags.output, input_files, sorted(image_dirs))

    def check_loaded(model, train, val) -> None:
        _check_loaded(model, train, val, settings, m, request.output, flags)

    loaded = load_inputs(files, flags, check_places, check_loaded, log=log, progress=progress)
    model, train = loaded.model, loaded.train
    log(f"checking {m} of {train.size} training samples by exact leave-one-out re-runs")
    result = check_fidelity(
        model,
        train.arrays,
        loaded.val.arrays,
        settings,
        int(m),
        progress=interrupts.checked_progress(progress),
        log=log,
        executor=executor,
    )
    return _write_check(request.output, loaded, result, settings, flags), result


def _check_loaded(model, train, val, settings, m: int, out_csv: str, flags) -> None:
    """Every check of the loaded data before anything is computed: the labels, enough rows
    for ``m`` samples and for the batch, the replay's rate, the free space one trial needs.
    """
    info = model.info
    label_values.check_labels(info, (train, val))
    if train.size < MIN_SAMPLES:
        raise SettingsError(
            f"{train.path} has only {train.size} row(s); the check re-runs at least "
            f"{MIN_SAMPLES} samples, so it needs a training CSV of at least {MIN_SAMPLES} rows"
        )
    if m > train.size:
        raise SettingsError(
            f"{flags.samples} {m}: {train.path} has only {train.size} rows; give at most "
            f"{train.size}"
        )
    batch = validation.check_replay_data(settings, info, train, flags)  # as run checks it
    need = validation.estimate_bytes(  # one trial; no thumbnails, only a small plot
        n_train=train.size,
        n_params=model.n_params,
        batch_size=batch,
        trials=1,
        cache_all=settings.cache == "all",
        thumb_size=16,
        channels=1,
    )
    validation.check_free_space(out_csv, tempfile.gettempdir(), need, flags)


def _write_check(out_csv: str, loaded, result: CheckResult, settings, flags) -> Dict[str, str]:
    """The check's output set (:func:`write_check_output`), each checked row with its
    training row's image cell, the settings with the inputs' places.
    """
    model, train = loaded.model, loaded.train
    image_col = find_columns(train, list(model.info.input_shapes)).file
    originals = [train.cell(i, image_col) if image_col else "" for i in range(train.size)]
    extra = {
        "model": model.info.source,
        "train_csv": os.path.abspath(loaded.train_csv),
        "val_csv": os.path.abspath(loaded.val_csv),
    }
    return write_check_output(
        out_csv, result, originals, check_facts(result, settings, extra), flags.output
    )
