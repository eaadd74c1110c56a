"""One trial of the influence, checked: the training phase and the replay (:mod:`.phases`)
from the trained parameters, retried at a quarter of the rate while :func:`trial_problem`
finds it cannot be trusted; :func:`trial_unit` is a trial as a unit of an executor
(:mod:`.executor`). :func:`.influence.compute_influence` runs M of them and combines them.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional

import numpy as np

from . import core
from .errors import UnstableReplayError
from .phases import dir_bytes, read_schedule, run_inference_phase, run_training_phase
from .resolved import ResolvedSettings
from .settings import InfluenceSettings

#: A trial whose replay grows the query vector u more than this many times is unstable: with
#: the automatic rate the bounds of :mod:`.curvature` keep the growth near 1 (at most e^0.5
#: from negative curvature); 10x means the rate was too large for some steps.
GROWTH_LIMIT = 10.0


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
    :func:`.replay.replay` (None = the whole replay in this process). ``candidate_rows``: see
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
            infl, stats, val_loss = _attempt(
                model, train, val, settings, replace(run, lr=lr, warnings=[]), trial_dir, seed,
                progress, helper, candidate_rows, seconds,
            )  # fmt: skip
            problem = trial_problem(infl, stats.u_growth, val_loss, val_loss_start)
            if problem is None:
                break
            if attempt == settings.retries:
                raise _unstable(seed, lr, problem, settings.retries, run.lr_source)
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
        cache_bytes=dir_bytes(trial_dir),
        warnings=notes,
    )


def _attempt(
    model, train, val, settings: InfluenceSettings, run: ResolvedSettings, trial_dir: str,
    seed: int, progress, helper, candidate_rows, seconds: Dict[str, float],
):  # fmt: skip
    """One attempt of a trial at ``run.lr``: ``(infl, stats, val_loss)`` of
    :func:`.phases.run_inference_phase` after :func:`.phases.run_training_phase`; its times
    are added to ``seconds``.
    """
    t0 = time.perf_counter()
    run_training_phase(model, train, settings, run, trial_dir, seed, progress)
    t1 = time.perf_counter()
    infl, stats, val_loss = run_inference_phase(
        model, train, val, trial_dir, settings.val_batch_size, progress, helper, candidate_rows
    )
    seconds["training"] += t1 - t0
    seconds["inference"] += time.perf_counter() - t1
    seconds["replay"] += stats.seconds
    seconds["replay_steps"] += stats.steps
    return infl, stats, val_loss


def _unstable(seed: int, lr: float, problem: str, retries: int, lr_source: str):
    """The error of a trial still unstable at ``lr`` after ``retries`` retries."""
    fix = (
        f"--lr auto is already in use: give a smaller --lr number (e.g. "
        f"{lr / 4:.2g}), or use --cache all"
        if lr_source == "auto"
        else "Give a smaller --lr (or --lr auto), or use --cache all"
    )
    return UnstableReplayError(
        f"the replay of trial seed {seed} is unstable at lr={lr:g} ({problem}) "
        f"after {retries} retries at lower rates; nothing was written. " + fix
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
