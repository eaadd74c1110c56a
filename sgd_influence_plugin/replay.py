"""The backward replay of one SGD epoch (Algorithm 2): every step, last to first, adds its
samples' share of the influence and moves the query vector u one step back.

Each step's ``(dots, hu)`` comes from :mod:`.replay_steps` (exact or finite differences); the
conventions are :mod:`.core`'s. Arrays and graphs only: like :mod:`.core`, nothing else of the
project is imported. Several query vectors through one epoch: :mod:`.crossfit`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .core import Progress, n_steps, step_indices
from .replay_steps import (
    FD_REL_STEP,
    FiniteDifferenceStep,
    make_replay_step,
    norm,
    update_query,
)


@dataclass
class ReplayStats:
    """Facts of one backward replay.

    Attributes:
        steps: T.
        seconds: wall time of the replay.
        u_growth: ||u after the replay|| / ||u at the start||. Much above 1 means
            (I - eta H) expands u: eta times the Hessian's largest eigenvalue exceeds 2 at the
            parameters used, so score magnitudes are not calibrated (their order still is
            usable); Hara et al.'s all-parameters mode or a smaller lr avoids it.
        step: how each step was computed (one of :data:`.replay_steps.REPLAY_STEPS`).

    """

    steps: int
    seconds: float
    u_growth: float = 1.0
    step: str = "exact"


def replay(
    model,
    arrays: Mapping[str, np.ndarray],
    order: np.ndarray,
    lrs: Sequence[float],
    batch_size: int,
    u: Mapping[str, np.ndarray],
    weight_decay: float = 0.0,
    params_at: Optional[Callable[[int], Dict[str, np.ndarray]]] = None,
    progress: Optional[Progress] = None,
    step: str = "exact",
    fd_rel_step: float = FD_REL_STEP,
    helper: Optional[Callable[[Callable], ContextManager]] = None,
) -> tuple[np.ndarray, ReplayStats]:
    """Backward replay of one SGD epoch (Algorithm 2).

    For t = T-1 .. 0, with S = step t's samples::

        infl[j] += eta_t / |S| * <u, grad l_j(theta)>     for j in S
        u       <- u - eta_t * (H_t u + lambda * u)

    Args:
        model: see :mod:`.core`; its current parameters are theta for every step (Suzuki et
            al.'s final-parameters replay) unless ``params_at`` is given.
        arrays: training data, column -> (N, ...); ``order``: (N,) the replayed epoch's
            order; ``lrs``: (T,) its learning rates; ``batch_size``: its B.
        u: the query vector (e.g. :func:`.core.validation_gradient` at the final parameters),
            parameter name -> array; not modified.
        weight_decay: lambda of the replayed epoch.
        params_at: optional ``t -> parameters before step t`` (Hara et al.'s all-parameters
            mode); the model's parameters are overwritten step by step.
        progress: optional callback, stage ``"replay"``.
        step: ``"exact"`` (default): the dot products and H u of each step from one fused
            double-backward pass (:class:`.replay_steps.ExactStep`); ``"fd"``: from central
            differences of two first-order passes (:class:`.replay_steps.FiniteDifferenceStep`),
            cheaper, approximate; ``fd_rel_step``: the relative step of ``"fd"``.
        helper: optional ``helper(fn)`` context manager yielding an executor of ``fn`` in
            another process (``submit(*args)``, ``result()``; e.g. :func:`.coworker.helper`).
            With ``"fd"`` and no ``params_at``, each step's minus pass then runs there while
            this process runs the plus pass: the same numbers, in about half the wall time.

    Returns:
        ``(infl, stats)``: infl float64 (N,) in dataset row order, negative = harmful; 0 for
        samples the epoch did not visit.

    """
    n = len(order)
    step_fn = make_replay_step(model, step, fd_rel_step)
    names = list(model.graph(min(batch_size, n)).params.keys())
    u_cur = [np.array(u[k], dtype=np.float32, copy=True) for k in names]
    start = time.perf_counter()
    with _minus_pass(helper, step_fn, arrays, params_at) as minus:
        if minus is not None:
            step_fn.minus = minus  # in this process only: the helper was forked before
        infl, growth = _backward(
            model, step_fn, arrays, order, lrs, batch_size, u_cur, weight_decay, params_at,
            progress,
        )  # fmt: skip
    used = step_fn.name  # the step run (replay_steps.step_for)
    return infl, ReplayStats(n_steps(n, batch_size), time.perf_counter() - start, growth, used)


def _minus_pass(helper, step_fn, arrays, params_at) -> ContextManager:
    """``helper``'s context running the fd step's minus pass in another process (the fd step
    with a final-parameters replay only), else a context yielding None.
    """
    if helper is None or not isinstance(step_fn, FiniteDifferenceStep) or params_at is not None:
        return contextlib.nullcontext()
    return helper(lambda idx, eps, u: step_fn.one_pass(arrays, idx, u, eps, -1.0))


def _backward(
    model, step_fn, arrays, order, lrs, batch_size, u_cur: List[np.ndarray], weight_decay,
    params_at, progress,
):  # fmt: skip
    """The loop for t = T-1 .. 0 (see :func:`replay`): ``(infl, ||u after|| / ||u before||)``."""
    T = n_steps(len(order), batch_size)
    norm0 = norm(u_cur)
    infl = np.zeros(len(next(iter(arrays.values()))), dtype=np.float64)
    for done, t in enumerate(range(T - 1, -1, -1)):
        if params_at is not None:
            model.set_params(params_at(t))
        idx = step_indices(order, t, batch_size)
        dots, hu = step_fn(arrays, idx, u_cur)
        lr = float(lrs[t])
        infl[idx] += lr / len(idx) * dots  # the step's weight on sample i is 1/|S|
        u_cur = update_query(u_cur, hu, lr, weight_decay)
        if progress is not None:
            progress("replay", done + 1, T)
    return infl, norm(u_cur) / norm0 if norm0 else 1.0
