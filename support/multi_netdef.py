"""Console results with vector targets, several inputs or several losses: their datasets (in
the console's CSV format) and their ``net.nntxt``.

Datasets (:func:`write_multi`), N rows of 4 standardised features ``x__0..x__3`` and, by
``kind``:

- ``onehot``: ``y__0..y__2``, the one-hot vector of a class 0..2;
- ``soft``: ``y__0..y__2``, a probability vector (label smoothing 0.3 of the class, the rest
  spread at random);
- ``multilabel``: ``y__0..y__2``, three independent 0/1 labels;
- ``vector``: ``y__0..y__2``, three real targets (a regression on a vector);
- ``two_inputs``: a second input ``x2__0..x2__2`` and ``y`` a class 0..2;
- ``two_losses``: ``y`` a class 0..2 and ``y2__0..y2__2`` three real targets.

``label`` renames the target column (``t`` instead of ``y``).

Networks (:class:`MultiSpec`, :func:`write_multi_nntxt`): ``x`` (and ``x2``, concatenated) ->
``Affine`` (16) -> ``ReLU`` -> ``Affine_2`` (K scores), then by ``head``:

- ``kl``: ``KLMultinomial(t, Softmax(z))`` (B, 1), the console's loss for a probability
  target (one-hot or soft): the cross-entropy minus the target's entropy;
- ``bce``: ``BinaryCrossEntropy(Sigmoid(z), t)`` (B, K): K separate binary labels;
- ``sigmoid_ce``: ``SigmoidCrossEntropy(z, t)`` (B, K): the same on the logits;
- ``softmax_bce``: ``BinaryCrossEntropy(Softmax(z), t)`` (B, K): a one-hot target compared
  value by value with the class probabilities;
- ``squared``: ``SquaredError(z, t)`` (B, K);
- ``ce``: ``SoftmaxCrossEntropy(z, y)`` (B, 1) on a class index;
- ``ce_squared``: ``ce`` plus ``SquaredError(Affine_3(h), y2)`` (B, 3), two loss variables.

The runtime network outputs ``y'``: Softmax(z) (``kl``, ``softmax_bce``, ``ce``), Sigmoid(z)
(``bce``, ``sigmoid_ce``) or z (``squared``); for ``ce_squared`` also
``y2'`` = Affine_3(h), after ``y'`` or (``regression_first``) before it.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from support.netdef import TrainingSpec, console_contents, write_in_child

#: dataset kind -> the head trained on it by default
KIND_HEADS = {"onehot": "kl", "soft": "kl", "multilabel": "bce", "vector": "squared",
              "two_inputs": "ce", "two_losses": "ce_squared"}  # fmt: skip


def _targets(kind: str, x, rng):
    """The target columns' (header, values (N, K)) of ``kind`` for features x (N, 4)."""
    n = len(x)
    w = rng.randn(4, 3)
    z = x @ w + 0.5 * rng.randn(n, 3)
    cls = np.argmax(z, axis=1)
    if kind == "onehot":
        return [f"y__{k}" for k in range(3)], np.eye(3)[cls]
    if kind == "soft":
        spread = rng.dirichlet(np.ones(3), n) * 0.3
        return [f"y__{k}" for k in range(3)], np.round(np.eye(3)[cls] * 0.7 + spread, 4)
    if kind == "multilabel":
        return [f"y__{k}" for k in range(3)], (z > 0.3).astype(int)
    if kind == "vector":
        return [f"y__{k}" for k in range(3)], np.round(np.tanh(z), 4)
    if kind == "two_losses":
        reg = np.round(np.tanh(z * 0.7), 4)
        return ["y"] + [f"y2__{k}" for k in range(3)], np.column_stack([cls, reg])
    return ["y"], cls[:, None]


