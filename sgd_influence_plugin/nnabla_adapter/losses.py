"""What the training network's loss says about the task, and a numerically stable replay of it.

The console offers these losses (its *Loss* layers), each fed by the network's scores and a
target that comes from a dataset column:

- classification, C classes: ``SoftmaxCrossEntropy``, ``Softmax`` + ``CategoricalCrossEntropy``
  (scores (B, C), target a class index 0..C-1);
- binary classification: ``Sigmoid`` + ``BinaryCrossEntropy``, ``SigmoidCrossEntropy``
  (scores (B, 1), target 0 or 1): two classes;
- regression: ``SquaredError``, ``HuberLoss``, ``AbsoluteError``, ``EpsilonInsensitiveLoss``
  (target a number, or a vector of them);
- a vector target ``y__0..y__{C-1}`` compared with a ``Softmax`` over C classes:
  ``KLMultinomial(target, Softmax(z))`` or ``BinaryCrossEntropy(Softmax(z), target)``
  (:func:`one_hot_targets`). nnabla refuses such a vector for ``SoftmaxCrossEntropy`` and
  ``CategoricalCrossEntropy``. The model has C classes only when every row of the data is
  exactly one-hot, which the datasets decide (``one_hot.settle_one_hot``).

The target may be read through a Reshape (a per-sample CSV's (H, W) as (1, H, W)), and may be
the network's own input (an autoencoder's ``x``). A categorical loss with more than one label
per sample (a segmentation's label map) classifies pixels, not the sample: its labels are
checked (:func:`label_maps`), but the sample has no class.

:func:`stabilise` rewrites ``Sigmoid`` + ``BinaryCrossEntropy`` into ``SigmoidCrossEntropy`` and
``Softmax`` + ``CategoricalCrossEntropy`` into ``SoftmaxCrossEntropy`` on the same scores: the
same loss, but computed from the logits, so a saturated output (probability 0 or 1 in float32)
gives a finite loss and gradient instead of ``log(0)`` and a gradient of 1e38.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

from ..errors import NetworkDefinitionError

#: Categorical losses: function type -> its parameter message (holding ``axis``).
CATEGORICAL = {
    "SoftmaxCrossEntropy": "softmax_cross_entropy_param",
    "CategoricalCrossEntropy": "categorical_cross_entropy_param",
}
#: Binary losses: scores of one value per sample, target 0 or 1.
BINARY = ("BinaryCrossEntropy", "SigmoidCrossEntropy")
#: Regression losses: the target is a number (or a vector of numbers) per sample.
REGRESSION = ("SquaredError", "HuberLoss", "AbsoluteError", "EpsilonInsensitiveLoss")

#: Losses that compare a vector target with probabilities (:func:`one_hot_targets`).
PROBABILITY = ("KLMultinomial", "BinaryCrossEntropy")

#: Functions that pass their one input on in another shape: a target read through them (a
#: per-sample CSV's (H, W) reshaped to (1, H, W)) is still that dataset column.
_SHAPE_ONLY = ("Reshape", "Identity")

#: ``ModelInfo.task`` values.
CLASSIFICATION, REGRESSION_TASK, OTHER = "classification", "regression", "other"


def _target(f, inputs: Dict[str, str], producer: Dict) -> Optional[str]:
    """The dataset column that feeds loss function ``f``'s target (its second input, directly
    or through :data:`_SHAPE_ONLY` functions), or None.
    """
    name = f.input[1] if len(f.input) >= 2 else None
    for _ in range(len(producer) + 1):
        if name is None or name in inputs:
            break
        src = producer.get(name)
        name = src.input[0] if src is not None and src.type in _SHAPE_ONLY else None
    return inputs.get(name) if name is not None else None


def _per_sample(shape: Tuple[int, ...]) -> int:
    """Values per sample of a variable of ``shape`` (B, ...)."""
    return math.prod(shape[1:]) if shape else 0


def label_maps(net, inputs: Dict[str, str], var_shapes) -> Dict[str, int]:
    """``{column: C}`` for every column that feeds a categorical loss more than one label
    per sample (a segmentation's label map (B, 1, H, W) for scores (B, C, H, W) on axis 1):
    every value must be a class index 0..C-1, but a sample has no one class.
    """
    producer = {o: g for g in net.function for o in g.output}
    maps: Dict[str, int] = {}
    for f in (g for g in net.function if g.type in CATEGORICAL):
        column = _target(f, inputs, producer)
        c = _classes(f, var_shapes.get(f.input[0], ()))
        if column is not None and c and _per_sample(var_shapes.get(f.input[1], ())) > 1:
            maps[column] = min(c, maps.get(column, c))
    return maps


def _classes(f, shape: Tuple[int, ...]) -> int:
    """Classes of a classification loss with scores of ``shape`` (B, ...); 0 = not a classifier."""
    if f.type in CATEGORICAL:
        axis = _axis(f, CATEGORICAL[f.type], len(shape) - 1)
        return int(shape[axis]) if 0 < axis < len(shape) and shape[axis] > 1 else 0
    if f.type in BINARY:  # one score per sample; a (B, K > 1) output is K separate labels
        return 2 if math.prod(shape[1:]) == 1 else 0
    return 0


def understand(net, inputs: Dict[str, str], var_shapes) -> Tuple[str, Optional[str], Dict]:
    """``(task, target column, label classes)`` of the training network ``net``.

    Args:
        net: the training ``Network`` message.
        inputs: its data variable -> dataset column.
        var_shapes: variable name -> shape (with the batch axis).

    Returns:
        ``task``: :data:`CLASSIFICATION` when every loss is a classification loss on one
        target column with one class per sample, :data:`REGRESSION_TASK` when every loss is a
        regression loss on one target column, else :data:`OTHER`; the one column every loss
        compares with (an ``OTHER`` one's too, e.g. a label map), or None; and ``{column: C}``
        for every column that feeds a classification loss one label per sample (C = 2 for a
        binary loss), whose labels must be whole numbers 0..C-1 (a label map's are in
        :func:`label_maps`).

    """
    producer = {o: g for g in net.function for o in g.output}
    classes: Dict[str, int] = {}
    kinds: List[str] = []
    targets: List[Optional[str]] = []
    maps = label_maps(net, inputs, var_shapes)
    for f in net.function:
        if f.type in CATEGORICAL or f.type in BINARY:
            column = _target(f, inputs, producer)
            c = _classes(f, var_shapes.get(f.input[0], ()))
            one = column is not None and c and column not in maps
            if one:
                classes[column] = min(c, classes.get(column, c))
            kinds.append(CLASSIFICATION if one else OTHER)
            targets.append(column)
        elif f.type in REGRESSION:
            kinds.append(REGRESSION_TASK)
            targets.append(_target(f, inputs, producer))
    target = targets[0] if targets and len(set(targets)) == 1 else None
    if len(set(kinds)) == 1 and target is not None:
        return kinds[0], target, classes
    return OTHER, target, classes


def class_scores(net, inputs: Dict[str, str], var_shapes) -> List[str]:
    """The scores variables (first inputs, e.g. the Softmax's output ``(B, C)``) of the
    classification losses of ``net`` whose target is a dataset column, then the Softmax
    outputs of :func:`one_hot_targets`, in network order: what the executor's output must be
    computed from to give the model's class.
    """
    producer = {o: g for g in net.function for o in g.output}
    maps = label_maps(net, inputs, var_shapes)
    scores = [f.input[0] for f in net.function
              if (f.type in CATEGORICAL or f.type in BINARY)
              and _target(f, inputs, producer) not in (None, *maps)
              and _classes(f, var_shapes.get(f.input[0], ()))]  # fmt: skip
    return scores + [v for v, _, _ in _one_hot_losses(net, inputs, var_shapes)]


def _one_hot_losses(net, inputs: Dict[str, str], var_shapes) -> List[Tuple[str, str, int]]:
    """``(Softmax output, target column, C)`` of each loss of :func:`one_hot_targets`."""
    producer = {o: f for f in net.function for o in f.output}
    found = []
    for f in net.function:
        if f.type not in PROBABILITY or len(f.input) < 2:
            continue
        target, probs = (f.input[0], f.input[1]) if f.type == "KLMultinomial" else f.input[1::-1]
        src, shape = producer.get(probs), var_shapes.get(probs, ())
        column, t_shape = inputs.get(target), var_shapes.get(target, ())
        if src is None or src.type != "Softmax" or column is None or len(shape) != 2:
            continue
        axis = _axis(src, "softmax_param", len(shape) - 1)
        if axis == 1 and shape[1] > 1 and tuple(t_shape) == tuple(shape):
            found.append((probs, column, int(shape[1])))
    return found


def check_class_targets(net, inputs: Dict[str, str], var_shapes, source: str) -> None:
    """A categorical loss takes a class index: one value per sample on its class axis.

    nnabla stops on any other target with an error the first time the network is built
    (``label_shape[axis] == 1``), so a definition that gives one a vector (``y__0..y__2``,
    one-hot) is refused here, before anything is read.

    Raises:
        NetworkDefinitionError: the first such loss, naming it, its target and the fix.

    """
    for f in net.function:
        if f.type not in CATEGORICAL or len(f.input) < 2:
            continue
        shape, target = var_shapes.get(f.input[0], ()), var_shapes.get(f.input[1], ())
        axis = _axis(f, CATEGORICAL[f.type], len(shape) - 1)
        if 0 <= axis < len(target) and target[axis] != 1:
            column = inputs.get(f.input[1], f.input[1])
            raise NetworkDefinitionError(
                f"{source}: {f.type} '{f.name}' takes a class index (one value per sample) "
                f"but its target '{column}' has {target[axis]} values; write the label as one "
                f"column of class indices 0..{max(int(shape[axis]) - 1, 0)}, or for one-hot "
                f"columns {column}__0.. use KLMultinomial on the Softmax's output"
            )


def one_hot_targets(net, inputs: Dict[str, str], var_shapes) -> Dict[str, int]:
    """``{column: C}`` for each dataset column whose vector ``(B, C)`` a loss compares with
    the probabilities of a ``Softmax`` over C > 1 classes (its last axis):
    ``KLMultinomial(column, Softmax(z))`` or ``BinaryCrossEntropy(Softmax(z), column)``.
    Such a column holds class labels one-hot when every row is (0/1 with one 1); soft or
    several-label rows make it a probability target without classes.
    """
    return {column: c for _, column, c in _one_hot_losses(net, inputs, var_shapes)}


def _axis(f, param: str, default: int) -> int:
    return getattr(f, param).axis if f.HasField(param) else default


def stabilise(net, var_shapes) -> List[str]:
    """Compute probability-based losses from the logits, in place (see the module docstring).

    ``BinaryCrossEntropy(Sigmoid(z), t)`` becomes ``SigmoidCrossEntropy(z, t)`` and
    ``CategoricalCrossEntropy(Softmax(z), t)`` (same axis) becomes ``SoftmaxCrossEntropy(z, t)``.
    The Sigmoid or Softmax itself stays for whatever else reads it. ``var_shapes``: variable
    name -> shape, for the default axis (the last).

    Returns:
        One note per rewritten loss, for the run's settings.

    """
    producer = {o: f for f in net.function for o in f.output}
    notes = []
    for f in net.function:
        if not f.input:
            continue
        src = producer.get(f.input[0])
        if src is None or not src.input:
            continue
        if f.type == "BinaryCrossEntropy" and src.type == "Sigmoid":
            f.type = "SigmoidCrossEntropy"
        elif f.type == "CategoricalCrossEntropy" and src.type == "Softmax":
            last = len(var_shapes.get(f.input[0], (0, 0))) - 1
            axis = _axis(f, "categorical_cross_entropy_param", last)
            if _axis(src, "softmax_param", last) != axis:
                continue
            f.type = "SoftmaxCrossEntropy"
            f.ClearField("categorical_cross_entropy_param")
            f.softmax_cross_entropy_param.axis = axis
        else:
            continue
        f.input[0] = src.input[0]
        notes.append(f"{f.name}: computed as {f.type} on the {src.type}'s input (the same loss)")
    return notes
