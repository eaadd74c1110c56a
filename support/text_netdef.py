"""Write console-style text classifiers (``net.nntxt``): word indices through an ``Embed``
layer, then a mean, an Affine, or an LSTM, and the networks' float64 forward.

The console trains text from a dataset CSV whose columns ``x__0 .. x__{L-1}`` hold the word
indices of each sample (what its Simple Text Classification plugin writes: 0 ends the text,
1 stands for a word outside the dictionary), or from a per-sample CSV file of L indices. The
``Embed`` layer (parameter ``Embed/embed/W``, one row of E values per word of a V-word
dictionary) turns each index into its row. The networks, for L indices x per sample:

- ``head="mean"``: ``scores = Affine(mean_t W[x_t])``;
- ``head="affine"``: ``scores = Affine(W[x_1], ..., W[x_L])`` (the L rows side by side);
- ``head="lstm"``: an LSTM over the L rows, ``scores = Affine(h_L)``, built from the console's
  basic layers inside a ``RecurrentInput`` loop (the loop's layers carry ``repeat_id``, two
  ``Delay`` layers keep the state h and the cell c, each first filled by a Constant generator),
  saved unexpanded as the console saves loops (``embed_in_loop``: the Embed a layer of the
  loop, one word per step); with i, f, o, g the four gates' Affines over
  ``[W[x_t], h_{t-1}]``::

      c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g);  h_t = sigmoid(o) * tanh(c_t)

Each ends in SoftmaxCrossEntropy on C classes. Parameters: ``Embed/embed/W`` (V, E); for
``lstm`` the gates ``Affine`` (i), ``Affine_2`` (f), ``Affine_3`` (o), ``Affine_4`` (g), each
W (E + H, H) and b (H,), and the head ``Affine_5``; otherwise the head ``Affine``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from support.loops_netdef import _affine, _function, _variable, add_optimizer
from support.netdef import TrainingSpec

#: The heads this writer knows.
TEXT_HEADS = ("mean", "affine", "lstm")
#: The LSTM's gates: (Affine, activation layer, its type).
_GATES = (("Affine", "Sigmoid", "Sigmoid"), ("Affine_2", "Sigmoid_2", "Sigmoid"),
          ("Affine_3", "Sigmoid_3", "Sigmoid"), ("Affine_4", "Tanh", "Tanh"))  # fmt: skip


@dataclass
class TextSpec(TrainingSpec):
    """What to write.

    Attributes:
        head: a key of :data:`TEXT_HEADS`.
        input_shape: (L,) word indices per sample (columns ``x__0..``), or (L, 1) from
            per-sample CSV files (``mean`` and ``affine`` only).
        vocab: V, the rows of ``Embed/embed/W`` (word indices 0..V-1).
        embed: E, the values per word.
        hidden: H, the LSTM's state width.
        n_classes: C; the label column holds 0..C-1.
        embed_in_loop: ``lstm`` only: the RecurrentInput splits the (L,) indices and the Embed
            is a layer of the loop (its weight taken once per step), instead of an Embed of
            the whole text before the loop.
        train_csv / val_csv, batch_size, lr, solver (``Sgd`` or ``Adam``), max_epoch,
            iter_per_epoch, seed: as in :class:`support.loops_netdef.LoopSpec`.

    """

    head: str = "mean"
    input_shape: Tuple[int, ...] = (12,)
    vocab: int = 50
    embed: int = 8
    hidden: int = 6
    n_classes: int = 3
    embed_in_loop: bool = False


def text_parameters(spec: TextSpec) -> List[str]:
    """The trained parameters' names, as the optimizer lists them."""
    affines = [a for a, _, _ in _GATES] + ["Affine_5"] if spec.head == "lstm" else ["Affine"]
    return ["Embed/embed/W"] + [f"{a}/affine/{p}" for a in affines for p in "Wb"]


