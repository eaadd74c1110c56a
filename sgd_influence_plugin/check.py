"""Fidelity self-check: the influence estimates against exact leave-one-out re-runs.

One trial of the influence (training phase + replay, at the rate the settings resolve to) is
computed as ``sgd-influence run`` would. Then, for M training samples (the most harmful, the
most helpful and random ones of that estimate), the replayed epoch is run again exactly,
from the same start parameters, in the same order, at the same per-step rates, with that
sample's weight set to 0; the change of the mean validation loss against the full epoch is
the *actual* influence the estimate approximates. Their Pearson and Spearman correlations say
how far the scores can be trusted on this model and data.

Verdict (Spearman rho of estimate vs actual, :data:`VERDICTS`): ``good`` when rho >= 0.7,
``weak`` when rho >= 0.3, ``poor`` below. ReLU kinks make the exact leave-one-out differences
of a single epoch noisy, so a ``weak`` verdict on a ReLU network does not by itself mean that
the ranking is useless for cleansing.

Outputs, named after the ``--output`` CSV (``check.csv``): ``check.csv`` (one row per checked
sample), ``check_plot.png`` (estimate vs actual) and ``check_settings.yaml`` (settings and
figures), written with the ownership rule and all-or-nothing commit of :mod:`.ownership`.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from . import api, core, interrupts, output, ownership, validation
from .errors import ComputationError, OutputError, SettingsError
from .settings import InfluenceSettings, write_yaml

#: Samples checked by default: a third most harmful, a third most helpful, the rest random.
DEFAULT_SAMPLES = 30
#: Fewest samples a correlation is reported for.
MIN_SAMPLES = 3
#: ``(lowest Spearman rho, verdict)``, tried in order; below the last: ``poor``.
VERDICTS = ((0.7, "good"), (0.3, "weak"))
#: Companion files of the check CSV: kind -> suffix of its stem.
CHECK_COMPANIONS: Dict[str, str] = {
    "plot": "_plot.png",
    "settings": output.COMPANIONS["settings"],
}
CHECK_COLUMNS = ["datasource_index", "group", "estimate", "actual", "original"]


@dataclass
class CheckResult:
    """What the check measured.

    Attributes:
        index: int64 (M,) training rows checked (0-based data rows of the training CSV).
        group: (M,) ``harmful``, ``helpful`` or ``random``: why each row was picked.
        estimate: float64 (M,) the trial's influence of each row (change of the mean
            validation loss if removed; negative = harmful).
        actual: float64 (M,) L_val(epoch without the row) - L_val(full epoch), same units
            and sign.
        pearson / spearman: correlations of ``estimate`` and ``actual`` (in [-1, 1]).
        verdict: ``good``, ``weak`` or ``poor`` (see :data:`VERDICTS`).
        seconds: wall time of the whole check; ``timings``: seconds per stage.
        lr / weight_decay / batch_size: the replayed epoch's settings (rate after retries).
        val_loss_full: mean validation loss after the full re-run epoch.
        u_growth: how much the replay's query vector grew (see ``core.ReplayStats``).
        n_train: N; ``warnings``: messages for the user.

    """

    index: np.ndarray
    group: List[str]
    estimate: np.ndarray
    actual: np.ndarray
    pearson: float
    spearman: float
    verdict: str
    seconds: float
    timings: Dict[str, float]
    lr: float
    weight_decay: float
    batch_size: int
    val_loss_full: float
    u_growth: float
    n_train: int
    run: Optional[api.ResolvedRun] = None
    warnings: List[str] = field(default_factory=list)


def verdict_for(rho: float) -> str:
    """``good`` / ``weak`` / ``poor`` for a Spearman correlation (see :data:`VERDICTS`)."""
    for low, name in VERDICTS:
        if rho >= low:
            return name
    return "poor"


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``; tied values share the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    values = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or values[end] != values[start]:
            ranks[order[start:end]] = (start + 1 + end) / 2.0
            start = end
    return ranks


def correlations(estimate: np.ndarray, actual: np.ndarray) -> tuple:
    """``(pearson, spearman)`` of two float arrays of the same length (>= 2, not constant)."""
    a, b = np.asarray(estimate, np.float64), np.asarray(actual, np.float64)
    pearson = float(np.corrcoef(a, b)[0, 1])
    spearman = float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])
    return pearson, spearman


def pick_samples(scores: np.ndarray, m: int, seed: int) -> tuple:
    """The rows to check: ``m // 3`` most harmful, ``m // 3`` most helpful, the rest random.

    Args:
        scores: float64 (N,) influence estimates (negative = harmful).
        m: how many rows, ``MIN_SAMPLES <= m``; all N rows when ``m >= N``.
        seed: seed of the random pick (``numpy.random.RandomState``).

    Returns:
        ``(index int64 (m,), groups)``, harmful first, then helpful, then random.

    """
    n = len(scores)
    ranked = output.ranking(scores)
    if m >= n:
        idx = ranked
        groups = ["all"] * n
        return idx.astype(np.int64), groups
    k = m // 3
    harmful = ranked[:k]
    helpful = ranked[::-1][:k]
    rest = np.setdiff1d(np.arange(n), np.concatenate([harmful, helpful]))
    rng = np.random.RandomState(seed)
    rand = np.sort(rng.choice(rest, m - 2 * k, replace=False))
    idx = np.concatenate([harmful, helpful, rand]).astype(np.int64)
    groups = ["harmful"] * k + ["helpful"] * k + ["random"] * (m - 2 * k)
    return idx, groups


def check_fidelity(
    model,
    train: Dict[str, np.ndarray],
    val: Dict[str, np.ndarray],
    settings: InfluenceSettings,
    samples: int = DEFAULT_SAMPLES,
    progress: Optional[core.Progress] = None,
    log: Optional[Callable[[str], None]] = None,
) -> CheckResult:
    """One influence trial, then exact leave-one-out re-runs of its replayed epoch.

    The trial is ``api.run_trial`` (training phase + replay into a temporary cache, retried
    at a lower rate when unstable) at the rate :func:`api.resolve` and :func:`api.choose_lr`
    settle (``settings.trials`` is ignored: one trial). The exact re-runs use the cache's
    ``order.npy`` and ``lr.npy``, start from the parameters before the replayed (last)
    epoch, and give the picked sample weight 0 (:func:`core.sgd_epoch`).

    Args:
        model: an ``NnablaModel``; its trainable parameters are restored at the end.
        train / val: column -> (N, ...) float32 arrays.
        settings: the influence settings (lr, weight decay, batch size, epochs, seed, cache).
        samples: M rows to re-run (see :func:`pick_samples`), at least :data:`MIN_SAMPLES`.
        progress: optional ``(stage, done, total)`` callback.
        log: optional callback for user-facing messages.

    Raises:
        UnstableReplayError: the trial stayed unstable after its retries.
        ComputationError: a re-run's validation loss is not finite, or the estimates or the
            actual changes are all equal (no correlation exists).

    """
    log = log or (lambda msg: None)
    settings = replace(settings, trials=1).validate()
    if not (isinstance(samples, int) and samples >= MIN_SAMPLES):
        raise SettingsError(f"samples={samples}: check at least {MIN_SAMPLES} samples")
    t_start = time.perf_counter()
    timings: Dict[str, float] = {}
    n = len(next(iter(train.values())))
    theta0 = model.get_params()
    run = api.resolve(model, settings)
    for w in run.warnings:
        log("warning: " + w)
    val_loss_start = core.mean_loss(model, val, settings.val_batch_size)
    t0 = time.perf_counter()
    api.choose_lr(model, train, settings, run, log)
    timings["curvature"] = time.perf_counter() - t0
    cache = tempfile.mkdtemp(prefix="sgd_influence_check_")
    try:
        t0 = time.perf_counter()
        outcome = api.run_trial(
            model, train, val, settings, run, cache, settings.seed, progress, val_loss_start
        )
        timings["influence"] = time.perf_counter() - t0
        order = np.load(os.path.join(cache, "order.npy"))
        lrs = np.load(os.path.join(cache, "lr.npy"))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    warnings = list(run.warnings) + list(outcome.warnings)
    for w in outcome.warnings:
        log("warning: " + w)
    estimate_all = outcome.scores
    idx, groups = pick_samples(estimate_all, samples, settings.seed)
    graphs = core.GraphCache(model, fused=False)
    t0 = time.perf_counter()
    try:
        model.set_params(theta0)
        orders = core.epoch_orders(n, settings.epochs, settings.seed)
        if not np.array_equal(orders[-1], order):
            raise ComputationError("the cached sample order is not the seed's; run again")
        for k in range(settings.epochs - 1):  # the epochs before the replayed one
            core.sgd_epoch(
                model, train, orders[k], lrs, run.batch_size, run.weight_decay, graphs=graphs
            )
        theta_start = model.get_params()

        def val_loss_after(weight: np.ndarray) -> float:
            model.set_params(theta_start)
            core.sgd_epoch(
                model,
                train,
                order,
                lrs,
                run.batch_size,
                run.weight_decay,
                sample_weight=weight,
                graphs=graphs,
            )
            return core.mean_loss(model, val, settings.val_batch_size)

        full = val_loss_after(np.ones(n, np.float32))
        if not math.isfinite(full):
            raise ComputationError(
                f"the validation loss after the re-run epoch is {full} at lr={outcome.lr:g}; "
                "the epoch diverged: pass a smaller --lr"
            )
        if abs(full - outcome.val_loss) > 1e-3 * max(1.0, abs(full)):
            msg = (
                f"the re-run epoch ends at validation loss {full:.6g}, the trial's at "
                f"{outcome.val_loss:.6g}; the training is not reproducible here (e.g. dropout "
                "or a GPU's non-deterministic kernels), which adds noise to the actual changes"
            )
            warnings.append(msg)
            log("warning: " + msg)
        actual = np.empty(len(idx))
        for i, j in enumerate(idx):
            w = np.ones(n, np.float32)
            w[j] = 0
            actual[i] = val_loss_after(w) - full
            if progress is not None:
                progress("leave-one-out", i + 1, len(idx))
    finally:
        model.set_params(theta0)
    timings["leave_one_out"] = time.perf_counter() - t0
    estimate = np.asarray(estimate_all[idx], np.float64)
    if not np.all(np.isfinite(actual)):
        raise ComputationError(
            f"{int(np.sum(~np.isfinite(actual)))} leave-one-out re-runs ended at a non-finite "
            f"validation loss at lr={outcome.lr:g}; pass a smaller --lr"
        )
    if np.ptp(actual) == 0 or np.ptp(estimate) == 0:
        which = "actual changes" if np.ptp(actual) == 0 else "estimates"
        raise ComputationError(
            f"all {len(idx)} {which} of the checked samples are equal, so no correlation "
            "exists; check more samples (--samples) or a model whose loss depends on its data"
        )
    pearson, spearman = correlations(estimate, actual)
    if not (math.isfinite(pearson) and math.isfinite(spearman)):
        raise ComputationError("the correlations are not finite; nothing was written")
    pearson, spearman = (float(np.clip(r, -1.0, 1.0)) for r in (pearson, spearman))
    return CheckResult(
        index=idx,
        group=groups,
        estimate=estimate,
        actual=actual,
        pearson=pearson,
        spearman=spearman,
        verdict=verdict_for(spearman),
        seconds=time.perf_counter() - t_start,
        timings=timings,
        lr=float(outcome.lr),
        weight_decay=float(run.weight_decay),
        batch_size=int(run.batch_size),
        val_loss_full=float(full),
        u_growth=float(outcome.u_growth),
        n_train=n,
        run=run,
        warnings=warnings,
    )


def verdict_line(result: CheckResult) -> str:
    """The one-line verdict, e.g. ``good: Spearman 0.91, Pearson 0.95 over 30 samples ...``."""
    return (
        f"{result.verdict}: Spearman {result.spearman:.3f}, Pearson {result.pearson:.3f} "
        f"between estimated and exact leave-one-out influence over {len(result.index)} samples "
        f"(lr {result.lr:g}, {result.seconds:.1f} s)"
    )


# ----------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------


def companion(out_csv: str, kind: str) -> str:
    """Absolute path of companion ``kind`` (a key of :data:`CHECK_COMPANIONS`) of the CSV."""
    folder, name = os.path.split(os.path.abspath(out_csv))
    return os.path.join(folder, os.path.splitext(name)[0] + CHECK_COMPANIONS[kind])


def check_output_places(
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
    validation.check_output_csv(out_csv, flag, inputs, image_dirs)
    folder = os.path.dirname(os.path.abspath(out_csv))
    if os.path.isdir(folder):
        ownership.read_ledger(folder)
    ownership.check_replaceable(os.path.abspath(out_csv), flag)
    for kind in CHECK_COMPANIONS:
        target = companion(out_csv, kind)
        for src in inputs:
            if os.path.abspath(src) == target or (
                os.path.exists(src) and os.path.exists(target) and os.path.samefile(src, target)
            ):
                raise SettingsError(
                    f"{target}: refusing to overwrite the input {src}; choose another {flag} name"
                )
        ownership.check_replaceable(target, flag)


def _plot(path: str, result: CheckResult) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    colors = {"harmful": "#cc3311", "helpful": "#0077bb", "random": "#555555", "all": "#555555"}
    for g in dict.fromkeys(result.group):
        mask = np.array([x == g for x in result.group])
        ax.scatter(result.estimate[mask], result.actual[mask], s=18, c=colors[g], label=g)
    lo = float(min(result.estimate.min(), result.actual.min()))
    hi = float(max(result.estimate.max(), result.actual.max()))
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1, ls="--", label="estimate = actual")
    ax.set_xlabel("estimated influence (change of mean validation loss)")
    ax.set_ylabel("exact leave-one-out change")
    ax.set_title(
        f"{result.verdict}: Spearman {result.spearman:.3f}, Pearson {result.pearson:.3f}\n"
        f"{len(result.index)} of {result.n_train} samples, lr {result.lr:g}",
        fontsize=10,
    )
    ax.ticklabel_format(style="sci", scilimits=(-2, 2))  # short tick labels, shared exponent
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


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
        ``{"csv": path, "plot": path, "settings": path}`` (absolute).

    Raises:
        OutputError: a target holds something the tool did not write, or writing failed.

    """
    paths = {"csv": os.path.abspath(out_csv)}
    paths.update({kind: companion(out_csv, kind) for kind in CHECK_COMPANIONS})
    folder = os.path.dirname(paths["csv"])
    for path in paths.values():
        ownership.check_replaceable(path, flag)
    with ownership.staging(folder, flag) as stage:

        def staged(path: str) -> str:
            return os.path.join(stage, os.path.basename(path))

        with open(staged(paths["csv"]), "w", newline="") as f:
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
        _plot(staged(paths["plot"]), result)
        write_yaml(staged(paths["settings"]), facts)
        moves = [(staged(paths[k]), paths[k]) for k in CHECK_COMPANIONS]
        try:
            ownership.commit_staged(
                folder, moves + [(staged(paths["csv"]), paths["csv"])], [], flag
            )
        except OSError as e:
            raise OutputError(
                f"{e.filename or folder}: cannot write ({e.strerror or e}); give another {flag}"
            ) from e
    return paths


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
        "requested": replace(settings, trials=1).to_dict(),
        "used": {
            "lr": result.lr,
            "weight_decay": result.weight_decay,
            "batch_size": result.batch_size,
            "epochs": settings.epochs,
            "cache": settings.cache,
            "seed": settings.seed,
        },
        "lr_selection": result.run.lr_selection() if result.run is not None else {},
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
    for the model and dataset fields); ``samples``: M rows to re-run.
    """

    output: str
    model: Optional[str] = None
    config: Optional[str] = None
    params: Optional[str] = None
    train: Optional[str] = None
    val: Optional[str] = None
    settings: InfluenceSettings = field(default_factory=InfluenceSettings)
    samples: int = DEFAULT_SAMPLES


def run_check(
    request: CheckRequest,
    log: Callable[[str], None] = lambda m: None,
    progress=None,
    flags: validation.FlagNames = validation.CLI_FLAGS,
    samples_flag: str = "--samples",
) -> tuple:
    """Load and check every input, run :func:`check_fidelity`, write the outputs.

    Returns:
        ``(paths, result)``: see :func:`write_check_output` and :class:`CheckResult`.

    Raises:
        SGDInfluenceError: bad input (before computing), an unstable trial, or a result that
            cannot be trusted (nothing written).

    """
    from .dataset import load_dataset
    from .nnabla_adapter import load_model
    from .output import find_columns
    from .runner import RunRequest, dataset_path

    settings = replace(request.settings, trials=1)
    validation.check_options(
        RunRequest(
            output=request.output,
            model=request.model,
            config=request.config,
            params=request.params,
            settings=settings,
        ),
        flags,
    )
    m = request.samples
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < MIN_SAMPLES:
        raise SettingsError(
            f"{samples_flag} {m}: check at least {MIN_SAMPLES} samples (default {DEFAULT_SAMPLES})"
        )
    settings.validate()
    model = load_model(request.model, request.config, request.params, settings.context)
    info = model.info
    train_csv = dataset_path(request.train, info.train_dataset, "training", flags.train)
    val_csv = dataset_path(request.val, info.val_dataset, "validation", flags.val)
    inputs = [request.model, request.config, request.params, train_csv, val_csv]
    check_output_places(
        request.output, flags.output, inputs, sorted(validation.image_folders(train_csv, val_csv))
    )
    interrupts.check()
    normalize = info.train_dataset.normalize if info.train_dataset else True
    log(f"reading {train_csv} and {val_csv}")
    train = load_dataset(train_csv, info.input_shapes, normalize)
    val = load_dataset(val_csv, info.input_shapes, normalize)
    for d in (train, val):
        validation.check_labels(d, getattr(info, "label_classes", {}))
    wd = settings.weight_decay if settings.weight_decay is not None else info.solver.weight_decay
    validation.check_weight_decay(wd, info.source, flags)
    if train.size < MIN_SAMPLES:
        raise SettingsError(
            f"{train_csv} has only {train.size} row(s); the check re-runs at least "
            f"{MIN_SAMPLES} samples, so it needs a training CSV of at least {MIN_SAMPLES} rows"
        )
    if m > train.size:
        raise SettingsError(
            f"{samples_flag} {m}: {train_csv} has only {train.size} rows; give at most {train.size}"
        )
    batch = settings.batch_size or info.solver.batch_size
    validation.check_known_rate(settings.lr, wd, train.size, batch, info)
    need = validation.estimate_bytes(
        train.size, model.n_params, batch, 1, settings.cache == "all", 16, 1
    )
    validation.check_free_space(request.output, tempfile.gettempdir(), need, flags)
    interrupts.check()
    loss0 = core.mean_loss(model, val.arrays, settings.val_batch_size)
    if not math.isfinite(loss0):
        raise ComputationError(
            f"{info.source}: the validation loss at the trained parameters is {loss0} on "
            f"{val_csv}; check that the parameters belong to this network and the data to it"
        )
    log(f"checking {m} of {train.size} training samples by exact leave-one-out re-runs")
    result = check_fidelity(
        model,
        train.arrays,
        val.arrays,
        settings,
        int(m),
        progress=interrupts.checked_progress(progress),
        log=log,
    )
    image_col, _ = find_columns(train, list(info.input_shapes))
    originals = [train.cell(i, image_col) if image_col else "" for i in range(train.size)]
    extra = {
        "model": info.source,
        "train_csv": os.path.abspath(train_csv),
        "val_csv": os.path.abspath(val_csv),
    }
    paths = write_check_output(
        request.output, result, originals, check_facts(result, settings, extra), flags.output
    )
    return paths, result
