"""One step of the backward replay: ``(dots, hu)`` of a step's samples for a query vector u.

:class:`ExactStep` gets both from one fused double-backward pass (:class:`.core.GraphCache`'s
fused graphs); :class:`FiniteDifferenceStep` from central differences of two first-order passes
(cheaper, approximate). :func:`update_query` then moves u one step back. Arrays and graphs
only: like :mod:`.core`, nothing else of the project is imported (the conventions are
:mod:`.core`'s; the loop over the epoch is :mod:`.replay`).
"""

from __future__ import annotations

from typing import List, Mapping, Optional, Sequence

import numpy as np

from .core import GraphCache

#: Ways to compute one replay step: ``"exact"`` (:class:`ExactStep`, one double-backward pass)
#: or ``"fd"`` (:class:`FiniteDifferenceStep`, two first-order passes).
REPLAY_STEPS = ("exact", "fd")

#: Default relative size of the central-difference step: eps * ||u|| = FD_REL_STEP * ||theta||.
#: Chosen by whole replays on ReLU/max-pooling CNNs; the measurements behind it are in
#: docs/method.md ("Choosing the finite-difference step").
FD_REL_STEP = 1e-2

#: The console's layers whose forward is a step (binarized or quantized) and whose gradient
#: nnabla passes straight through (``d sign(x) / dx := 1``, masked), as nnabla_cli train
#: trains them: function type -> whether nnabla 1.39 differentiates that gradient again
#: (a fused, exact replay step exists). The fd step differences the step function itself, not
#: the gradient the training used (docs/method.md, "Straight-through layers").
STRAIGHT_THROUGH = {
    "BinarySigmoid": True,
    "BinaryTanh": True,
    "Sign": True,
    "Round": True,
    "BinaryConnectAffine": False,
    "BinaryConnectConvolution": False,
    "BinaryWeightAffine": False,
    "BinaryWeightConvolution": False,
    "FixedPointQuantize": False,
    "Pow2Quantize": False,
    "MinMaxQuantize": False,
}


def norm(arrays: Sequence[np.ndarray]) -> float:
    """Euclidean norm of a list of arrays taken as one vector (float64 accumulation)."""
    return float(np.sqrt(sum(np.sum(np.square(x, dtype=np.float64)) for x in arrays)))


class ExactStep:
    """One replay step by one fused double-backward pass (see :class:`.core.GraphCache`).

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
    #: forked helper holding the same model, data and parameters (see
    #: :func:`.replay.replay`); None = both passes here, one after the other.
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
        u_norm = norm(u)
        if u_norm == 0:
            return np.zeros(n), [np.zeros(p.shape, np.float32) for p in sg.params]
        eps = self.rel_step * (norm([p.d for p in sg.params]) or 1.0) / u_norm
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


def straight_through_layers(model) -> List[tuple]:
    """``[(layer name, function type), ...]`` of the :data:`STRAIGHT_THROUGH` layers on the
    way to ``model``'s loss, in graph order (each once).
    """
    found: List[tuple] = []

    def visit(f):
        kind = f.info.type_name
        if kind in STRAIGHT_THROUGH and (f.name, kind) not in found:
            found.append((f.name, kind))

    model.graph(2).loss.visit(visit)
    return found


def step_for(model, step: str) -> str:
    """The step a replay of ``model`` runs when ``step`` is asked: ``exact`` instead of ``fd``
    on a network with a straight-through layer nnabla differentiates twice (BinaryTanh, ...:
    only the exact step's products are those of the gradient the training used) whose every
    layer nnabla differentiates twice; else ``step``.
    """
    if step != "fd" or not any(STRAIGHT_THROUGH[k] for _, k in straight_through_layers(model)):
        return step
    try:  # a layer nnabla cannot differentiate twice (BinaryConnectAffine, ...) keeps fd
        GraphCache(model, fused=True)(2)
    except NotImplementedError:
        return step
    return "exact"


def make_replay_step(model, step: str = "exact", fd_rel_step: float = FD_REL_STEP):
    """The replay step ``step`` (one of :data:`REPLAY_STEPS`; :func:`step_for` decides) for
    ``model``.

    Raises:
        ValueError: unknown ``step``.

    """
    step = step_for(model, step)
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