def _lstm_body(net, spec: TextSpec, rows: str) -> str:
    """RecurrentInput over the (B, L, E) rows (or, ``embed_in_loop``, over the (B, L) indices,
    each step's (B,) through the Embed) -> the LSTM step -> the last step's (B, 1, H) state;
    returns that variable's name.
    """
    (length,), e, h, loop = spec.input_shape, spec.embed, spec.hidden, "RecurrentInput"
    _variable(net, loop, [-1] if spec.embed_in_loop else [-1, e], repeat=loop)
    for name in ("Delay_Initial", "Delay_2_Initial"):
        _variable(net, name, [-1, h])
    f = _function(net, loop, "RecurrentInput", [rows], loop)
    f.recurrent_param.axis, f.recurrent_param.repeat_id = 1, loop
    step = loop
    if spec.embed_in_loop:
        _variable(net, "Embed", [-1, e], repeat=loop)
        _function(net, "Embed", "Embed", [loop, "Embed/embed/W"], loop)
        step = "Embed"
    for name, state, initial in (("Delay", "Mul2_3", "Delay_Initial"),
                                 ("Delay_2", "Add2", "Delay_2_Initial")):  # fmt: skip
        _variable(net, name, [-1, h], repeat=loop)
        _function(net, name, "Delay", [state, initial], loop).recurrent_param.repeat_id = loop
    _variable(net, "Concatenate", [-1, e + h], repeat=loop)
    _function(net, "Concatenate", "Concatenate", [step, "Delay"], loop).concatenate_param.axis = 1
    for affine, act, kind in _GATES:
        _affine(net, affine, "Concatenate", [e + h, h], [h], loop)
        _variable(net, affine, [-1, h], repeat=loop)
        _variable(net, act, [-1, h], repeat=loop)
        _function(net, act, kind, [affine], loop)
    for name, kind, ins in (("Mul2", "Mul2", ["Sigmoid_2", "Delay_2"]),
                            ("Mul2_2", "Mul2", ["Sigmoid", "Tanh"]),
                            ("Add2", "Add2", ["Mul2", "Mul2_2"]),
                            ("Tanh_2", "Tanh", ["Add2"]),
                            ("Mul2_3", "Mul2", ["Sigmoid_3", "Tanh_2"])):  # fmt: skip
        _variable(net, name, [-1, h], repeat=loop)
        _function(net, name, kind, ins, loop)
    _variable(net, "RecurrentOutput", [-1, length, h])
    f = _function(net, "RecurrentOutput", "RecurrentOutput", ["Mul2_3"])
    f.recurrent_param.axis, f.recurrent_param.repeat_id = 1, loop
    f.recurrent_param.length = length
    _variable(net, "Slice", [-1, 1, h])
    f = _function(net, "Slice", "Slice", ["RecurrentOutput"])
    f.slice_param.start.extend([length - 1, 0])
    f.slice_param.stop.extend([length, h])
    f.slice_param.step.extend([1, 1])
    return "Slice"


def _head_input(net, spec: TextSpec) -> Tuple[str, int, str]:
    """Input -> Embed -> the part before the head: ``(its output, its values per sample,
    the head's name)``.
    """
    shape, e = list(spec.input_shape), int(spec.embed)
    _variable(net, "Input", [-1] + shape)
    _variable(net, "Embed/embed/W", [spec.vocab, e], "Parameter", init=("Normal", 1.0))
    if spec.head == "lstm" and spec.embed_in_loop:
        net.repeat_info.add().CopyFrom(_loop(shape[0]))
        return _lstm_body(net, spec, "Input"), int(spec.hidden), "Affine_5"
    _variable(net, "Embed", [-1] + shape + [e])
    _function(net, "Embed", "Embed", ["Input", "Embed/embed/W"])
    if spec.head == "affine":  # Affine takes the (L, E) rows side by side
        return "Embed", e * int(np.prod(shape)), "Affine"
    if spec.head == "mean":
        _variable(net, "Mean", [-1] + shape[1:] + [e])
        f = _function(net, "Mean", "Mean", ["Embed"])
        f.mean_param.axes.append(1)
        f.mean_param.keep_dims = False
        return "Mean", e * int(np.prod(shape[1:])), "Affine"
    net.repeat_info.add().CopyFrom(_loop(shape[0]))
    return _lstm_body(net, spec, "Embed"), int(spec.hidden), "Affine_5"


def _loop(times: int):
    """The ``RecurrentInput`` loop's ``repeat_info``: ``times`` steps."""
    from nnabla.utils import nnabla_pb2

    return nnabla_pb2.RepeatInfo(id="RecurrentInput", times=times)


def _network(proto, name: str, spec: TextSpec, runtime: bool) -> str:
    """One network (``Main``, ``MainValidation`` or ``MainRuntime``); returns its output: the
    loss, or the runtime's Softmax.
    """
    net = proto.network.add()
    net.name, net.batch_size = name, spec.batch_size
    last, width, head = _head_input(net, spec)
    c = spec.n_classes
    _affine(net, head, last, [width, c], [c])
    _variable(net, head, [-1, c])
    if runtime:
        _variable(net, "Softmax", [-1, c])
        _function(net, "Softmax", "Softmax", [head]).softmax_param.axis = 1
        return "Softmax"
    _variable(net, "SoftmaxCrossEntropy_T", [-1, 1])
    _variable(net, "SoftmaxCrossEntropy", [-1, 1])
    f = _function(net, "SoftmaxCrossEntropy", "SoftmaxCrossEntropy",
                  [head, "SoftmaxCrossEntropy_T"])  # fmt: skip
    f.softmax_cross_entropy_param.axis = 1
    return "SoftmaxCrossEntropy"


