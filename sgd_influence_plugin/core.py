"""SGD-influence: plain SGD, the validation gradient and the backward replay.

The math of Hara et al. (2019) with the storage-efficient replay of Suzuki et al. (2021); see
docs/method.md. Everything here is a function of arrays and of a *model* object that
supplies graphs (:class:`~sgd_influence_plugin.nnabla_adapter.NnablaModel` satisfies it):

- ``model.graph(B)`` -> a graph with ``inputs`` (column -> Variable (B, ...)), ``loss`` (B, 1)
  per-sample losses and ``params`` (name -> Variable);
- ``model.get_params()`` / ``model.set_params(dict)`` for the trainable parameters.

No files, no settings objects, no global state. Conventions:

- ``arrays``: dataset column -> float32 array (N, *sample_shape), rows in CSV order.
- ``order``: int array (N,), the epoch's permutation; step t uses ``order[t*B:(t+1)*B]``, the
  last step may be shorter. T = ceil(N / B).
- ``lrs``: float array (T,), the learning rate eta_t of each step.
- SGD step: theta <- theta - eta_t * (1/|S_t| * sum_{i in S_t} w_i grad l_i(theta)
  + lambda * theta), with sample weights w_i = 1 (0 removes a sample: the leave-one-out oracle).
- Influence ``infl[j]`` (float64, units of validation loss): the estimated change of the mean
  validation loss if sample j were left out of the replayed epoch. Negative = removing j lowers
  the validation loss = harmful. (What a run reports is this estimate relative to the
  sample's class by default: :mod:`.target`.)
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, ContextManager, Dict, List, Mapping, Optional, Sequence

import numpy as np

#: Progress callback: (stage name, steps done, steps in total).
Progress = Callable[[str, int, int], None]


def n_steps(n: int, batch_size: int) -> int:
    """Number of SGD steps T in one epoch over N samples: ceil(N / B)."""
    return int(math.ceil(n / batch_size))


def step_indices(order: np.ndarray, t: int, batch_size: int) -> np.ndarray:
    """Indices (into the dataset) of the samples that step ``t`` uses."""
    return order[t * batch_size : (t + 1) * batch_size]


def epoch_orders(n: int, epochs: int, seed: int) -> List[np.ndarray]:
    """The sample order of each of ``epochs`` epochs: independent permutations of 0..N-1
    from one ``numpy.random.RandomState(seed)``; int32 arrays of shape (N,).
    """
    rng = np.random.RandomState(seed)
    return [rng.permutation(n).astype(np.int32) for _ in range(epochs)]


class _StepGraphs:
    """The weighted objective and the fused influence/HVP graph at one batch size.

    ``objective = sum_i w_i * l_i`` with ``w`` an input of shape (B, 1);
    ``score = sum_k <u_k, d objective / d theta_k>`` with ``u`` held in input Variables.
    One ``score.forward(); score.backward()`` gives ``w.g[i] = <u, grad l_i>`` and
    ``param.g = sum_i w_i H_i u``.
    """

    def __init__(self, model, batch_size: int, fused: bool):
        import nnabla as nn
        import nnabla.functions as F

        g = model.graph(batch_size)
        self.graph = g
        self.params = list(g.params.values())
        with model.context_scope():
            self.w = nn.Variable((batch_size, 1), need_grad=True)
            self.objective = F.sum(self.w * g.loss)
            self.score = None
            if fused:
                grads = nn.grad([self.objective], self.params)
                self.u = [nn.Variable(p.shape) for p in self.params]
                terms = [F.sum(gk * uk) for gk, uk in zip(grads, self.u)]
                self.score = terms[0] if len(terms) == 1 else F.add_n(*terms)

    def feed(self, arrays: Mapping[str, np.ndarray], index: np.ndarray, weights: np.ndarray):
        """Set the inputs to rows ``index`` and w to ``weights``; a graph larger than the
        batch is padded with copies of the first row at weight 0.
        """
        pad = self.graph.batch_size - len(index)
        if pad:
            index = np.concatenate([index, np.repeat(index[:1], pad)])
            weights = np.concatenate([weights, np.zeros(pad, weights.dtype)])
        for col, var in self.graph.inputs.items():
            var.d = arrays[col][index]
        self.w.d = weights.reshape(-1, 1)

    def zero_grads(self):
        for p in self.params:
            p.grad.zero()
        self.w.grad.zero()


class GraphCache:
    """Step graphs of one model by batch size; share one across calls to build each once."""

    def __init__(self, model, fused: bool):
        self.model, self.fused, self._by_size = model, fused, {}

    def __call__(self, batch_size: int) -> _StepGraphs:
        """The step graphs for ``batch_size`` samples (built on first use)."""
        # nnabla 1.39's double backward of SoftmaxCrossEntropy fails at batch size 1
        # ("Dimensions of inputs must match"): fused graphs of one sample are built for two
        # and padded with a zero-weight row (see _StepGraphs.feed).
        size = max(batch_size, 2) if self.fused else batch_size
        if size not in self._by_size:
            self._by_size[size] = _StepGraphs(self.model, size, self.fused)
        return self._by_size[size]


def sgd_epoch(
    model,
    arrays: Mapping[str, np.ndarray],
    order: np.ndarray,
    lrs: Sequence[float],
    batch_size: int,
    weight_decay: float = 0.0,
    sample_weight: Optional[np.ndarray] = None,
    before_step: Optional[Callable[[int], None]] = None,
    progress: Optional[Progress] = None,
    graphs: Optional[GraphCache] = None,
) -> None:
    """Run one epoch of plain SGD in place on ``model``'s trainable parameters.

    Args:
        model: see the module docstring.
        arrays: dataset column -> (N, ...) float32.
        order: (N,) the epoch's sample order.
        lrs: (T,) learning rate per step.
        batch_size: B.
        weight_decay: lambda (L2), as nnabla's solvers apply it: grad += lambda * theta.
        sample_weight: optional (N,) per-sample weights (default 1). The step's mean still
            divides by |S_t|, so weight 0 removes a sample without renormalizing (the exact
            counterfactual of the influence definition).
        before_step: called with t before step t changes the parameters (for snapshots).
        progress: optional callback.

    """
    graphs = graphs or GraphCache(model, fused=False)
    T = n_steps(len(order), batch_size)
    for t in range(T):
        idx = step_indices(order, t, batch_size)
        if before_step is not None:
            before_step(t)
        sg = graphs(len(idx))
        w = np.full(len(idx), 1.0 / len(idx), dtype=np.float32)
        if sample_weight is not None:
            w = w * sample_weight[idx].astype(np.float32)
        sg.feed(arrays, idx, w)
        sg.objective.forward(clear_no_need_grad=True)
        sg.zero_grads()
        sg.objective.backward(clear_buffer=True)
        lr = float(lrs[t])
        for p in sg.params:
            if weight_decay:
                p.d = p.d - lr * (p.g + weight_decay * p.d)
            else:
                p.d = p.d - lr * p.g
        if progress is not None:
            progress("train", t + 1, T)


def per_sample_losses(model, arrays: Mapping[str, np.ndarray], batch_size: int = 256) -> np.ndarray:
    """Each sample's loss at the model's current parameters.

    Returns:
        float64 (N,), in the loss's units (e.g. nats for softmax cross entropy), row order.

    """
    n = len(next(iter(arrays.values())))
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(n, start + batch_size))
        g = model.graph(len(idx))
        for col, var in g.inputs.items():
            var.d = arrays[col][idx]
        g.loss.forward(clear_buffer=True)
        out[idx] = np.asarray(g.loss.d, dtype=np.float64).ravel()
    return out


def mean_loss(model, arrays: Mapping[str, np.ndarray], batch_size: int = 256) -> float:
    """Mean per-sample loss over a dataset (float, in the loss's units)."""
    return float(np.mean(per_sample_losses(model, arrays, batch_size)))


def combine_trials(trial_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Combine M trials so that no single trial's scale decides the ranking.

    Each trial's scores are divided by their root mean square, averaged, and multiplied by
    the median of the trials' RMS values, so the result keeps the units of one typical trial
    (change of the mean validation loss; negative = harmful). With equal scales this is the
    plain mean; a trial 100x larger than the others weighs as much as any other, not 100x.

    Args:
        trial_scores: float64 (M, N), one row per trial, all finite.

    Returns:
        ``(scores, scales)``: float64 (N,) combined scores and (M,) each trial's RMS.

    """
    trial_scores = np.asarray(trial_scores, dtype=np.float64)
    scales = np.sqrt(np.mean(np.square(trial_scores), axis=1))
    safe = np.where(scales > 0, scales, 1.0)
    combined = np.mean(trial_scores / safe[:, None], axis=0) * float(np.median(scales))
    return combined, scales


def validation_gradient(
    model, arrays: Mapping[str, np.ndarray], batch_size: int = 256
) -> OrderedDict[str, np.ndarray]:
    """The query vector u = grad of the mean validation loss at the current parameters.

    Returns:
        Trainable parameter name -> float32 array of that parameter's shape.

    """
    return validation_gradient_and_loss(model, arrays, batch_size)[0]


def validation_gradient_and_loss(
    model, arrays: Mapping[str, np.ndarray], batch_size: int = 256
) -> tuple[OrderedDict[str, np.ndarray], float]:
    """``(u, mean loss)`` of the validation set in one pass: :func:`validation_gradient` and
    :func:`mean_loss` (the loss in its own units) from the same forward passes.
    """
    n = len(next(iter(arrays.values())))
    graphs = GraphCache(model, fused=False)
    acc: OrderedDict[str, np.ndarray] = OrderedDict()
    total = 0.0
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(n, start + batch_size))
        sg = graphs(len(idx))
        sg.feed(arrays, idx, np.full(len(idx), 1.0 / n, dtype=np.float32))
        sg.objective.forward(clear_no_need_grad=True)
        total += float(np.asarray(sg.objective.d, dtype=np.float64).sum())
        sg.zero_grads()
        sg.objective.backward(clear_buffer=True)
        for name, p in sg.graph.params.items():
            g = np.asarray(p.g, dtype=np.float64)
            acc[name] = acc[name] + g if name in acc else g
    return OrderedDict((k, v.astype(np.float32)) for k, v in acc.items()), total


#: Ways to compute one replay step: ``"exact"`` (:class:`ExactStep`, one double-backward pass)
#: or ``"fd"`` (:class:`FiniteDifferenceStep`, two first-order passes).
REPLAY_STEPS = ("exact", "fd")

#: Default relative size of the central-difference step: eps * ||u|| = FD_REL_STEP * ||theta||.
#: Chosen by whole replays on ReLU/max-pooling CNNs; the measurements behind it are in
#: docs/method.md ("Choosing the finite-difference step").
FD_REL_STEP = 1e-2


def _norm(arrays: Sequence[np.ndarray]) -> float:
    """Euclidean norm of a list of arrays taken as one vector (float64 accumulation)."""
    return float(np.sqrt(sum(np.sum(np.square(x, dtype=np.float64)) for x in arrays)))


class ExactStep:
    """One replay step by one fused double-backward pass (see :class:`_StepGraphs`).

    ``step(arrays, idx, u)`` returns ``(dots, hu)`` at the model's current parameters theta:

    - ``dots``: float64 (|idx|,), ``<u, grad l_i(theta)>`` for each i in ``idx``;
    - ``hu``: float32 arrays, one per trainable parameter in ``model.graph(B).params`` order:
      ``H u``, with H the Hessian of the mean loss over ``idx`` (no weight decay).

    Args:
        model: see the module docstring.
        graphs: an optional ``GraphCache(model, fused=True)`` to share.

    """

    name = "exact"

    def __init__(self, model, graphs: Optional[GraphCache] = None):
        self.graphs = graphs or GraphCache(model, fused=True)

    def __call__(self, arrays: Mapping[str, np.ndarray], idx: np.ndarray, u: Sequence[np.ndarray]):
        """``(dots, hu)`` of the samples ``idx`` for the query vector ``u`` (see the class)."""
        sg = self.graphs(len(idx))
        sg.feed(arrays, idx, np.full(len(idx), 1.0 / len(idx), dtype=np.float32))
        for var, value in zip(sg.u, u):
            var.d = value
        sg.score.forward(clear_no_need_grad=True)
        sg.zero_grads()
        sg.score.backward(clear_buffer=True)
        # w.g[i] = d score / d w_i = <u, grad l_i>; param.g = sum_i w_i H_i u with w_i = 1/|S|.
        dots = np.array(sg.w.g, dtype=np.float64).ravel()[: len(idx)]
        return dots, [np.array(p.g, dtype=np.float32, copy=True) for p in sg.params]


class FiniteDifferenceStep:
    """One replay step by central differences of two first-order passes at theta +/- eps*u.

    With ``L_S(theta) = 1/|S| sum_i l_i(theta)`` and its gradient ``g``::

        dots[i] = (l_i(theta + eps u) - l_i(theta - eps u)) / (2 eps)   ~ <u, grad l_i(theta)>
        hu      = (g(theta + eps u) - g(theta - eps u)) / (2 eps)       ~ H u

    For smooth losses both are exact up to O(eps^2) (plus float32 rounding, about
    ``1e-7 / rel_step`` relative). Where a ReLU or a max pooling switches between the two
    points, the gradient jumps and ``hu`` gets that jump divided by 2 eps: the smaller eps, the
    fewer switches but the larger each error, so on such networks the step is a smoothed
    Hessian and eps must not be small (see :data:`FD_REL_STEP`).
    ``eps = rel_step * ||theta|| / ||u||``: the two points differ from theta by ``rel_step`` of
    its norm. The model's parameters are restored after each call. Same call and result as
    :class:`ExactStep`.

    Args:
        model: see the module docstring.
        rel_step: eps relative to ||theta|| / ||u|| (default :data:`FD_REL_STEP`).
        graphs: an optional ``GraphCache(model, fused=False)`` to share.

    """

    name = "fd"

    def __init__(self, model, rel_step: float = FD_REL_STEP, graphs: Optional[GraphCache] = None):
        if not (np.isfinite(rel_step) and rel_step > 0):
            raise ValueError(f"rel_step must be a positive number, not {rel_step!r}")
        self.rel_step = float(rel_step)
        self.graphs = graphs or GraphCache(model, fused=False)

    #: Optional executor of the minus pass (``submit(idx, eps, u)`` then ``result()``), e.g. a
    #: forked helper holding the same model, data and parameters (see :func:`replay`); None =
    #: both passes here, one after the other.
    minus = None

    def one_pass(
        self, arrays: Mapping[str, np.ndarray], idx: np.ndarray, u: Sequence[np.ndarray],
        eps: float, sign: float,
    ):  # fmt: skip
        """Per-sample losses float64 (|idx|,) and the mean-loss gradient (float32 arrays in
        ``params`` order) at ``theta + sign * eps * u``; the parameters are restored.
        """
        sg = self.graphs(len(idx))
        n = len(idx)
        theta = [np.array(p.d, dtype=np.float32, copy=True) for p in sg.params]
        sg.feed(arrays, idx, np.full(n, 1.0 / n, dtype=np.float32))
        try:
            for p, th, uk in zip(sg.params, theta, u):
                p.d = th + np.float32(sign * eps) * uk
            sg.objective.forward(clear_no_need_grad=True)
            sg.zero_grads()
            sg.objective.backward(clear_buffer=True)
            # objective = sum_i w_i l_i, so w.g[i] = l_i: the per-sample losses.
            losses = np.array(sg.w.g, dtype=np.float64).ravel()[:n]
            return losses, [np.array(p.g, dtype=np.float32, copy=True) for p in sg.params]
        finally:
            for p, th in zip(sg.params, theta):
                p.d = th

    def __call__(self, arrays: Mapping[str, np.ndarray], idx: np.ndarray, u: Sequence[np.ndarray]):
        """``(dots, hu)`` of the samples ``idx`` for the query vector ``u`` (see the class)."""
        sg = self.graphs(len(idx))
        n = len(idx)
        u_norm = _norm(u)
        if u_norm == 0:
            return np.zeros(n), [np.zeros(p.shape, np.float32) for p in sg.params]
        eps = self.rel_step * (_norm([p.d for p in sg.params]) or 1.0) / u_norm
        if self.minus is not None:
            self.minus.submit(idx, eps, u)
        l_plus, g_plus = self.one_pass(arrays, idx, u, eps, 1.0)
        if self.minus is not None:
            l_minus, g_minus = self.minus.result()
        else:
            l_minus, g_minus = self.one_pass(arrays, idx, u, eps, -1.0)
        dots = (l_plus - l_minus) / (2.0 * eps)
        hu = [((a - b) / np.float32(2.0 * eps)).astype(np.float32) for a, b in zip(g_plus, g_minus)]
        return dots, hu


def make_replay_step(model, step: str = "exact", fd_rel_step: float = FD_REL_STEP):
    """The replay step ``step`` (one of :data:`REPLAY_STEPS`) for ``model``.

    Raises:
        ValueError: unknown ``step``.

    """
    if step == "exact":
        return ExactStep(model)
    if step == "fd":
        return FiniteDifferenceStep(model, fd_rel_step)
    raise ValueError(f"unknown replay step {step!r}; choose one of {REPLAY_STEPS}")


def update_query(
    u: List[np.ndarray], hu: Sequence[np.ndarray], lr: float, weight_decay: float = 0.0
) -> List[np.ndarray]:
    """One step of the query vector's backward recursion: ``u - lr * (H u + lambda * u)``."""
    if weight_decay:
        return [uk - lr * (h + weight_decay * uk) for uk, h in zip(u, hu)]
    return [uk - lr * h for uk, h in zip(u, hu)]


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
        step: how each step was computed (one of :data:`REPLAY_STEPS`).

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
        model: see the module docstring; its current parameters are theta for every step
            (Suzuki et al.'s final-parameters replay) unless ``params_at`` is given.
        arrays: training data, column -> (N, ...).
        order: (N,) the replayed epoch's order; ``lrs``: (T,) its learning rates.
        batch_size: B of the replayed epoch.
        u: the query vector (e.g. :func:`validation_gradient` at the final parameters),
            parameter name -> array; not modified.
        weight_decay: lambda of the replayed epoch.
        params_at: optional ``t -> parameters before step t`` (Hara et al.'s all-parameters
            mode); the model's parameters are overwritten step by step.
        progress: optional callback, stage ``"replay"``.
        step: ``"exact"`` (default): the dot products and H u of each step from one fused
            double-backward pass (:class:`ExactStep`); ``"fd"``: from central differences of
            two first-order passes (:class:`FiniteDifferenceStep`), cheaper, approximate.
        fd_rel_step: the relative step of ``"fd"``.
        helper: optional ``helper(fn)`` context manager yielding an executor of ``fn`` in
            another process (``submit(*args)``, ``result()``; e.g. :func:`.coworker.helper`),
            or None. With ``"fd"`` and no ``params_at``, the minus pass of every step then
            runs there while this process runs the plus pass: the same numbers, in about half
            the wall time on two free cores.

    Returns:
        ``(infl, stats)``: infl is float64 (N,) in dataset row order, negative = harmful;
        samples the epoch did not visit keep 0.

    """
    n = len(order)
    T = n_steps(n, batch_size)
    step_fn = make_replay_step(model, step, fd_rel_step)
    names = list(model.graph(min(batch_size, n)).params.keys())
    u_cur = [np.array(u[k], dtype=np.float32, copy=True) for k in names]
    infl = np.zeros(len(next(iter(arrays.values()))), dtype=np.float64)
    norm0 = _norm(u_cur)
    start = time.perf_counter()
    split = helper is not None and isinstance(step_fn, FiniteDifferenceStep) and params_at is None
    with helper(
        lambda idx, eps, u: step_fn.one_pass(arrays, idx, u, eps, -1.0)
    ) if split else contextlib.nullcontext() as minus:  # fmt: skip
        if minus is not None:
            step_fn.minus = minus  # in this process only: the helper was forked before
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
    seconds = time.perf_counter() - start
    norm1 = _norm(u_cur)
    return infl, ReplayStats(
        steps=T, seconds=seconds, u_growth=norm1 / norm0 if norm0 else 1.0, step=step
    )
