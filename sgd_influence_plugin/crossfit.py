"""Cross-fitting: the influence from every validation row, the recommendation's candidates from
half of them, its check on the other half; and the replay of several query vectors in one
pass over the steps, sharing what two replays can share.

A run that recommends splits the validation rows into seeded halves A and B
(:func:`.heldout_check.split_validation`). Its trials replay two query vectors through the same
epoch (:func:`replay_with_candidates`):

- ``u``, the gradient of the mean loss over *every* validation row: its scores are the
  influence (the column users sort by, combined over trials, centred by class, recorded), the
  same numbers as ``--no-recommend`` gives;
- ``u_A``, the same over half A only: its scores only order the recommendation's candidates,
  which are then checked on half B, rows neither the candidates nor their order have seen.

Why ``u`` and ``u_A`` and not ``u_A`` and ``u_B`` averaged: the replay is linear in the query
vector for the exact step, so ``(n_A I_A + n_B I_B) / n`` would be the full set's influence;
the default finite-difference step is not (its ``H u`` is a smoothed Hessian taken along
``u``'s own direction): on a ReLU MLP the weighted mean of the halves' fd replays was 2.6% of
the largest score away from the fd replay of ``u`` (the exact step: 7e-7). Replaying ``u``
itself gives the ``--no-recommend`` scores to the bit, at the same cost.

What the vectors share in one process (:func:`replay_vectors`): one loop over the steps, the
step's graphs, the parameters of each step (read once from an all-parameters cache), and, for
the exact step, the forward pass and first-order gradient graph of each step
(:class:`ExactSteps`: one forward, one double-backward per vector: 1.5x one vector's step
instead of 2x). The fd step's points ``theta +/- eps u`` differ per vector, so its passes
cannot be shared: two vectors cost two steps. With a helper process
(:func:`.coworker.helper`, a second core) the vectors after the first are replayed there,
whole, while this process replays the first: no per-step traffic, and the first vector's
numbers are those of a replay alone. On two cores the replay then takes about 2 E of wall
time (E = one training epoch) where one vector's fd replay, split over two processes, took 1 E.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, ContextManager, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import core, replay, replay_steps


class _SinkGraphs(core._StepGraphs):
    """The weighted objective's first-order gradients as a graph, ended by a sink whose
    backward starts from gradients the caller sets on them: with ``grads[k].g = u[k]`` one
    backward gives ``w.g[i] = <u, grad l_i>`` and ``param.g = sum_i w_i H_i u``, and the
    forward pass (the network and its first-order gradients) serves every ``u``.
    """

    def __init__(self, model, batch_size: int):
        import nnabla.functions as F

        super().__init__(model, batch_size, fused=False)
        with model.context_scope():
            self.grads = core.gradient_graph(self.objective, self.params)
            self.sink = F.sink(*self.grads, one_input_grad=False)


class ExactSteps:
    """:class:`.replay_steps.ExactStep` for several query vectors: ``steps(arrays, idx, us)``
    returns ``[(dots, hu), ...]``, one pair per vector, each the same numbers as ``ExactStep``
    gives for it, from one forward pass and one double-backward pass per vector.
    """

    name = "exact"

    def __init__(self, model):
        self.model, self._by_size = model, {}

    def __call__(self, arrays: Mapping[str, np.ndarray], idx: np.ndarray, us: Sequence):
        """``[(dots, hu), ...]`` of the samples ``idx``, one pair per vector of ``us``."""
        # padded to two rows at batch size 1, as core.GraphCache does for fused graphs
        size = max(len(idx), 2)
        if size not in self._by_size:
            self._by_size[size] = _SinkGraphs(self.model, size)
        sg = self._by_size[size]
        sg.feed(arrays, idx, np.full(len(idx), 1.0 / len(idx), dtype=np.float32))
        sg.sink.forward(clear_no_need_grad=True)
        out = []
        for k, u in enumerate(us):
            sg.zero_grads()
            for var, value in zip(sg.grads, u):
                var.g = value
            sg.sink.backward(clear_buffer=k == len(us) - 1)
            dots = np.array(sg.w.g, dtype=np.float64).ravel()[: len(idx)]
            out.append((dots, [np.array(p.g, dtype=np.float32, copy=True) for p in sg.params]))
        return out


class FiniteDifferenceSteps:
    """:class:`.replay_steps.FiniteDifferenceStep` for several query vectors, the same numbers for
    each: two first-order passes per vector (points ``theta +/- eps u`` differ per vector, so
    nothing but the graphs can be shared).
    """

    name = "fd"

    def __init__(self, model, rel_step: float = replay_steps.FD_REL_STEP):
        self.one = replay_steps.FiniteDifferenceStep(model, rel_step)

    def __call__(self, arrays: Mapping[str, np.ndarray], idx: np.ndarray, us: Sequence):
        """``[(dots, hu), ...]`` of the samples ``idx``, one pair per vector of ``us``."""
        return [self.one(arrays, idx, u) for u in us]


def make_steps(model, step: str = "exact", fd_rel_step: float = replay_steps.FD_REL_STEP):
    """The several-vector replay step ``step`` (one of :data:`.replay_steps.REPLAY_STEPS`;
    :func:`.replay_steps.step_for` decides).
    """
    step = replay_steps.step_for(model, step)
    if step == "exact":
        return ExactSteps(model)
    if step == "fd":
        return FiniteDifferenceSteps(model, fd_rel_step)
    raise ValueError(f"unknown replay step {step!r}; choose one of {replay_steps.REPLAY_STEPS}")


def _replay_loop(
    model, arrays, order, lrs, batch_size, us, weight_decay, params_at, progress, step, rel
) -> Tuple[np.ndarray, List[replay.ReplayStats]]:
    """:func:`.replay.replay`'s loop (Algorithm 2) for every vector of ``us`` at each step."""
    n = len(order)
    T = core.n_steps(n, batch_size)
    steps = make_steps(model, step, rel)
    names = list(model.graph(min(batch_size, n)).params.keys())
    cur = [[np.array(u[k], dtype=np.float32, copy=True) for k in names] for u in us]
    infl = np.zeros((len(us), len(next(iter(arrays.values())))), dtype=np.float64)
    norm0 = [replay_steps.norm(u) for u in cur]
    start = time.perf_counter()
    for done, t in enumerate(range(T - 1, -1, -1)):
        if params_at is not None:
            model.set_params(params_at(t))
        idx = core.step_indices(order, t, batch_size)
        lr = float(lrs[t])
        for k, (dots, hu) in enumerate(steps(arrays, idx, cur)):
            infl[k, idx] += lr / len(idx) * dots  # the step's weight on sample i is 1/|S|
            cur[k] = replay_steps.update_query(cur[k], hu, lr, weight_decay)
        if progress is not None:
            progress("replay", done + 1, T)
    seconds = time.perf_counter() - start
    stats = [
        replay.ReplayStats(T, seconds, replay_steps.norm(u) / n0 if n0 else 1.0, steps.name)
        for u, n0 in zip(cur, norm0)
    ]
    return infl, stats


