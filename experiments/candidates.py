"""A candidate that was measured but not kept: the query vector without its class-level part.

Candidate ``projected`` (issue 36, item 6): replay ``u' = u - D^T a`` instead of the
validation gradient ``u``, with ``D = [m_1 .. m_C]`` the mean training-loss gradient of each
class's rows at the final parameters and ``a`` the least-squares coefficients (float64), so
``u'`` is orthogonal to every class mean. It is measured here by wrapping
``core.validation_gradient_and_loss`` for the duration of one ``compute_influence`` call;
the package has only the targets of :mod:`sgd_influence_plugin.target`. Measured results and
why it was not kept: docs/method.md ("What a score estimates").
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import List, Mapping, Sequence

import numpy as np

from sgd_influence_plugin import core


def class_mean_gradients(
    model, arrays: Mapping[str, np.ndarray], label: str, n_classes: int, batch_size: int = 256
) -> List[List[np.ndarray]]:
    """Per class with rows: the mean training-loss gradient over its rows, float64 arrays in
    the graph's parameter order.
    """
    labels = np.rint(np.asarray(arrays[label]).reshape(-1)).astype(np.int64)
    graphs = core.GraphCache(model, fused=False)
    out = []
    for c in range(n_classes):
        rows = np.flatnonzero(labels == c)
        acc = None
        for start in range(0, len(rows), batch_size):
            idx = rows[start : start + batch_size]
            sg = graphs(len(idx))
            sg.feed(arrays, idx, np.full(len(idx), 1.0 / len(rows), dtype=np.float32))
            sg.objective.forward(clear_no_need_grad=True)
            sg.zero_grads()
            sg.objective.backward(clear_buffer=True)
            grads = [np.asarray(p.g, dtype=np.float64) for p in sg.params]
            acc = grads if acc is None else [a + g for a, g in zip(acc, grads)]
        if acc is not None:
            out.append(acc)
    return out


def project_out(u: Sequence[np.ndarray], directions, rcond: float = 1e-6) -> List[np.ndarray]:
    """``u`` minus its least-squares projection onto the span of ``directions`` (float32
    arrays shaped like ``u``; orthogonal to every direction).
    """
    flat = np.concatenate([np.ravel(x).astype(np.float64) for x in u])
    dirs = np.stack([np.concatenate([np.ravel(x) for x in d]) for d in directions])  # (K, P)
    coef = np.linalg.pinv(dirs @ dirs.T, rcond=rcond, hermitian=True) @ (dirs @ flat)
    rest, out, start = flat - coef @ dirs, [], 0
    for x in u:
        out.append(rest[start : start + np.size(x)].reshape(np.shape(x)).astype(np.float32))
        start += np.size(x)
    return out


@contextlib.contextmanager
def projected_query(model, train: Mapping[str, np.ndarray]):
    """Within the block, the replay's query vector is candidate ``projected``'s ``u'``."""
    original = core.validation_gradient_and_loss
    ((label, n_classes),) = model.info.label_classes.items()

    def wrapped(m, arrays, batch_size=256):
        u, loss = original(m, arrays, batch_size)
        means = class_mean_gradients(m, train, label, n_classes, batch_size)
        names = list(u.keys())
        return OrderedDict(zip(names, project_out([u[k] for k in names], means))), loss

    core.validation_gradient_and_loss = wrapped
    try:
        yield
    finally:
        core.validation_gradient_and_loss = original
