"""Layers that work across the samples of a mini-batch (axis 0), found in the definition.

The method scores each sample by its own loss's gradient (docs/method.md): a layer whose
output for one sample depends on the other samples of its mini-batch (a Mean over axis 0
subtracted from every row, measured: per-sample losses 46% off a batch-size-1 evaluation and
the replay's products 140% off, exit status 0) makes every score wrong, so such a layer is
refused here, before anything is computed. A Slice over the whole batch (``start 0, stop B``
on axis 0, as nnabla's saver writes it with the console's batch size B) keeps each sample; its
stop is widened so that the graphs the tool builds at other batch sizes keep every row too
(at B=24 the loss had 8 rows: nnabla's error, a traceback). What no parameter says is
caught later, once the rows are read, by :mod:`.rows` (a probe of two batches).
"""

from __future__ import annotations

from typing import Optional

from ..errors import NetworkDefinitionError

#: Functions whose axis parameter is not an axis they work across: the channels their
#: statistics or parameters follow (in inference mode, as the replay runs them, each sample
#: stays alone), or where a per-sample operand lines up with the input (BroadcastTo).
_NOT_ACROSS = {
    "BatchNormalization",
    "FusedBatchNormalization",
    "SyncBatchNormalization",
    "TensorNormalization",
    "BroadcastTo",
}
#: Reductions whose empty ``axes`` mean every axis, the batch axis included.
_REDUCTIONS = {"Sum", "Mean", "Max", "Min", "Prod"}
#: The largest stop nnabla's Slice takes (it clamps a stop beyond the axis to its length).
_WHOLE = 2**31 - 1


def _param(f):
    """The function's parameter message as nnabla's loader reads it (``AffineParameter`` of
    an Affine, unset fields at their default 0), or None for a function without one.
    """
    for fd in f.DESCRIPTOR.fields:  # e.g. kl_multinomial_param of type KLMultinomialParameter
        if fd.name.endswith("_param") and fd.message_type.name == f.type + "Parameter":
            return getattr(f, fd.name)
    return None


def _mixing(f, ndim: int) -> Optional[str]:
    """Why function ``f`` (first input of rank ``ndim``, holding the batch on axis 0) works
    across axis 0, or None if it does not.
    """
    p = _param(f)
    fields = p.DESCRIPTOR.fields_by_name if p is not None else {}
    if f.type == "Transpose":
        axes = list(p.axes)
        return f"moves axis {axes[0]} to the front" if axes and axes[0] != 0 else None
    if "base_axis" in fields and p.base_axis == 0:
        return "has base_axis 0 (it takes the batch axis as one of its inputs' axes)"
    if "batch_axis" in fields and 0 not in list(p.batch_axis):
        return f"has batch_axis {list(p.batch_axis)}, not 0"
    if f.type in _NOT_ACROSS or p is None:
        return None
    if f.type in _REDUCTIONS and not list(p.axes):
        return "reduces over every axis"
    axes = list(p.axes) if "axes" in fields else [p.axis] if "axis" in fields else []
    if any(a % max(ndim, 1) == 0 for a in axes):
        return "works across axis 0 (the mini-batch)"
    return None


def _from_parameters(net) -> set:
    """Variables computed from parameters alone (a weight normalized before its Affine): their
    axis 0 is no batch.
    """
    found = {v.name for v in net.variable if v.type == "Parameter"}
    grew = True
    while grew:
        grew = False
        for f in net.function:
            if f.input and all(i in found for i in f.input) and not set(f.output) <= found:
                found.update(f.output)
                grew = True
    return found


def _widen_slice(f, shapes, where: str, net_name: str) -> None:
    """A Slice over the whole batch keeps every row at any batch size; one that picks some
    rows of the batch is refused.
    """
    p = f.slice_param
    shape = shapes.get(f.input[0], ())
    if len(p.start) != len(shape) or not shape:
        return
    step = p.step[0] if len(p.step) else 1
    if p.start[0] == 0 and step == 1 and p.stop[0] >= shape[0]:
        p.stop[0] = _WHOLE
        return
    raise NetworkDefinitionError(
        f"{where}: function '{f.name}' (Slice) of network '{net_name}' picks rows "
        f"{p.start[0]}:{p.stop[0]}:{step} of the mini-batch (axis 0 of {shape}), so a "
        "sample's loss depends on its place in the batch; slice the other axes only and "
        "train again"
    )


def check_batch_axis(net, where: str) -> None:
    """Refuse a function of ``net`` that works across the samples of a mini-batch; widen a
    Slice over the whole batch (in place).

    Raises:
        NetworkDefinitionError: one line naming the function and the fix.

    """
    shapes = {v.name: tuple(v.shape.dim) for v in net.variable}
    weights = _from_parameters(net)
    for f in net.function:
        if not f.input or f.input[0] in weights:
            continue
        if f.type == "Slice":
            _widen_slice(f, shapes, where, net.name)
            continue
        why = _mixing(f, len(shapes.get(f.input[0], ())))
        if why:
            raise NetworkDefinitionError(
                f"{where}: function '{f.name}' ({f.type}) of network '{net.name}' {why}, so "
                "each sample's output depends on the other samples of its mini-batch, which "
                "per-sample influence cannot score; make the layer work on each sample (axes "
                "without 0) and train again"
            )
