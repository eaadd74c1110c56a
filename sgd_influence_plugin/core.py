"""SGD-influence's arrays and graphs: plain SGD, per-sample losses and the validation gradient.

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

The backward replay builds on this module and, like it, imports nothing else of the project:
one replay step (exact or finite differences) is :mod:`.replay_steps`, the replay's loop over
the epoch (Algorithm 2) :mod:`.replay`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, List, Mapping, Optional, Sequence

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


#: Layers whose gradient graph (``nn.grad``, which the exact replay step, the curvature and
#: the cross-fitted replay differentiate) nnabla 1.39 builds wrong or not at all, while their
#: plain backward (SGD, the fd step) is right: type -> what goes wrong. Measured: through a
#: Tile, ``nn.grad`` gives the parameters before it a zero gradient (the exact step's products
#: were 30% off a batch-size-1 backward loop, exit status 0).
NO_GRADIENT_GRAPH = {
    "Tile": "nnabla's gradient graph of Tile is zero",
    "TopKData": "nnabla's top_k_data_backward fails (TypeError)",
}


def gradient_graph(objective, params):
    """``nn.grad([objective], params)``: the gradients as a graph that can be differentiated.

    Raises:
        NotImplementedError: a layer of :data:`NO_GRADIENT_GRAPH` on the way to ``objective``
            (as nnabla raises for a layer it cannot differentiate twice), so callers fall
            back to first-order passes or say why in one line.

    """
    import nnabla as nn

    found = []
    objective.visit(lambda f: found.append(f.info.type_name))
    for kind in dict.fromkeys(found):
        if kind in NO_GRADIENT_GRAPH:
            raise NotImplementedError(f"{kind}: {NO_GRADIENT_GRAPH[kind]}")
    return nn.grad([objective], params)


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
                grads = gradient_graph(self.objective, self.params)
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
