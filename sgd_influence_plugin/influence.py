"""Influence scores from a loaded model and decoded arrays (no input or output files): the
replay's rate (:func:`resolve`, :func:`choose_lr`), checked trials (:func:`run_trial`) and
their combination (:func:`compute_influence`).

:mod:`.runner` (the run command), :mod:`.fidelity` (the check) and :mod:`.evaluate` build on
it. Each trial runs the two phases of :mod:`.phases` (training phase, then the replay from
its cache folder) and is checked before its scores are used.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional

import numpy as np

from . import core, interrupts
from . import curvature as curvature_mod
from .errors import ComputationError, SettingsError, UnstableReplayError
from .executor import local_executor
from .phases import (  # noqa: F401 - the phases' names, where callers know them
    _dir_bytes,
    read_schedule,
    replay_helper,
    run_inference_phase,
    run_training_phase,
)
from .resolved import ResolvedSettings
from .settings import MIN_LR, InfluenceSettings

#: Logger-like callback for user-facing messages (warnings, stages).
Log = Callable[[str], None]


#: A trial whose replay grows the query vector u more than this many times is unstable: with
#: the automatic rate the bounds of :mod:`.curvature` keep the growth near 1 (at most e^0.5
#: from negative curvature); 10x means the rate was too large for some steps.
GROWTH_LIMIT = 10.0


#: Most the weight decay alone may shrink the weights within the replayed epoch (a factor):
#: T steps multiply every weight by (1 - lr * lambda)^T. Below 1/10 the training phase ends
#: at a collapsed model (the loss near chance) whose scores measure the collapse, not the
#: data. Usual settings are far from it: lr 0.1, lambda 5e-4, T = 1875 shrink by 0.91.
MAX_DECAY_SHRINK = 10.0


def check_rates(lr: float, weight_decay: float, steps: int, chosen: str = "") -> None:
    """Refuse a learning rate and weight decay that leave nothing to replay.

    - ``lr > MIN_LR`` (see :data:`~sgd_influence_plugin.settings.MIN_LR`);
    - ``lr * weight_decay < 1``: otherwise each step multiplies every weight by
      ``1 - lr * weight_decay <= 0``, zeroing or flipping it whatever the gradient;
    - ``(1 - lr * weight_decay) ** steps >= 1 / MAX_DECAY_SHRINK`` (see
      :data:`MAX_DECAY_SHRINK`).

    Args:
        lr: the replayed epoch's rate; ``chosen``: how it was chosen, for the message
            (e.g. "--lr auto chose it: ..."), "" for a rate the user gave.
        weight_decay: lambda of the replayed epoch.
        steps: T, steps of one epoch.

    Raises:
        SettingsError: naming the rate, the weight decay and what to change.

    """
    how = f" ({chosen})" if chosen else ""
    if not lr > MIN_LR:
        fix = (
            "give a smaller --weight-decay (the automatic rate keeps lr * weight decay below 1)"
            if weight_decay > 0 and lr * weight_decay > 0.01
            else "give an --lr above it"
        )
        raise SettingsError(
            f"learning rate {lr:g}{how}: at most {MIN_LR:g}, too small to change float32 "
            f"parameters, so every score would be near 0; {fix}"
        )
    shrink = lr * weight_decay
    if shrink >= 1:
        raise SettingsError(
            f"learning rate {lr:g}{how} with weight decay {weight_decay:g}: each step would "
            f"multiply every weight by 1 - {shrink:.3g} <= 0, destroying the model; give a "
            "smaller --weight-decay (or --lr)"
        )
    factor = math.exp(steps * math.log1p(-shrink))
    if factor < 1 / MAX_DECAY_SHRINK:
        raise SettingsError(
            f"learning rate {lr:g}{how} with weight decay {weight_decay:g}: the decay alone "
            f"would shrink every weight to {factor:.3g} of its size in the {steps} steps of an "
            f"epoch, collapsing the model; give a smaller --weight-decay (or --lr)"
        )


def resolve(model, settings: InfluenceSettings) -> ResolvedSettings:
    """Fill weight decay, batch size and (for ``lr: solver`` or a number) the rate.

    With ``lr: auto`` the rate is provisional (the solver's) until :func:`choose_lr` has
    measured the curvature.

    Raises:
        SettingsError: the definition has no learning rate where one is needed.

    """
    settings.validate()
    solver = model.info.solver
    warnings = []
    solver_lr = float(solver.lr)
    if settings.lr in ("auto", "solver"):
        source, lr = settings.lr, solver_lr
        if not (np.isfinite(lr) and lr > 0):
            if settings.lr == "solver":
                raise SettingsError(
                    f"{model.info.source}: solver '{solver.type}' has no usable learning rate; "
                    "pass one with --lr, or use --lr auto"
                )
            lr = math.inf  # auto: the curvature alone decides
    else:
        source, lr = "given", float(settings.lr)
    if solver.type not in ("Sgd", "SgdW"):
        warnings.append(
            f"the console trained with {solver.type} (lr {solver_lr:g}); the training phase and "
            "the replay model plain SGD (see lr_selection in the settings for the rate)"
        )
    wd = settings.weight_decay if settings.weight_decay is not None else solver.weight_decay
    bs = settings.batch_size if settings.batch_size is not None else solver.batch_size
    return ResolvedSettings(
        lr=float(lr),
        weight_decay=float(wd),
        batch_size=int(bs),
        lr_source=source,
        solver_lr=solver_lr,
        warnings=warnings,
    )


def choose_lr(
    model,
    train: Dict[str, np.ndarray],
    settings: InfluenceSettings,
    run: ResolvedSettings,
    log: Optional[Log] = None,
) -> ResolvedSettings:
    """Measure the curvature at the model's parameters and settle ``run.lr`` (in place).

    ``auto``: the stable rate of :func:`.curvature.stable_lr`, at most the solver's. A rate
    the user gave (or ``solver``) is kept, with a warning before the run when it breaks the
    stability bounds, naming the stable value.
    """
    log = log or (lambda msg: None)
    n = len(next(iter(train.values())))
    steps = core.n_steps(n, run.batch_size)
    operator, kind, why = curvature_mod.hvp_operator(model, min(run.batch_size, n))
    if kind == "fd" and settings.replay_step == "exact":  # no second derivative: one line
        msg = "needs second derivatives: use --replay_step fd (the default, first derivatives)"
        raise SettingsError(f"{model.info.source}: {why}; the exact replay step {msg}")
    curv = curvature_mod.measure(model, train, run.batch_size, settings.seed, graphs=operator)
    cap = run.lr if run.lr_source == "auto" else math.inf
    choice = curvature_mod.stable_lr(curv, steps, cap=cap, weight_decay=run.weight_decay)
    run.curvature, run.lr_choice = curv, choice
    if run.lr_source == "auto":
        if not math.isfinite(choice.lr) or choice.lr <= 0:
            raise SettingsError(
                f"{model.info.source}: no learning rate in the definition and the curvature "
                "sets no bound; pass one with --lr"
            )
        run.lr = choice.lr
        check_rates(run.lr, run.weight_decay, steps, f"--lr auto chose it: {choice.limit}")
        log(f"replay learning rate {run.lr:g} (auto: {choice.limit})")
        return run
    check_rates(run.lr, run.weight_decay, steps)
    if curvature_mod.breaks_rule(run.lr, curv, steps, run.weight_decay):
        msg = (
            f"lr={run.lr:g} is above the stable rate {choice.lr:g} measured for this model "
            f"({choice.limit}); the final-parameters replay may blow up (unstable trials are "
            "retried at a quarter of the rate). --lr auto picks the stable rate"
        )
        run.warnings.append(msg)
        log("warning: " + msg)
    return run


def trial_problem(
    infl: np.ndarray,
    u_growth: float,
    val_loss: float = 0.0,
    val_loss_start: float = math.inf,
    limit: float = GROWTH_LIMIT,
):
    """Why a trial cannot be trusted (a sentence), or None when it is fine.

    Checks: every score finite; the replay's query vector grew at most ``limit`` times; the
    training phase did not diverge (validation loss after its epoch at most
    ``max(2 * start, start + 1)``, with ``start`` the loss at the trained parameters).
    """
    if not math.isfinite(val_loss) or val_loss > max(2 * val_loss_start, val_loss_start + 1):
        return (
            f"the training phase diverged (validation loss {val_loss_start:.4g} -> {val_loss:.4g})"
        )
    bad = int(np.sum(~np.isfinite(infl)))
    if bad:
        return f"{bad} of {len(infl)} scores are not finite"
    if not np.isfinite(u_growth):
        return "the replayed query vector overflowed"
    if u_growth > limit:
        return f"the replayed query vector grew {u_growth:.3g}x (limit {limit:g}x)"
    return None


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
class TrialOutcome:
    """One trial: scores, its rate and what it took.

    Attributes:
        scores: float64 (N,) the trial's scores (units: change of the mean validation loss;
            the settings' target applied, see :mod:`.target`); with candidate rows (2, N):
            then the candidates' order from half A (:mod:`.crossfit`).
        order: int32 (N,) its epoch's order; ``seed``: that order's seed.
        lr: the rate it ran at (lower than the run's if it was retried).
        attempts: 1 + the number of retries.
        u_growth: ||u after|| / ||u before|| of the replay that was kept (the larger of the
            two vectors' with candidate rows).
        val_loss: mean validation loss at its final parameters.
        seconds: ``training``, ``inference``, ``replay`` and ``replay_steps``.
        cache_bytes: size of its cache folder.
        warnings: what went wrong in the attempts that were retried.

    """

    scores: np.ndarray
    order: np.ndarray
    seed: int
    lr: float
    attempts: int
    u_growth: float
    val_loss: float
    seconds: Dict[str, float]
    cache_bytes: int
    warnings: List[str]


def run_trial(
    model,
    train: Dict[str, np.ndarray],
    val: Dict[str, np.ndarray],
    settings: InfluenceSettings,
    run: ResolvedSettings,
    trial_dir: str,
    seed: int,
    progress: Optional[core.Progress] = None,
    val_loss_start: float = math.inf,
    helper=None,
    candidate_rows: Optional[np.ndarray] = None,
) -> TrialOutcome:
    """Training phase + inference phase from the model's current parameters, checked.

    A trial that :func:`trial_problem` rejects (non-finite scores, a query vector that grew
    more than :data:`GROWTH_LIMIT` times, or a training phase that diverged from
    ``val_loss_start``, the validation loss at the trained parameters) is run again (same
    order) at a quarter of the rate, up to ``settings.retries`` times. The model's
    parameters are restored before each attempt and at the end. ``helper``: see
    :func:`.core.replay` (None = the whole replay in this process). ``candidate_rows``: see
    :func:`.phases.run_inference_phase` (a retry is for either vector's problem).

    Raises:
        UnstableReplayError: still unstable after every retry.

    """
    theta0 = model.get_params()
    lr, notes = run.lr, []
    seconds = {"training": 0.0, "inference": 0.0, "replay": 0.0, "replay_steps": 0}
    try:
        for attempt in range(settings.retries + 1):
            model.set_params(theta0)
            attempt_run = replace(run, lr=lr, warnings=[])
            t0 = time.perf_counter()
            run_training_phase(model, train, settings, attempt_run, trial_dir, seed, progress)
            t1 = time.perf_counter()
            infl, stats, val_loss = run_inference_phase(
                model, train, val, trial_dir, settings.val_batch_size, progress, helper,
                candidate_rows,
            )  # fmt: skip
            seconds["training"] += t1 - t0
            seconds["inference"] += time.perf_counter() - t1
            seconds["replay"] += stats.seconds
            seconds["replay_steps"] += stats.steps
            problem = trial_problem(infl, stats.u_growth, val_loss, val_loss_start)
            if problem is None:
                break
            if attempt == settings.retries:
                fix = (
                    f"--lr auto is already in use: give a smaller --lr number (e.g. "
                    f"{lr / 4:.2g}), or use --cache all"
                    if run.lr_source == "auto"
                    else "Give a smaller --lr (or --lr auto), or use --cache all"
                )
                raise UnstableReplayError(
                    f"the replay of trial seed {seed} is unstable at lr={lr:g} ({problem}) "
                    f"after {settings.retries} retries at lower rates; nothing was written. " + fix
                )
            notes.append(f"trial seed {seed}: {problem} at lr={lr:g}; retried at lr={lr / 4:g}")
            lr /= 4
    finally:
        model.set_params(theta0)
    return TrialOutcome(
        scores=infl,
        order=read_schedule(trial_dir)[0],
        seed=seed,
        lr=lr,
        attempts=len(notes) + 1,
        u_growth=float(stats.u_growth),
        val_loss=float(val_loss),
        seconds=seconds,
        cache_bytes=_dir_bytes(trial_dir),
        warnings=notes,
    )


def trial_unit(item, progress, model, train, val):
    """One trial as a unit of an executor (:mod:`.executor`): :func:`run_trial` from the
    parameters the shared model has (restored after), the same wherever it runs.

    Args:
        item: ``(m, settings, run, val_loss_start, folder, send_back, helper,
            candidate_rows)`` for trial m (seed ``settings.seed + m``): ``folder`` is where
            its cache goes (a folder this process can write, when the units run on this
            machine) or None for a temporary folder, removed after; ``send_back``: return the
            cache's files (a cluster's worker: the submitter writes them); ``helper``: the
            replay's co-worker (:func:`.phases.replay_helper`) or None; ``candidate_rows``:
            see :func:`run_trial`.
        model / train / val: the model and arrays every trial shares.

    Returns:
        ``(TrialOutcome, files)``: files = the cache folder's files (relative path -> bytes)
        with ``send_back``, else None.

    """
    m, settings, run, val_loss_start, folder, send_back, helper, candidate_rows = item
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="sgd_influence_"))
        outcome = run_trial(
            model, train, val, settings, run, folder, settings.seed + m, progress,
            val_loss_start, helper, candidate_rows,
        )  # fmt: skip
        files = None
        if send_back:
            files = {}
            for parent, _, names in os.walk(folder):
                for name in names:
                    path = os.path.join(parent, name)
                    with open(path, "rb") as f:
                        files[os.path.relpath(path, folder)] = f.read()
    return outcome, files


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
        losses: float64 (N,), each training sample's loss at the trained parameters (before
            the training phase), in the loss's units.
        trials: the :class:`TrialOutcome` of each trial (rate, retries, u growth, ...).
        orders: the replayed epoch's order of each trial, int32 (N,) each.
        cache_bytes: bytes of one trial's cache folder (the largest).
        timings: seconds: ``curvature``, ``losses``, ``training``, ``inference``, ``replay``
            (summed over trials, so more than the wall time when trials run in parallel),
            ``trials_wall`` (wall time of all trials); ``jobs`` (worker processes);
            ``replay_steps``; ``seconds_per_replay_step``; and ``u_growth`` (largest over
            trials, see ``core.ReplayStats``).
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
) -> InfluenceResult:
    """Curvature and learning rate, then training phase + inference phase, M times, combined.

    The trials are units of ``executor`` (:func:`trial_unit`), each from the same starting
    parameters; the result is the same as running them one after another, wherever they run.
    Warnings of the trials are logged when all are done.

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
            scores stay those of every ``val`` row (:mod:`.crossfit`). None = not.

    Raises:
        UnstableReplayError: a trial stayed unstable after its retries (nothing is returned).

    """
    log = log or (lambda msg: None)
    executor = executor or local_executor(settings.context, settings.jobs)
    run = resolve(model, settings)
    for w in run.warnings:
        log("warning: " + w)
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    get_losses = losses
    losses = None
    if get_losses is None:
        losses = core.per_sample_losses(model, train, settings.val_batch_size)
    if val_loss_start is None:
        val_loss_start = core.mean_loss(model, val, settings.val_batch_size)
    timings["losses"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    choose_lr(model, train, settings, run, log)
    timings["curvature"] = time.perf_counter() - t0
    timings["jobs"] = min(executor.slots, settings.trials)
    vectors = 1 if candidate_rows is None else 2
    helper = replay_helper(settings, executor.cores_per_unit(settings.trials), vectors)
    timings["replay_processes"] = 2 if helper is not None else 1

    # Units here write the cache where it goes, or into a temporary folder this process
    # removes (also after a worker was ended); units elsewhere send a cache_dir's files back.
    here = executor.same_machine
    own_tmp = cache_dir is None and here
    root = tempfile.mkdtemp(prefix="sgd_influence_cache_") if own_tmp else cache_dir

    def trial_dir(m: int) -> Optional[str]:
        if root is None:
            return None
        return root if settings.trials == 1 else os.path.join(root, f"trial_{m:02d}")

    items = [
        (m, settings, run, val_loss_start, trial_dir(m) if here else None,
         cache_dir is not None and not here, helper, candidate_rows)
        for m in range(settings.trials)
    ]  # fmt: skip

    def on_progress(m: int, stage: str, done: int, total: int) -> None:
        interrupts.check()
        if progress is not None:
            name = stage if settings.trials == 1 else f"{stage} (trial {m + 1})"
            progress(name, done, total)

    def on_result(m: int, outcome_files) -> None:
        outcome, files = outcome_files
        for rel, data in (files or {}).items():  # the cache of a trial run elsewhere
            path = os.path.join(trial_dir(m), rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        log(
            f"trial {m + 1}/{settings.trials} done (lr {outcome.lr:g}, validation loss "
            f"{outcome.val_loss:.4f}, u grew {outcome.u_growth:.3g}x)"
        )

    t0 = time.perf_counter()
    try:
        pairs = executor.map(
            trial_unit, items, shared=(model, train, val), on_result=on_result,
            on_progress=on_progress, name="trial",
        )  # fmt: skip
    finally:
        if own_tmp:
            shutil.rmtree(root, ignore_errors=True)
    outcomes: List[TrialOutcome] = [outcome for outcome, _ in pairs]
    timings["trials_wall"] = time.perf_counter() - t0
    for outcome in outcomes:
        for w in outcome.warnings:
            run.warnings.append(w)
            log("warning: " + w)
    for key in ("training", "inference", "replay", "replay_steps"):
        timings[key] = sum(o.seconds[key] for o in outcomes)
    timings["seconds_per_replay_step"] = timings["replay"] / max(1, timings["replay_steps"])
    timings["u_growth"] = max(o.u_growth for o in outcomes)
    if losses is None:
        losses = np.asarray(get_losses(), dtype=np.float64)
    stacked = np.stack([o.scores for o in outcomes])  # (M, N), or (M, 2, N): crossfit
    trial_scores, candidates = (stacked[:, 0], stacked[:, 1]) if vectors > 1 else (stacked, None)
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
    )
