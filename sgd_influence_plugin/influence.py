"""Influence scores from a loaded model and decoded arrays (no input or output files): the
replay's rate settled (:mod:`.resolved`), M checked trials (:mod:`.trials`) run by an executor,
and their combination (:func:`compute_influence`).

:mod:`.runner` (the run command), :mod:`.fidelity` (the check) and :mod:`.evaluate` build on
it. Each trial runs the two phases of :mod:`.phases` (training phase, then the replay from
its cache folder) and is checked before its scores are used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from . import core, crossfit, interrupts
from .errors import ComputationError, UnstableReplayError
from .executor import local_executor
from .phases import replay_helper, second_process
from .resolved import ResolvedSettings, choose_lr, feature_spread_warning, resolve
from .settings import InfluenceSettings
from .trials import TrialOutcome, trial_unit

#: Logger-like callback for user-facing messages (warnings, stages).
Log = Callable[[str], None]


def check_spread(scores: np.ndarray, run: ResolvedSettings) -> None:
    """Refuse scores that rank nothing: all equal (e.g. all exactly 0, as float32 gives at a
    rate near 1e-45). Every score then says "no effect", and a ranking of them, or a cleansed
    CSV cut from it, would keep only the training-row order.

    Raises:
        ComputationError: two samples or more, all with the same score.

    """
    if len(scores) >= 2 and float(np.ptp(scores)) == 0.0:
        raise ComputationError(
            f"all {len(scores)} influence scores are {float(scores[0]):g}: the replay at lr "
            f"{run.lr:g} (weight decay {run.weight_decay:g}) tells no sample from another, so "
            "nothing was written; give a larger --lr, or --lr auto"
        )


@dataclass
class InfluenceResult:
    """Scores and what it took to get them.

    Attributes:
        scores: float64 (N,), training-CSV row order: the trials combined by
            :func:`.core.combine_trials` (each trial scaled to the median trial's RMS, then
            averaged). ``scores[j]`` estimates the change of the mean validation loss if
            sample j were removed from the replayed epoch, minus its mean over j's class with
            the default target ``class-centred`` (classifiers only; :mod:`.target`).
            Negative = harmful (removing it helps more than a typical row), positive = helpful.
        trial_scores: float64 (M, N), each trial's raw scores.
        trial_scales: float64 (M,), each trial's RMS (what combining divided by).
        candidate_scores: float64 (M, N), each trial's scores from the ``candidate_rows`` of
            the validation set alone, which order the recommendation's candidates and nothing
            else (:mod:`.crossfit`); None without candidate rows.
        half_b_scores: float64 (M, N), the same from half B's rows (the second of two
            ``candidate_rows`` halves: the two-way check, :mod:`.pooled_check`), or None.
        losses: float64 (N,), each training sample's loss at the trained parameters (before
            the training phase), in the loss's units.
        trials: the :class:`.trials.TrialOutcome` of each trial (rate, retries, u growth, ...).
        orders: the replayed epoch's order of each trial, int32 (N,) each.
        cache_bytes: bytes of one trial's cache folder (the largest).
        timings: seconds: ``curvature``, ``losses``, ``training``, ``inference``, ``replay``
            (summed over trials, so more than the wall time when trials run in parallel),
            ``trials_wall`` (wall time of all trials); ``jobs`` (worker processes);
            ``replay_steps``; ``seconds_per_replay_step``; and ``u_growth`` (largest over
            trials, see ``replay.ReplayStats``).
        val_loss: mean validation loss at the final parameters (first trial).
        settings: the settings given; ``resolved``: the rate, weight decay and batch size used.
        warnings: messages for the user (e.g. the console trained with Adam).

    """

    scores: np.ndarray
    trial_scores: np.ndarray
    trial_scales: np.ndarray
    losses: np.ndarray
    trials: List[TrialOutcome]
    orders: List[np.ndarray]
    cache_bytes: int
    timings: Dict[str, float]
    val_loss: float
    settings: InfluenceSettings
    resolved: ResolvedSettings
    warnings: List[str]
    candidate_scores: Optional[np.ndarray] = None
    half_b_scores: Optional[np.ndarray] = None


def compute_influence(
    model,
    train: Dict[str, np.ndarray],
    val: Dict[str, np.ndarray],
    settings: InfluenceSettings,
    cache_dir: Optional[str] = None,
    progress: Optional[core.Progress] = None,
    log: Optional[Log] = None,
    val_loss_start: Optional[float] = None,
    executor=None,
    losses: Optional[Callable[[], np.ndarray]] = None,
    candidate_rows: Optional[np.ndarray] = None,
    warnings: Sequence[str] = (),
) -> InfluenceResult:
    """Curvature and learning rate, then training phase + inference phase, M times, combined.

    The trials are units of ``executor`` (:func:`.trials.trial_unit`), each from the same
    starting parameters: the same result wherever they run. Their warnings are logged at the end.

    Args:
        model: an :class:`~sgd_influence_plugin.nnabla_adapter.NnablaModel` (its trainable
            parameters are restored to their starting values at the end).
        train / val: column -> (N, ...) float32 arrays, e.g. ``Dataset.arrays``.
        settings: see :class:`~sgd_influence_plugin.settings.InfluenceSettings`.
        cache_dir: where the cache goes and stays; None = temporary folders, removed at the
            end (on success and on error). With M > 1, trial m uses ``cache_dir/trial_mm``.
        progress: optional ``(stage, done, total)`` callback.
        log: optional callback for user-facing messages.
        val_loss_start: the mean validation loss at the model's parameters, if the caller
            has it already (the divergence check of every trial compares with it).
        executor: where the trials run (:mod:`.executor`); None = ``settings.jobs`` worker
            processes here (:func:`.executor.local_executor`). Units on another machine send
            their cache back for a ``cache_dir``, and this process writes it.
        losses: a callable that returns each training row's loss at the model's parameters
            (float64 (N,)), called after the trials, e.g. an answer of another process that
            computed them meanwhile; None = computed here first.
        candidate_rows: indices into ``val`` (half A of a run that recommends): each trial
            also replays their gradient, in the same pass, for ``candidate_scores``; the
            scores stay those of every ``val`` row (:mod:`.crossfit`). A pair of index arrays
            (halves A and B) adds ``half_b_scores``. None = not.
        warnings: the inputs' (:attr:`.inputs.Inputs.warnings`), kept with the run's own.

    Raises:
        UnstableReplayError: a trial stayed unstable after its retries (nothing is returned).

    """
    log = log or (lambda msg: None)
    executor = executor or local_executor(settings.context, settings.jobs)
    ready = _before_trials(model, train, val, settings, log, val_loss_start, losses, executor,
                           warnings)  # fmt: skip
    ready.timings["jobs"] = min(executor.slots, settings.trials)
    vectors = 1 if candidate_rows is None else 1 + len(crossfit.halves_of(candidate_rows))
    helper = replay_helper(settings, executor.cores_per_unit(settings.trials), vectors)
    ready.timings["replay_processes"] = 2 if helper is not None else 1
    t0 = time.perf_counter()
    with _blame_unscaled_features(ready.spread):
        outcomes = _run_trials(model, train, val, settings, ready, cache_dir, executor, helper,
                               candidate_rows, progress, log)  # fmt: skip
    ready.timings["trials_wall"] = time.perf_counter() - t0
    return _combine(outcomes, settings, ready, vectors, log)


@contextlib.contextmanager
def _blame_unscaled_features(spread: Optional[str]):
    """An unstable replay on a table whose features differ widely in spread (``spread``,
    :func:`.resolved.feature_spread_warning`, or None) names them as the likely cause: a
    smaller rate, which the error suggests, is not the fix for a feature of 1e30.
    """
    try:
        yield
    except UnstableReplayError as e:
        if spread is None:
            raise
        raise UnstableReplayError(f"{e}. More likely: {spread}") from None


@dataclass
class _Ready:
    """What the trials start from (:func:`_before_trials`).

    Attributes:
        run: the resolved settings, the rate settled by the curvature.
        losses: float64 (N,) each training row's loss, or None: ``get_losses`` gives it.
        get_losses: the caller's callable for them (called after the trials), or None.
        val_loss_start: the mean validation loss at the trained parameters.
        timings: seconds so far (``losses``, ``curvature``); the trials add theirs.
        spread: the table's feature-spread warning (also among ``run.warnings``), or None.

    """

    run: ResolvedSettings
    losses: Optional[np.ndarray]
    get_losses: Optional[Callable[[], np.ndarray]]
    val_loss_start: float
    timings: Dict[str, float]
    spread: Optional[str] = None


def _before_trials(
    model, train, val, settings, log: Log, val_loss_start, get_losses, executor, warnings=()
) -> _Ready:
    """The settings resolved (warnings, the inputs' ``warnings`` among them, logged and
    recorded with them), the losses at the trained parameters the
    caller did not give, and the rate settled by the curvature (:func:`.resolved.choose_lr`;
    part of it in a second process when ``executor`` gives a unit two cores).
    """
    run = resolve(model, settings)
    run.warnings.extend(warnings)
    spread = feature_spread_warning(
        model.info.input_shapes, train, getattr(model.info, "word_indices", {})
    )
    if spread:
        run.warnings.append(spread)
    for w in run.warnings:
        log("warning: " + w)
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    losses = None
    if get_losses is None:
        losses = core.per_sample_losses(model, train, settings.val_batch_size)
    if val_loss_start is None:
        val_loss_start = core.mean_loss(model, val, settings.val_batch_size)
    timings["losses"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    choose_lr(model, train, settings, run, log, second_process(executor.cores_per_unit(1)))
    timings["curvature"] = time.perf_counter() - t0
    return _Ready(run, losses, get_losses, val_loss_start, timings, spread)


def _run_trials(
    model, train, val, settings: InfluenceSettings, ready: _Ready, cache_dir, executor, helper,
    candidate_rows, progress, log: Log,
) -> List[TrialOutcome]:  # fmt: skip
    """The M trials as units of ``executor`` (:func:`.trials.trial_unit`), in trial order.

    Units here write the cache where it goes, or into a temporary folder this process removes
    (also after a worker was ended); units elsewhere send a ``cache_dir``'s files back.
    """
    here = executor.same_machine
    own_tmp = cache_dir is None and here
    root = tempfile.mkdtemp(prefix="sgd_influence_cache_") if own_tmp else cache_dir

    def trial_dir(m: int) -> Optional[str]:
        if root is None:
            return None
        return root if settings.trials == 1 else os.path.join(root, f"trial_{m:02d}")

    items = [
        (m, settings, ready.run, ready.val_loss_start, trial_dir(m) if here else None,
         cache_dir is not None and not here, helper, candidate_rows)
        for m in range(settings.trials)
    ]  # fmt: skip
    try:
        pairs = executor.map(
            trial_unit, items, shared=(model, train, val),
            on_result=_trial_done(trial_dir, settings.trials, log),
            on_progress=_trial_progress(progress, settings.trials), name="trial",
        )  # fmt: skip
    finally:
        if own_tmp:
            shutil.rmtree(root, ignore_errors=True)
    return [outcome for outcome, _ in pairs]


def _trial_progress(progress, trials: int):
    """The executor's ``(m, stage, done, total)`` callback: a stop request ends the trials;
    the stage is named after its trial when there are several.
    """

    def on_progress(m: int, stage: str, done: int, total: int) -> None:
        interrupts.check()
        if progress is not None:
            name = stage if trials == 1 else f"{stage} (trial {m + 1})"
            progress(name, done, total)

    return on_progress


def _trial_done(trial_dir: Callable[[int], Optional[str]], trials: int, log: Log):
    """The executor's ``(m, (outcome, files))`` callback: the cache files a trial run
    elsewhere sent back written to its folder; a line logged.
    """

    def on_result(m: int, outcome_files) -> None:
        outcome, files = outcome_files
        for rel, data in (files or {}).items():  # the cache of a trial run elsewhere
            path = os.path.join(trial_dir(m), rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        log(
            f"trial {m + 1}/{trials} done (lr {outcome.lr:g}, validation loss "
            f"{outcome.val_loss:.4f}, u grew {outcome.u_growth:.3g}x)"
        )

    return on_result


def _combine(
    outcomes: List[TrialOutcome], settings: InfluenceSettings, ready: _Ready, vectors: int, log: Log
) -> InfluenceResult:
    """The trials' warnings logged, their timings summed, their scores combined
    (:func:`.core.combine_trials`) and checked (:func:`check_spread`).
    """
    run, timings = ready.run, ready.timings
    for outcome in outcomes:
        for w in outcome.warnings:
            run.warnings.append(w)
            log("warning: " + w)
    for key in ("training", "inference", "replay", "replay_steps"):
        timings[key] = sum(o.seconds[key] for o in outcomes)
    timings["seconds_per_replay_step"] = timings["replay"] / max(1, timings["replay_steps"])
    timings["u_growth"] = max(o.u_growth for o in outcomes)
    losses = ready.losses
    if losses is None:
        losses = np.asarray(ready.get_losses(), dtype=np.float64)
    stacked = np.stack([o.scores for o in outcomes])  # (M, N), or (M, 1 + K, N): crossfit
    trial_scores, candidates = (stacked[:, 0], stacked[:, 1]) if vectors > 1 else (stacked, None)
    half_b = stacked[:, 2] if vectors > 2 else None
    scores, scales = core.combine_trials(trial_scores)  # finite: every trial was checked
    check_spread(scores, run)
    return InfluenceResult(
        scores=scores,
        trial_scores=trial_scores,
        trial_scales=scales,
        losses=losses,
        trials=outcomes,
        orders=[o.order for o in outcomes],
        cache_bytes=max(o.cache_bytes for o in outcomes),
        timings=timings,
        val_loss=outcomes[0].val_loss,
        settings=replace(settings),
        resolved=run,
        warnings=run.warnings,
        candidate_scores=candidates,
        half_b_scores=half_b,
    )