def write_multi(folder: str, n_train: int, n_val: int, kind: str, seed: int = 0,
                label: str = "y"):  # fmt: skip
    """Write ``train.csv`` and ``val.csv`` of ``kind`` (module docstring) into ``folder``.

    Returns:
        ``{"train", "val", "input_shape": (4,), "folder", "kind"}``.

    """
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    n = n_train + n_val
    x = np.round(rng.randn(n, 4), 4)
    header = [f"x__{k}" for k in range(4)]
    values = [x]
    if kind == "two_inputs":
        x2 = np.round(rng.randn(n, 3), 4)
        header += [f"x2__{k}" for k in range(3)]
        values.append(x2)
        x = x + 0.8 * np.pad(x2, ((0, 0), (0, 1)))
    names, target = _targets(kind, x, rng)
    header = [label + h[1:] if h.startswith("y") and not h.startswith("y2") else h
              for h in names] + header  # fmt: skip
    table = np.column_stack([target] + values)
    paths = {}
    for part, rows in (("train", table[:n_train]), ("val", table[n_train:])):
        paths[part] = os.path.join(folder, f"{part}.csv")
        with open(paths[part], "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows([[_cell(v) for v in r] for r in rows])
    return {**paths, "input_shape": (4,), "folder": folder, "kind": kind}


def _cell(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.4f}"


@dataclass
class MultiSpec(TrainingSpec):
    """What to write: ``head`` (module docstring), ``label`` (the target column's name),
    ``two_inputs`` (``x2`` of 3 values beside ``x``), ``regression_first`` (the executor's
    first output is the regression head's ``y2'``), and as :class:`support.netdef.NetSpec`:
    input_shape, train_csv / val_csv, batch_size, lr, solver (``Sgd`` or ``Adam``),
    max_epoch, iter_per_epoch, seed.
    """

    head: str = "kl"
    label: str = "y"
    two_inputs: bool = False
    regression_first: bool = False
    input_shape: Tuple[int, ...] = (4,)


def _net(spec: MultiSpec, b: int, runtime: bool):
    """``(inputs {name: Variable}, outputs {name: Variable})`` of one network."""
    import nnabla as nn
    import nnabla.functions as F
    import nnabla.parametric_functions as PF

    x = nn.Variable((b,) + tuple(spec.input_shape))
    inputs = {"x": x}
    h = x
    if spec.two_inputs:
        inputs["x2"] = nn.Variable((b, 3))
        h = F.concatenate(x, inputs["x2"], axis=1)
    h = F.relu(PF.affine(h, 16, name="Affine"))
    z = PF.affine(h, 3, name="Affine_2")
    if runtime:
        out = {"bce": F.sigmoid, "sigmoid_ce": F.sigmoid, "squared": lambda v: v}
        out = out.get(spec.head, F.softmax)
        outputs = {"y'": out(z)}
        if spec.head == "ce_squared":
            reg = {"y2'": PF.affine(h, 3, name="Affine_3")}
            outputs = {**reg, **outputs} if spec.regression_first else {**outputs, **reg}
        return inputs, outputs
    t = nn.Variable((b, 1) if spec.head.startswith("ce") else (b, 3))
    inputs[spec.label] = t
    if spec.head == "kl":
        return inputs, {"loss": F.kl_multinomial(t, F.softmax(z))}
    if spec.head == "bce":
        return inputs, {"loss": F.binary_cross_entropy(F.sigmoid(z), t)}
    if spec.head == "sigmoid_ce":
        return inputs, {"loss": F.sigmoid_cross_entropy(z, t)}
    if spec.head == "softmax_bce":
        return inputs, {"loss": F.binary_cross_entropy(F.softmax(z), t)}
    if spec.head == "squared":
        return inputs, {"loss": F.squared_error(z, t)}
    outputs = {"loss": F.softmax_cross_entropy(z, t)}
    if spec.head == "ce_squared":
        inputs["y2"] = nn.Variable((b, 3))
        outputs["loss2"] = F.squared_error(PF.affine(h, 3, name="Affine_3"), inputs["y2"])
    return inputs, outputs


def _write_in_this_process(spec: MultiSpec, path: str) -> None:
    import nnabla as nn
    import nnabla.solvers as S
    from nnabla.utils import save

    from support.netdef import _add_initializers

    nn.clear_parameters()
    nn.random.seed(spec.seed)
    b = spec.batch_size
    names, outputs = _net(spec, b, runtime=False)
    names_v, outputs_v = _net(spec, b, runtime=False)
    names_r, outputs_r = _net(spec, b, runtime=True)
    solver = S.Adam(spec.lr) if spec.solver == "Adam" else S.Sgd(spec.lr)
    solver.set_parameters(nn.get_parameters())
    executor = {"name": "Executor", "network": "MainRuntime", "data": list(names_r),
                "output": list(outputs_r)}  # fmt: skip
    nets = {"Main": (names, outputs), "MainValidation": (names_v, outputs_v),
            "MainRuntime": (names_r, outputs_r)}  # fmt: skip
    contents = console_contents(
        spec, solver, nets, {k: k for k in names}, list(names), executor, normalize=False
    )
    tmp = path + ".tmp.nntxt"
    save.save(tmp, contents)
    _add_initializers(tmp)
    os.replace(tmp, path)


def write_multi_nntxt(spec: MultiSpec, path: str) -> str:
    """Write ``spec`` as a console-style ``.nntxt`` at ``path`` (in a child process,
    :func:`support.netdef.write_in_child`); returns ``path``.
    """
    return write_in_child(spec, path)
