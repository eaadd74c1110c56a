"""Curvature of the replayed steps, and the learning rate that keeps the replay stable.

The final-parameters replay multiplies the query vector u by ``(I - eta_t (H_t + lambda I))``
once per step, where H_t is the Hessian of step t's mini-batch loss at ONE fixed parameter
point. Two things make that product expand u, and then the scores are noise:

- a mini-batch Hessian whose top eigenvalue puts ``eta * lambda_max`` near or past 2 (batch
  Hessians have larger top eigenvalues than the mean Hessian: the tail batches matter);
- negative curvature: with ``lambda_min < 0``, ``(1 + eta |lambda_min|)^T`` compounds over
  the T steps of the epoch.

:func:`measure` estimates both with a few Lanczos iterations on a few sampled mini-batches,
using the same fused double-backward graph as the replay (each iteration costs one replay
step). :func:`stable_lr` turns them into a rate. Everything here is arrays and callables; the
model object is the one :mod:`.core` describes.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import asdict, dataclass
from typing import Callable, ContextManager, Dict, List, Mapping, Optional

import numpy as np

from . import core, replay_steps

#: ``eta * lambda_max`` allowed for the sampled mini-batch Hessians. 2 is the edge of
#: stability for one step; the sampled batches and a few Lanczos steps under-estimate the
#: tail of the epoch's batches, hence the wide margin.
MAX_STEP_CURVATURE = 0.25
#: ``T * eta * |lambda_min|`` allowed: (1 + eta |lambda_min|)^T stays below e^0.5 ~ 1.6.
MAX_NEGATIVE_DRIFT = 0.5
#: Sampled mini-batches and Lanczos iterations on each (cost: their product in replay steps).
N_BATCHES = 3
N_ITERATIONS = 6


@dataclass
class Curvature:
    """Measured extremes of the replayed steps' Hessians (units: loss per parameter^2).

    Attributes:
        lambda_max: the largest top eigenvalue over the sampled mini-batch Hessians.
        lambda_min: the smallest bottom eigenvalue over them (negative = negative curvature).
        batch_lambda_max / batch_lambda_min: per sampled batch.
        batches / iterations / batch_size: what was sampled.
        seconds: wall time of the measurement.

    """

    lambda_max: float
    lambda_min: float
    batch_lambda_max: List[float]
    batch_lambda_min: List[float]
    batches: int
    iterations: int
    batch_size: int
    seconds: float

    def to_dict(self) -> Dict:
        """YAML-safe dict, rounded for reading."""
        d = asdict(self)
        for k in ("lambda_max", "lambda_min", "seconds"):
            d[k] = float(f"{d[k]:.4g}")
        for k in ("batch_lambda_max", "batch_lambda_min"):
            d[k] = [float(f"{x:.4g}") for x in d[k]]
        return d


def lanczos_extremes(
    matvec: Callable[[np.ndarray], np.ndarray], dim: int, iterations: int, rng
) -> tuple[float, float]:
    """Extreme eigenvalue estimates of a symmetric operator by Lanczos.

    Args:
        matvec: ``v -> A v`` for float64 vectors of length ``dim``.
        dim: the operator's size.
        iterations: k, the Krylov dimension (k matrix-vector products).
        rng: ``numpy.random.RandomState`` for the start vector (one draw of ``dim`` standard
            normals), or that start vector itself, float64 (dim,).

    Returns:
        ``(largest, smallest)`` Ritz values: inner estimates, ``smallest >= lambda_min(A)`` and
        ``largest <= lambda_max(A)``, exact when k >= dim.

    """
    k = max(1, min(iterations, dim))
    basis = np.zeros((k, dim), dtype=np.float64)
    alpha, beta = np.zeros(k), np.zeros(k)
    q = np.array(rng, dtype=np.float64) if isinstance(rng, np.ndarray) else rng.standard_normal(dim)
    q /= np.linalg.norm(q)
    used = k
    for j in range(k):
        basis[j] = q
        w = np.asarray(matvec(q), dtype=np.float64)
        alpha[j] = q @ w
        # Full re-orthogonalization (twice) keeps the few Ritz values honest.
        for _ in range(2):
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta[j] = np.linalg.norm(w)
        if j + 1 == k or beta[j] <= 1e-10 * max(1.0, abs(alpha[j])):
            used = j + 1
            break
        q = w / beta[j]
    tri = np.diag(alpha[:used])
    if used > 1:
        off = beta[: used - 1]
        tri += np.diag(off, 1) + np.diag(off, -1)
    ritz = np.linalg.eigvalsh(tri)
    return float(ritz[-1]), float(ritz[0])


def batch_hvp(graphs, arrays: Mapping[str, np.ndarray], index: np.ndarray):
    """``v -> H v`` (flat float64) for the mean loss of the samples ``index``.

    H is the Hessian of ``1/|S| sum_{i in S} l_i`` at the model's current parameters, computed
    by the replay's fused graph (one forward + one backward per product) when ``graphs`` is a
    fused :class:`core.GraphCache`, or by central differences of two gradients when it is a
    :class:`replay_steps.FiniteDifferenceStep` (first derivatives only, see :func:`measure`).
    """
    if isinstance(graphs, replay_steps.FiniteDifferenceStep):
        return _fd_hvp(graphs, arrays, index)
    sg = graphs(len(index))
    sg.feed(arrays, index, np.full(len(index), 1.0 / len(index), dtype=np.float32))
    shapes = [tuple(p.shape) for p in sg.params]
    sizes = [int(np.prod(s)) for s in shapes]
    splits = np.cumsum(sizes)[:-1]

    def matvec(v: np.ndarray) -> np.ndarray:
        for var, part, shape in zip(sg.u, np.split(v, splits), shapes):
            var.d = part.reshape(shape).astype(np.float32)
        sg.score.forward(clear_no_need_grad=True)
        sg.zero_grads()
        sg.score.backward(clear_buffer=True)
        return np.concatenate([np.asarray(p.g, dtype=np.float64).ravel() for p in sg.params])

    return matvec, int(sum(sizes))


def measure(
    model,
    arrays: Mapping[str, np.ndarray],
    batch_size: int,
    seed: int = 0,
    batches: int = N_BATCHES,
    iterations: int = N_ITERATIONS,
    graphs: Optional[core.GraphCache] = None,
    helper: Optional[Callable[[Callable], ContextManager]] = None,
) -> Curvature:
    """Estimate the extreme eigenvalues of mini-batch Hessians at the model's parameters.

    Args:
        model: see :mod:`.core`.
        arrays: training data, column -> (N, ...).
        batch_size: B of the replayed epoch (the sampled batches have this size, or N if
            smaller).
        seed: seed of the sampled batches and the Lanczos start vectors.
        batches: how many random mini-batches (disjoint, without replacement).
        iterations: Lanczos iterations per batch; the cost is ``batches * iterations`` fused
            steps.
        graphs: a fused :class:`core.GraphCache` to reuse, or a
            :class:`replay_steps.FiniteDifferenceStep` (default: :func:`hvp_operator`'s choice).
        helper: optional ``helper(fn)`` context yielding an executor of ``fn`` in another
            process (:func:`.coworker.helper`): it measures the last ``batches // 2`` batches
            meanwhile, from batches and start vectors drawn here: the same result.

    Returns:
        A :class:`Curvature`; the Hessian excludes weight decay (add lambda to both extremes).

    """
    start = time.perf_counter()
    n = len(next(iter(arrays.values())))
    b = min(batch_size, n)
    graphs = graphs or hvp_operator(model, b)[0]
    rng = np.random.RandomState(seed)
    perm = rng.permutation(n)
    count = max(1, min(batches, n // b))
    dim = int(sum(v.size for v in model.get_params().values()))
    starts = [rng.standard_normal(dim) for _ in range(count)]  # lanczos_extremes' draws

    def extremes(ks):
        out = []
        for k in ks:
            matvec, size = batch_hvp(graphs, arrays, perm[k * b : (k + 1) * b])
            out.append(lanczos_extremes(matvec, size, iterations, starts[k]))
        return out

    pairs = _split(extremes, count, helper)
    highs, lows = [hi for hi, _ in pairs], [lo for _, lo in pairs]
    return Curvature(
        lambda_max=max(highs),
        lambda_min=min(lows),
        batch_lambda_max=highs,
        batch_lambda_min=lows,
        batches=count,
        iterations=iterations,
        batch_size=b,
        seconds=time.perf_counter() - start,
    )


def _split(extremes: Callable[[List[int]], List], count: int, helper) -> List:
    """``extremes(range(count))``, its last ``count // 2`` batches in ``helper``'s process
    when there is one (see :func:`measure`).
    """
    there = list(range(count - count // 2, count)) if helper is not None else []
    here = [k for k in range(count) if k not in there]
    with helper(extremes) if there else contextlib.nullcontext() as other:
        if other is not None:
            other.submit(there)
        return extremes(here) + (other.result() if other is not None else [])


def _fd_hvp(step, arrays: Mapping[str, np.ndarray], index: np.ndarray):
    """:func:`batch_hvp` by the fd replay step's ``H u`` (two first-order passes)."""
    shapes = [tuple(p.shape) for p in step.graphs(len(index)).params]
    sizes = [int(np.prod(s)) for s in shapes]
    splits = np.cumsum(sizes)[:-1]

    def matvec(v: np.ndarray) -> np.ndarray:
        u = [
            part.reshape(shape).astype(np.float32)
            for part, shape in zip(np.split(v, splits), shapes)
        ]
        _, hu = step(arrays, index, u)
        return np.concatenate([np.asarray(h, dtype=np.float64).ravel() for h in hu])

    return matvec, int(sum(sizes))


def hvp_operator(model, batch_size: int):
    """What :func:`batch_hvp` multiplies with: the fused double-backward graphs, or, for a
    network with a layer nnabla cannot differentiate twice (``DepthwiseConvolution``), the fd
    replay step, which needs first derivatives only. Returns ``(operator, "exact" | "fd",
    why)``, ``why`` naming nnabla's reason when the fused graph cannot be built.
    """
    graphs = core.GraphCache(model, fused=True)
    try:
        graphs(batch_size)
    except NotImplementedError as e:
        why = _once_only(model, str(e).strip().splitlines()[0])
        return replay_steps.FiniteDifferenceStep(model), "fd", why
    return graphs, "exact", ""


def _once_only(model, message: str) -> str:
    """The message nnabla gave (``mish_backward is not implemented.``) with the layers of
    ``model`` it is about named first: ``layer 'Mish_2' (Mish) has no second derivative in
    nnabla (mish_backward is not implemented)``; the message alone when none is found.
    """
    found = re.match(r"(\w+?)_backward\b", message)
    if not found:
        return message
    layers: List[str] = []

    def visit(f):
        kind = f.info.type_name
        if re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower() == found.group(1) and f.name not in layers:
            layers.append(f"'{f.name}' ({kind})")

    model.graph(2).loss.visit(visit)
    if not layers:
        return message
    named = ", ".join(layers[:3]) + (" and more" if len(layers) > 3 else "")
    return f"layer {named} has no second derivative in nnabla ({message.rstrip('.')})"


@dataclass
class LrChoice:
    """The stable learning rate and why (see :func:`stable_lr`).

    Attributes:
        lr: the largest rate that satisfies every bound, rounded down to two significant digits.
        limit: which bound decided it (a sentence for ``settings.yaml``).
        bounds: bound name -> the rate it allows.

    """

    lr: float
    limit: str
    bounds: Dict[str, float]


def _round_down(x: float) -> float:
    if not math.isfinite(x) or x <= 0:
        return x
    e = math.floor(math.log10(x)) - 1
    return math.floor(x / 10**e) * 10**e


def stable_lr(
    curvature: Curvature,
    steps: int,
    cap: float,
    weight_decay: float = 0.0,
    cap_words: str = "the console's own rate",
) -> LrChoice:
    """The replay rate: the largest eta that satisfies the bounds below.

    For the sampled batches:

    - ``eta * (lambda_max + lambda) <= MAX_STEP_CURVATURE`` (well below the edge at 2), and
    - ``steps * eta * |lambda_min + lambda| <= MAX_NEGATIVE_DRIFT`` when that is negative,

    and never above ``cap`` (the console's own rate where its training ended, the rate of its
    last update: the replay has no reason to go faster from there).

    Args:
        curvature: from :func:`measure`.
        steps: T, replay steps in the epoch.
        cap: upper bound (e.g. the solver's rate), > 0.
        weight_decay: lambda of the replayed epoch (shifts every eigenvalue by lambda).
        cap_words: what ``cap`` is, for the reason when it sets the rate (e.g. ``the
            console's final rate (Cosine from 0.1)``).

    """
    top = curvature.lambda_max + weight_decay
    bottom = curvature.lambda_min + weight_decay
    bounds = {"solver rate": float(cap)}
    if top > 0:
        bounds["step curvature"] = MAX_STEP_CURVATURE / top
    if bottom < 0:
        bounds["negative curvature"] = MAX_NEGATIVE_DRIFT / (steps * -bottom)
    name = min(bounds, key=bounds.get)
    why = {
        "solver rate": f"{cap_words} already satisfies both curvature bounds",
        "step curvature": f"lr * lambda_max <= {MAX_STEP_CURVATURE} for the sampled batches "
        f"(lambda_max = {top:.4g})",
        "negative curvature": f"T * lr * |lambda_min| <= {MAX_NEGATIVE_DRIFT} over T = {steps} "
        f"steps (lambda_min = {bottom:.4g})",
    }[name]
    lr = bounds[name] if name == "solver rate" else float(f"{_round_down(bounds[name]):.2g}")
    return LrChoice(
        lr=float(lr), limit=why, bounds={k: float(f"{v:.4g}") for k, v in bounds.items()}
    )


def breaks_rule(lr: float, curvature: Curvature, steps: int, weight_decay: float = 0.0) -> bool:
    """Whether ``lr`` exceeds what :func:`stable_lr` allows (ignoring the cap), with 5% slack."""
    choice = stable_lr(curvature, steps, cap=math.inf, weight_decay=weight_decay)
    return lr > 1.05 * choice.lr