def _owner_inputs(owner, spec: TextSpec, label: bool = True) -> None:
    """The data variables (x, and y for a loss) and, for the LSTM, the Delays' generators."""
    pairs = (("Input", "x"), ("SoftmaxCrossEntropy_T", "y")) if label else (("Input", "x"),)
    for var, column in pairs:
        dv = owner.data_variable.add()
        dv.variable_name, dv.data_name = var, column
    if spec.head == "lstm":
        for name in ("Delay_Initial", "Delay_2_Initial"):
            g = owner.generator_variable.add()
            g.variable_name, g.type, g.multiplier = name, "Constant", 0.0


def _optimizer_and_monitors(proto, spec: TextSpec) -> None:
    opt = add_optimizer(proto, spec.solver, spec.lr)
    _owner_inputs(opt, spec)
    opt.loss_variable.add().variable_name = "SoftmaxCrossEntropy"
    for name in text_parameters(spec):
        pv = opt.parameter_variable.add()
        pv.variable_name, pv.learning_rate_multiplier = name, 1.0
    for name, dataset in (("train_error", "Training"), ("valid_error", "Validation")):
        m = proto.monitor.add()
        m.name, m.network_name = name, "MainValidation"
        m.dataset_name.append(dataset)
        _owner_inputs(m, spec)
        mv = m.monitor_variable.add()
        mv.type, mv.variable_name = "Error", "SoftmaxCrossEntropy"


def text_proto(spec: TextSpec):
    """The whole definition as an ``NNablaProtoBuf`` message (see the module docstring)."""
    from nnabla.utils import nnabla_pb2

    if spec.head not in TEXT_HEADS or (spec.head == "lstm" and len(spec.input_shape) != 1):
        raise ValueError(f"unknown head {spec.head!r}, or an LSTM over {spec.input_shape}")
    proto = nnabla_pb2.NNablaProtoBuf()
    ctx = proto.global_config.default_context
    ctx.backends.append("cpu:float")
    ctx.array_class = "CpuCachedArray"
    tc = proto.training_config
    tc.max_epoch, tc.iter_per_epoch, tc.save_best = spec.max_epoch, spec.iter_per_epoch, False
    _network(proto, "Main", spec, runtime=False)
    _network(proto, "MainValidation", spec, runtime=False)
    output = _network(proto, "MainRuntime", spec, runtime=True)
    for name, uri, shuffle in (("Training", spec.train_csv, True),
                               ("Validation", spec.val_csv, False)):  # fmt: skip
        d = proto.dataset.add()
        d.name, d.uri, d.shuffle, d.batch_size = name, uri, shuffle, spec.batch_size
        d.no_image_normalization = False
    _optimizer_and_monitors(proto, spec)
    ex = proto.executor.add()
    ex.name, ex.network_name, ex.num_evaluations = "Executor", "MainRuntime", 1
    ex.repeat_evaluation_type, ex.need_back_propagation = "mean", False
    _owner_inputs(ex, spec, label=False)
    ov = ex.output_variable.add()
    ov.variable_name, ov.data_name = output, "y'"
    for name in text_parameters(spec):
        ex.parameter_variable.add().variable_name = name
    return proto


def write_text_nntxt(spec: TextSpec, path: str) -> str:
    """Write ``spec`` as a console-style ``.nntxt`` at ``path``; returns ``path``."""
    from google.protobuf import text_format

    with open(path, "w") as f:
        f.write(text_format.MessageToString(text_proto(spec)))
    return path


def text_float64(values: Dict[str, np.ndarray], x, y, head: str):
    """A text network's per-sample losses and logits in float64, computed here without nnabla.

    Args:
        values: parameter name -> array (:func:`text_parameters`).
        x: (N, L) or (N, L, 1) word indices (whole numbers in 0..V-1).
        y: (N, 1) labels.
        head: ``mean``, ``affine`` or ``lstm``.

    Returns:
        ``(losses (N,), logits (N, C))``.

    """
    p = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    rows = p["Embed/embed/W"][np.asarray(x).astype(np.int64).reshape(len(x), -1)]  # (N, L, E)
    if head == "mean":
        z = rows.mean(axis=1) @ p["Affine/affine/W"] + p["Affine/affine/b"]
    elif head == "affine":
        z = rows.reshape(len(x), -1) @ p["Affine/affine/W"] + p["Affine/affine/b"]
    else:
        h = np.zeros((len(x), p["Affine/affine/b"].shape[0]))
        c = np.zeros_like(h)

        def gate(name, xh):
            return xh @ p[f"{name}/affine/W"] + p[f"{name}/affine/b"]

        for t in range(rows.shape[1]):
            xh = np.concatenate([rows[:, t], h], axis=1)
            i, f, o = (1 / (1 + np.exp(-gate(a, xh))) for a in ("Affine", "Affine_2", "Affine_3"))
            c = f * c + i * np.tanh(gate("Affine_4", xh))
            h = o * np.tanh(c)
        z = h @ p["Affine_5/affine/W"] + p["Affine_5/affine/b"]
    y = np.asarray(y).astype(np.int64).ravel()
    top = z.max(axis=1)
    lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    return lse - z[np.arange(len(z)), y], z
