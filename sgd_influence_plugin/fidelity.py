"""How far the influence scores hold: estimates against exact leave-one-out re-runs.

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

Arrays and a model in, a :class:`CheckResult` out; reading the files and writing the check's
outputs is :mod:`.check`'s job.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional

import numpy as np

from . import core, options, parallel
from .errors import ComputationError, SettingsError
from .executor import local_executor, unit_graphs
from .phases import read_schedule, replay_helper
from .resolved import ResolvedSettings, choose_lr, resolve
from .settings import InfluenceSettings
from .summary import ranking
from .trials import run_trial

#: Samples checked by default: a third most harmful, a third most helpful, the rest random.
DEFAULT_SAMPLES = options.default("samples")
#: Fewest samples a correlation is reported for.
MIN_SAMPLES = options.MIN_SAMPLES
#: ``(lowest Spearman rho, verdict)``, tried in order; below the last: ``poor``.
VERDICTS = ((0.7, "good"), (0.3, "weak"))


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
        u_growth: how much the replay's query vector grew (see ``replay.ReplayStats``).
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
    resolved: Optional[ResolvedSettings] = None
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
    ranked = ranking(scores)
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
    executor=None,
) -> CheckResult:
    """One influence trial, then exact leave-one-out re-runs of its replayed epoch.

    The trial is ``trials.run_trial`` (training phase + replay into a temporary cache,
    retried at a lower rate when unstable; target ``plain`` whatever ``settings.target`` says,
    see :mod:`.target`) at the rate :func:`.resolved.resolve` and
    :func:`.resolved.choose_lr` settle (``settings.trials`` is not used: one trial). The exact
    re-runs use that trial's order and per-step rates (:func:`.phases.read_schedule`), start
    from the parameters before the replayed (last) epoch, and give the picked sample weight 0
    (:func:`core.sgd_epoch`).

    Args:
        model: an ``NnablaModel``; its trainable parameters are restored at the end.
        train / val: column -> (N, ...) float32 arrays.
        settings: the influence settings (lr, weight decay, batch size, epochs, seed, cache).
        samples: M rows to re-run (see :func:`pick_samples`), at least :data:`MIN_SAMPLES`.
        progress: optional ``(stage, done, total)`` callback.
        log: optional callback for user-facing messages.
        executor: where the M re-runs run, each a unit (:func:`rerun_unit`, the same results
            anywhere; :mod:`.executor`); None = ``settings.jobs`` worker processes here. The
            trial runs in this process.

    Raises:
        UnstableReplayError: the trial stayed unstable after its retries.
        ComputationError: a re-run's validation loss is not finite, or the estimates or the
            actual changes are all equal (no correlation exists).

    """
    log = log or (lambda msg: None)
    executor = executor or local_executor(settings.context, settings.jobs)
    settings = _checked_settings(settings, samples)
    t_start = time.perf_counter()
    timings: Dict[str, float] = {}
    theta0 = model.get_params()
    run, outcome, schedule, warnings = _trial(model, train, val, settings, progress, log, timings)
    idx, groups = pick_samples(outcome.scores, samples, settings.seed)
    t0 = time.perf_counter()
    try:
        model.set_params(theta0)
        shared = _replayed_epoch(model, train, val, settings, run, schedule)
        full = _full_epoch(shared, outcome, warnings, log)
        actual = _leave_one_out(idx, shared, executor, progress) - full
    finally:
        model.set_params(theta0)
    timings["leave_one_out"] = time.perf_counter() - t0
    n = len(next(iter(train.values())))
    return _result(idx, groups, actual, full, run, outcome, n, timings, warnings, t_start)


def _checked_settings(settings: InfluenceSettings, samples: int) -> InfluenceSettings:
    """The check's settings: ``settings`` validated, with target ``plain``; ``samples``
    refused below :data:`MIN_SAMPLES`.
    """
    # A copy: validate() settles lr in place. The check compares the replay's own estimate with
    # the exact re-runs, so it uses target "plain": a class-centred score subtracts its class's
    # mean of those same estimates, which would need every row of the class re-run to compare.
    settings = replace(settings, target="plain").validate()
    if not (isinstance(samples, int) and samples >= MIN_SAMPLES):
        raise SettingsError(f"samples={samples}: check at least {MIN_SAMPLES} samples")
    return settings


def _trial(model, train, val, settings, progress, log, timings: Dict[str, float]):
    """The check's one trial, in this process and a temporary cache, at the rate
    :func:`.resolved.resolve` and :func:`.resolved.choose_lr` settle: ``(the resolved run,
    its outcome, (its last epoch's order, its per-step rates), the warnings so far)``, each
    warning logged; ``timings`` gets the curvature's and the trial's seconds.
    """
    run = resolve(model, settings)
    for w in run.warnings:
        log("warning: " + w)
    val_loss_start = core.mean_loss(model, val, settings.val_batch_size)
    t0 = time.perf_counter()
    choose_lr(model, train, settings, run, log)
    timings["curvature"] = time.perf_counter() - t0
    here = parallel.workers_for(settings.context, settings.jobs)  # the trial runs here
    cache = tempfile.mkdtemp(prefix="sgd_influence_check_")
    try:
        t0 = time.perf_counter()
        outcome = run_trial(
            model, train, val, settings, run, cache, settings.seed, progress, val_loss_start,
            replay_helper(settings, here),
        )  # fmt: skip
        timings["influence"] = time.perf_counter() - t0
        schedule = read_schedule(cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    for w in outcome.warnings:
        log("warning: " + w)
    return run, outcome, schedule, list(run.warnings) + list(outcome.warnings)


def _result(idx, groups, actual, full, run, outcome, n, timings, warnings, t_start) -> CheckResult:
    """The picked rows' estimates against their actual changes (the correlations checked,
    the verdict) with what was measured on the way: the full epoch's validation loss, the
    resolved run, the trial's outcome, N, the timings and warnings, the check's start time.
    """
    estimate = np.asarray(outcome.scores[idx], np.float64)
    pearson, spearman = _checked_correlations(estimate, actual, outcome.lr)
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
        resolved=run,
        warnings=warnings,
    )


def _replayed_epoch(model, train, val, settings, run, schedule) -> tuple:
    """What every exact re-run shares (:func:`rerun_unit`): the model at the start of the
    replayed epoch (the epochs before it run again here from the model's parameters), the
    data, and the epoch's order and per-step rates of the trial (``schedule``).
    """
    order, lrs = schedule
    n = len(next(iter(train.values())))
    graphs = unit_graphs(model)
    orders = core.epoch_orders(n, settings.epochs, settings.seed)
    if not np.array_equal(orders[-1], order):
        raise ComputationError("the cached sample order is not the seed's; run again")
    for k in range(settings.epochs - 1):  # the epochs before the replayed one
        core.sgd_epoch(
            model, train, orders[k], lrs, run.batch_size, run.weight_decay, graphs=graphs
        )
    epoch = (order, lrs, run.batch_size, run.weight_decay, settings.val_batch_size)
    return (model, train, val, model.get_params(), epoch)


def _full_epoch(shared: tuple, outcome, warnings: List[str], log) -> float:
    """The validation loss after the replayed epoch with every row, run here; refused when
    not finite, a warning (added to ``warnings``) when it is not the trial's.
    """
    full = rerun_unit(None, None, *shared)
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
    return full


def _leave_one_out(idx: np.ndarray, shared: tuple, executor, progress) -> np.ndarray:
    """The validation loss after the replayed epoch without each row of ``idx``, each a unit
    of ``executor`` (:func:`rerun_unit`); ``progress`` counts the finished ones.
    """
    finished = []

    def done(i: int, _=None) -> None:
        finished.append(i)
        if progress is not None:
            progress("leave-one-out", len(finished), len(idx))

    losses = executor.map(
        rerun_unit, [int(j) for j in idx], shared=shared, on_result=done, name="rerun"
    )
    return np.asarray(losses, dtype=np.float64)


def _checked_correlations(estimate: np.ndarray, actual: np.ndarray, lr: float) -> tuple:
    """``(pearson, spearman)`` of the estimates and the actual changes, in [-1, 1]; refused
    when a change is not finite or either side is constant (no correlation exists).
    """
    if not np.all(np.isfinite(actual)):
        raise ComputationError(
            f"{int(np.sum(~np.isfinite(actual)))} leave-one-out re-runs ended at a non-finite "
            f"validation loss at lr={lr:g}; pass a smaller --lr"
        )
    if np.ptp(actual) == 0 or np.ptp(estimate) == 0:
        which = "actual changes" if np.ptp(actual) == 0 else "estimates"
        raise ComputationError(
            f"all {len(estimate)} {which} of the checked samples are equal, so no correlation "
            "exists; check more samples (--samples) or a model whose loss depends on its data"
        )
    pearson, spearman = correlations(estimate, actual)
    if not (math.isfinite(pearson) and math.isfinite(spearman)):
        raise ComputationError("the correlations are not finite; nothing was written")
    return tuple(float(np.clip(r, -1.0, 1.0)) for r in (pearson, spearman))


def rerun_unit(j: Optional[int], progress, model, train, val, theta_start, epoch) -> float:
    """The replayed epoch without sample ``j`` (None: with every sample) from ``theta_start``,
    as a unit of an executor (:mod:`.executor`): the validation loss after it.

    Args:
        j: the training row left out (weight 0), or None.
        progress: not used (one epoch is quick; the caller counts finished re-runs).
        model / train / val / theta_start: shared by the units.
        epoch: ``(order, lrs, batch_size, weight_decay, val_batch_size)`` of the replayed epoch.

    """
    order, lrs, batch_size, weight_decay, val_batch_size = epoch
    weight = np.ones(len(order), np.float32)
    if j is not None:
        weight[j] = 0
    model.set_params(theta_start)
    core.sgd_epoch(
        model, train, order, lrs, batch_size, weight_decay, sample_weight=weight,
        graphs=unit_graphs(model),
    )  # fmt: skip
    return core.mean_loss(model, val, val_batch_size)


def verdict_line(result: CheckResult) -> str:
    """The one-line verdict, e.g. ``good: Spearman 0.91, Pearson 0.95 over 30 samples ...``."""
    return (
        f"{result.verdict}: Spearman {result.spearman:.3f}, Pearson {result.pearson:.3f} "
        f"between estimated and exact leave-one-out influence over {len(result.index)} samples "
        f"(lr {result.lr:g}, {result.seconds:.1f} s)"
    )