def replay_vectors(
    model,
    arrays: Mapping[str, np.ndarray],
    order: np.ndarray,
    lrs: Sequence[float],
    batch_size: int,
    us: Sequence[Mapping[str, np.ndarray]],
    weight_decay: float = 0.0,
    params_at: Optional[Callable[[int], Dict[str, np.ndarray]]] = None,
    progress: Optional[core.Progress] = None,
    step: str = "exact",
    fd_rel_step: float = replay_steps.FD_REL_STEP,
    helper: Optional[Callable[[Callable], ContextManager]] = None,
) -> Tuple[np.ndarray, List[replay.ReplayStats]]:
    """:func:`.replay.replay` of every query vector in ``us`` through the same epoch.

    Arguments as :func:`.replay.replay`, but ``us`` (K vectors) and ``helper``: with one (e.g.
    :func:`.coworker.helper`) and K >= 2, a forked process replays ``us[1:]`` while this one
    replays ``us[0]`` (any step, any cache); the same numbers as in one process.

    Returns:
        ``(infl, stats)``: float64 (K, N), row k the scores of ``us[k]`` (the same as
        ``replay.replay`` gives for it alone), and one :class:`.replay.ReplayStats` per vector.

    """
    loop = lambda vectors, prog: _replay_loop(  # noqa: E731
        model, arrays, order, lrs, batch_size, vectors, weight_decay, params_at, prog, step,
        fd_rel_step,
    )  # fmt: skip
    split = helper is not None and len(us) >= 2
    with helper(lambda rest: loop(rest, None)) if split else contextlib.nullcontext() as other:
        if other is not None:
            other.submit([dict(u) for u in us[1:]])
            first, first_stats = loop(us[:1], progress)
            rest, rest_stats = other.result()
            return np.concatenate([first, rest]), first_stats + rest_stats
    return loop(us, progress)


def halves_of(candidate_rows) -> List[np.ndarray]:
    """The validation halves whose gradients are replayed beside ``u``: ``candidate_rows`` is
    one index array (half A, the one-way check) or a sequence of them (halves A and B, the
    two-way check of small validation sets, :mod:`.pooled_check`).
    """
    if isinstance(candidate_rows, np.ndarray):
        return [candidate_rows]
    return [np.asarray(rows) for rows in candidate_rows]


def replay_with_candidates(
    model,
    train: Mapping[str, np.ndarray],
    val: Mapping[str, np.ndarray],
    candidate_rows,
    u: Mapping[str, np.ndarray],
    order: np.ndarray,
    lrs: Sequence[float],
    batch_size: int,
    val_batch_size: int = 256,
    **replay_args,
) -> Tuple[np.ndarray, replay.ReplayStats]:
    """The replay of ``u`` (every validation row's gradient) and of ``u_A``, the gradient of
    the mean loss over the validation rows ``candidate_rows`` (half A), at the model's
    current parameters, through one epoch (:func:`replay_vectors`; ``replay_args`` as there).
    With two halves (:func:`halves_of`) ``u_B`` is replayed too, the same way.

    Returns:
        ``(infl, stats)``: float64 (1 + K, N), row 0 the influence (every validation row),
        row 1 the candidates' order (half A), row 2 half B's (K = 2); one
        :class:`.replay.ReplayStats` for all: the wall time, and the largest growth of the
        vectors (a trial is as unstable as its worst replay).

    """
    us = [u]
    for rows in halves_of(candidate_rows):
        half = {k: v[rows] for k, v in val.items()}
        us.append(core.validation_gradient(model, half, val_batch_size))
    start = time.perf_counter()
    infl, stats = replay_vectors(model, train, order, lrs, batch_size, us, **replay_args)
    growth = float(np.max([s.u_growth for s in stats]))  # NaN stays NaN
    joint = replay.ReplayStats(stats[0].steps, time.perf_counter() - start, growth, stats[0].step)
    return infl, joint
