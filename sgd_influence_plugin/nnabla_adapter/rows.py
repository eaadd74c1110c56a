"""Every row's loss its own: the layer of a network that mixes the rows of a batch, if any.

The replay differentiates each sample's loss on its own (``w.g[i] = <u, grad l_i>``, the
fd step's per-row loss differences), which is right only when row i's loss depends on row i
alone. A layer that works along the batch axis (a Softmax, Sum, Mean or Max over axis 0, a
Reshape or Transpose that moves the batch into another axis) breaks that: nnabla trains it,
and the replay would give every row the products of a loss that is not its own, with no
error (a Softmax over axis 0 put the per-row products off by 60%, a subtracted batch mean by
10 times). BatchNormalization is such a layer in training mode; the replay runs it in
inference mode (:mod:`.replay_network`), so it passes.

:func:`check_rows_independent` finds such a layer by running the loss graph on two batches
of two rows that share their first row: every function's output for that row must be the
same in both. It is the second of two guards: :mod:`.batch_axis` refuses, from the
definition alone and before any row is read, the layers whose parameters name the batch
axis; this probe, once the rows are read, catches what no parameter says (a layer whose
behaviour, not its axis, mixes the rows).
"""

from __future__ import annotations

from typing import List, Mapping, Optional, Tuple

import numpy as np

from ..errors import NetworkDefinitionError


def _other_rows(arrays: Mapping[str, np.ndarray]) -> Optional[Tuple[int, int]]:
    """Two rows after the first that differ in some column (the probe's companions), or None."""
    n = len(next(iter(arrays.values())))
    for c in range(2, min(n, 64)):
        if any(not np.array_equal(a[1], a[c]) for a in arrays.values()):
            return 1, c
    return None


def _outputs_of_row0(graph, arrays, rows) -> List[Tuple[object, List[np.ndarray]]]:
    """``[(function, [its outputs for row 0]), ...]`` in forward order, rows ``rows`` fed."""
    for col, var in graph.inputs.items():
        var.d = arrays[col][np.asarray(rows)]
    graph.loss.forward(clear_buffer=False, clear_no_need_grad=False)
    found = []

    def visit(f):
        outs = [np.array(o.d, dtype=np.float64, copy=True) for o in f.outputs]
        found.append((f, [o[:1] if o.ndim and o.shape[0] == 2 else o for o in outs]))

    graph.loss.visit(visit)
    return found


def _same(x: np.ndarray, y: np.ndarray) -> bool:
    """Equal up to float32 rounding (NaN equal to NaN: a value no probe row decides)."""
    finite = np.abs(x[np.isfinite(x)])
    scale = float(finite.max()) if finite.size else 0.0
    return bool(np.allclose(x, y, rtol=1e-4, atol=1e-6 * (scale + 1), equal_nan=True))


def mixing_layer(model, arrays: Mapping[str, np.ndarray]) -> Optional[Tuple[str, str]]:
    """``(layer name, function type)`` of the first layer on the way to ``model``'s loss
    whose output for a row changes when another row of its batch changes; None when there
    is none (or when the data has no two different rows after the first to probe with).
    """
    others = _other_rows(arrays)
    if others is None:
        return None
    graph = model.graph(2)
    first = _outputs_of_row0(graph, arrays, (0, others[0]))
    second = _outputs_of_row0(graph, arrays, (0, others[1]))
    for (f, a), (_, b) in zip(first, second):
        for x, y in zip(a, b):
            if x.shape != y.shape or not _same(x, y):
                return f.name, f.info.type_name
    return None


def check_rows_independent(model, arrays: Mapping[str, np.ndarray], where: str) -> None:
    """Refuse a network whose per-row loss depends on the other rows of its batch.

    Args:
        model: the loaded :class:`~.model.NnablaModel`.
        arrays: the decoded training rows (column -> (N, ...)), checked already.
        where: the file named in the message.

    Raises:
        NetworkDefinitionError: one line naming the layer and the fix.

    """
    found = mixing_layer(model, arrays)
    if found is None:
        return
    name, kind = found
    raise NetworkDefinitionError(
        f"{where}: layer '{name}' ({kind}) of network '{model.info.network}' mixes the rows of "
        "a batch (a sample's output there changes with the other samples beside it), so no "
        "sample has a loss of its own to compute influence from; make the layer work on each "
        "sample alone (an axis other than the batch axis 0) and train again"
    )
