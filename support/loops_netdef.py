"""Write console-style networks with loops (``net.nntxt``): an Elman RNN built from the
console's ``RecurrentInput``, ``Delay`` and ``RecurrentOutput`` layers, or a layer repeated
between ``RepeatStart`` and ``RepeatEnd``.

The console saves such a network unexpanded: the functions inside the loop carry
``repeat_id``, the network a ``repeat_info`` (how many steps), ``RecurrentInput`` and
``RecurrentOutput`` a ``recurrent_param`` (the time axis), and the state's first value
(``Delay_Initial``) is no dataset column but a ``generator_variable`` (Constant 0) of the
optimizer, the monitors and the executor. nnabla's loader (``nnabla_cli train``) expands the
loop. ``parametric_functions`` cannot write these layers, so this module writes the protobuf
message itself, in the layout and with the names the console gives them.

The network, for an input x of shape (T, D) per sample (T steps of D values) and H hidden
units::

    h_0 = 0;  h_t = tanh(W [x_t, h_{t-1}] + b)  (t = 1..T);  scores = V h_T + c

with SoftmaxCrossEntropy on C classes (``head="softmax_ce"``) or Sigmoid + BinaryCrossEntropy
on one score (``head="sigmoid_bce"``). Parameters: ``Affine/affine/W`` (D + H, H),
``Affine/affine/b`` (H,), ``Affine_2/affine/W`` (H, K), ``Affine_2/affine/b`` (K,), K = C or 1.

The repeated network (``loop="repeat"``), for a table row x of D features::

    h_0 = Affine_0(x);  h_r = tanh(Affine_1[r](h_{r-1}))  (r = 0..R-1);  scores = Affine_2(h_R)

with weights of its own at every repeat: the definition names them
``Affine_1{RepeatStart}/affine/W``, the parameters file ``Affine_1[0]/affine/W``, ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from support.netdef import TrainingSpec

#: The loss heads this writer knows: head -> (loss layer, its output of the runtime network).
HEADS = {"softmax_ce": ("SoftmaxCrossEntropy", "Softmax"), "sigmoid_bce": (None, "Sigmoid")}


@dataclass
class LoopSpec(TrainingSpec):
    """What to write.

    Attributes:
        loop: ``recurrent`` (the Elman RNN) or ``repeat`` (the repeated layer).
        input_shape: (T, D) of one sample: T steps of D values (the time axis is axis 1 of the
            batch, as the console's ``RecurrentInput`` with ``axis: 1`` splits it); for
            ``repeat``, (D,).
        repeats: R, how often ``repeat`` repeats its layer.
        hidden: H, the state's width.
        n_classes: C; the label column holds 0..C-1 (2 for ``sigmoid_bce``).
        head: a key of :data:`HEADS`.
        train_csv / val_csv: dataset URIs written into the file.
        batch_size, lr, solver (``Sgd`` or ``Adam``), max_epoch, iter_per_epoch: as in
            :class:`support.netdef.NetSpec`.
        generator: the ``Delay_Initial`` generator's type (``Constant``, or ``Normal`` to
            write a random first state, which the replay cannot reproduce); ``recurrent``
            only.
        seed: unused (the network has no random layer); there so that
            :func:`support.results.train_on` takes this spec as a ``NetSpec``.

    """

    loop: str = "recurrent"
    input_shape: Tuple[int, ...] = (16, 1)
    repeats: int = 2
    hidden: int = 6
    n_classes: int = 2
    head: str = "softmax_ce"
    generator: str = "Constant"


def _variable(net, name, shape, kind="Buffer", repeat: Optional[str] = None, init=None):
    v = net.variable.add()
    v.name, v.type = name, kind
    v.shape.dim.extend(shape)
    if repeat:
        v.repeat_id.append(repeat)
    if init:
        v.initializer.type, v.initializer.multiplier = init
    return v


def _function(net, name, kind, inputs: Sequence[str], repeat: Optional[str] = None):
    f = net.function.add()
    f.name, f.type = name, kind
    f.input.extend(inputs)
    f.output.append(name)
    if repeat:
        f.repeat_id.append(repeat)
    return f


def _affine(net, name, x, w_shape, b_shape, repeat=None):
    """An Affine layer ``name`` on ``x`` with its two parameters (Glorot W, zero b)."""
    _variable(net, f"{name}/affine/W", w_shape, "Parameter", init=("NormalAffineGlorot", 1.0))
    _variable(net, f"{name}/affine/b", b_shape, "Parameter", init=("Constant", 0.0))
    f = _function(net, name, "Affine", [x, f"{name}/affine/W", f"{name}/affine/b"], repeat)
    f.affine_param.base_axis = 1


def _recurrent_body(net, spec: LoopSpec) -> str:
    """Input -> RecurrentInput -> [Concatenate(x_t, Delay) -> Affine -> Tanh] -> Slice of the
    last step; returns the name of the (B, 1, H) last state.
    """
    (t_len, d), h, loop = spec.input_shape, spec.hidden, "RecurrentInput"
    _variable(net, "Input", [-1, t_len, d])
    _variable(net, loop, [-1, d], repeat=loop)
    _variable(net, "Delay_Initial", [-1, h])
    for name, shape in (("Delay", [-1, h]), ("Concatenate", [-1, d + h]), ("Affine", [-1, h]),
                        ("Tanh", [-1, h])):  # fmt: skip
        _variable(net, name, shape, repeat=loop)
    _variable(net, "RecurrentOutput", [-1, t_len, h])
    _variable(net, "Slice", [-1, 1, h])
    f = _function(net, loop, "RecurrentInput", ["Input"], loop)
    f.recurrent_param.axis, f.recurrent_param.repeat_id = 1, loop
    f = _function(net, "Delay", "Delay", ["Tanh", "Delay_Initial"], loop)
    f.recurrent_param.repeat_id = loop
    _function(net, "Concatenate", "Concatenate", [loop, "Delay"], loop).concatenate_param.axis = 1
    _affine(net, "Affine", "Concatenate", [d + h, h], [h], loop)
    _function(net, "Tanh", "Tanh", ["Affine"], loop)
    f = _function(net, "RecurrentOutput", "RecurrentOutput", ["Tanh"])
    f.recurrent_param.axis, f.recurrent_param.repeat_id = 1, loop
    f.recurrent_param.length = t_len
    f = _function(net, "Slice", "Slice", ["RecurrentOutput"])
    f.slice_param.start.extend([t_len - 1, 0])
    f.slice_param.stop.extend([t_len, h])
    f.slice_param.step.extend([1, 1])
    return "Slice"


def _repeat_body(net, spec: LoopSpec) -> str:
    """Input -> Affine_0 -> RepeatStart -> [Affine_1{RepeatStart} -> Tanh] -> RepeatEnd;
    returns the name of the (B, H) last repeat's output.
    """
    (d,), h, loop = spec.input_shape, spec.hidden, "RepeatStart"
    _variable(net, "Input", [-1, d])
    _affine(net, "Affine_0", "Input", [d, h], [h])
    _variable(net, "Affine_0", [-1, h])
    for name in (loop, "Affine_1", "Tanh"):
        _variable(net, name, [-1, h], repeat=loop)
    _variable(net, "RepeatEnd", [-1, h])
    _function(net, loop, "RepeatStart", ["Affine_0", "Tanh"], loop).repeat_param.repeat_id = loop
    w, b = "Affine_1{RepeatStart}/affine/W", "Affine_1{RepeatStart}/affine/b"
    _variable(net, w, [h, h], "Parameter", loop, init=("NormalAffineGlorot", 1.0))
    _variable(net, b, [h], "Parameter", loop, init=("Constant", 0.0))
    _function(net, "Affine_1", "Affine", [loop, w, b], loop).affine_param.base_axis = 1
    _function(net, "Tanh", "Tanh", ["Affine_1"], loop)
    f = _function(net, "RepeatEnd", "RepeatEnd", ["Tanh"])
    f.repeat_param.repeat_id, f.repeat_param.times = loop, spec.repeats
    return "RepeatEnd"


def _network(proto, name: str, spec: LoopSpec, runtime: bool) -> List[str]:
    """One network (``Main``, ``MainValidation`` or ``MainRuntime``); returns its output
    variables: the loss, or the runtime output.
    """
    net = proto.network.add()
    net.name, net.batch_size = name, spec.batch_size
    info = net.repeat_info.add()
    if spec.loop == "recurrent":
        info.id, info.times = "RecurrentInput", spec.input_shape[0]
        last = _recurrent_body(net, spec)
    else:
        info.id, info.times = "RepeatStart", spec.repeats
        last = _repeat_body(net, spec)
    k = spec.n_classes if spec.head == "softmax_ce" else 1
    _affine(net, "Affine_2", last, [spec.hidden, k], [k])
    _variable(net, "Affine_2", [-1, k])
    loss, output = HEADS[spec.head]
    if runtime or loss is None:
        _variable(net, output, [-1, k])
        f = _function(net, output, output, ["Affine_2"])
        if output == "Softmax":
            f.softmax_param.axis = 1
        if runtime:
            return [output]
        loss, scores = "BinaryCrossEntropy", output
    else:
        scores = "Affine_2"
    _variable(net, f"{loss}_T", [-1, 1])
    _variable(net, loss, [-1, 1])
    f = _function(net, loss, loss, [scores, f"{loss}_T"])
    if loss == "SoftmaxCrossEntropy":
        f.softmax_cross_entropy_param.axis = 1
    return [loss]


def _generator(owner, spec: LoopSpec) -> None:
    if spec.loop != "recurrent":
        return
    g = owner.generator_variable.add()
    g.variable_name, g.type, g.multiplier = "Delay_Initial", spec.generator, 0.0


def _data(owner, loss: str) -> None:
    for var, column in (("Input", "x"), (f"{loss}_T", "y")):
        dv = owner.data_variable.add()
        dv.variable_name, dv.data_name = var, column


def add_optimizer(proto, solver: str, lr: float):
    """The console's optimizer message ``Optimizer`` of network ``Main`` on dataset
    ``Training``, added to ``proto``: ``Sgd`` at ``lr`` or ``Adam`` at alpha ``lr``, no
    schedule, no weight decay; returns it (its inputs, generators and loss are the caller's).
    """
    opt = proto.optimizer.add()
    opt.name, opt.network_name, opt.update_interval = "Optimizer", "Main", 1
    opt.dataset_name.append("Training")
    opt.solver.type = solver
    opt.solver.weight_decay, opt.solver.lr_decay, opt.solver.lr_decay_interval = 0.0, 1.0, 1
    if solver == "Sgd":
        opt.solver.sgd_param.lr = lr
    else:
        p = opt.solver.adam_param
        p.alpha, p.beta1, p.beta2, p.eps = lr, 0.9, 0.999, 1e-8
    return opt


def _optimizer(proto, spec: LoopSpec, loss: str) -> None:
    opt = add_optimizer(proto, spec.solver, spec.lr)
    _data(opt, loss)
    _generator(opt, spec)
    opt.loss_variable.add().variable_name = loss
    for name in PARAMETERS[spec.loop]:
        pv = opt.parameter_variable.add()
        pv.variable_name, pv.learning_rate_multiplier = name, 1.0


#: The trained parameters of each loop kind, as the optimizer names them.
PARAMETERS = {
    "recurrent": ("Affine/affine/W", "Affine/affine/b", "Affine_2/affine/W", "Affine_2/affine/b"),
    "repeat": ("Affine_0/affine/W", "Affine_0/affine/b", "Affine_1{RepeatStart}/affine/W",
               "Affine_1{RepeatStart}/affine/b", "Affine_2/affine/W", "Affine_2/affine/b"),
}  # fmt: skip


def _monitors_and_executor(proto, spec: LoopSpec, loss: str, output: str) -> None:
    for name, dataset in (("train_error", "Training"), ("valid_error", "Validation")):
        m = proto.monitor.add()
        m.name, m.network_name = name, "MainValidation"
        m.dataset_name.append(dataset)
        _data(m, loss)
        _generator(m, spec)
        mv = m.monitor_variable.add()
        mv.type, mv.variable_name = "Error", loss
    ex = proto.executor.add()
    ex.name, ex.network_name, ex.num_evaluations = "Executor", "MainRuntime", 1
    ex.repeat_evaluation_type, ex.need_back_propagation = "mean", False
    dv = ex.data_variable.add()
    dv.variable_name, dv.data_name = "Input", "x"
    _generator(ex, spec)
    ov = ex.output_variable.add()
    ov.variable_name, ov.data_name = output, "y'"
    for name in PARAMETERS[spec.loop]:
        ex.parameter_variable.add().variable_name = name


def loop_proto(spec: LoopSpec):
    """The whole definition as an ``NNablaProtoBuf`` message (see the module docstring)."""
    from nnabla.utils import nnabla_pb2

    if spec.head not in HEADS or spec.loop not in PARAMETERS:
        raise ValueError(f"unknown head {spec.head!r} or loop {spec.loop!r}")
    proto = nnabla_pb2.NNablaProtoBuf()
    ctx = proto.global_config.default_context
    ctx.backends.append("cpu:float")
    ctx.array_class = "CpuCachedArray"
    tc = proto.training_config
    tc.max_epoch, tc.iter_per_epoch, tc.save_best = spec.max_epoch, spec.iter_per_epoch, False
    (loss,) = _network(proto, "Main", spec, runtime=False)
    _network(proto, "MainValidation", spec, runtime=False)
    (output,) = _network(proto, "MainRuntime", spec, runtime=True)
    for name, uri, shuffle in (("Training", spec.train_csv, True),
                               ("Validation", spec.val_csv, False)):  # fmt: skip
        d = proto.dataset.add()
        d.name, d.uri, d.shuffle, d.batch_size = name, uri, shuffle, spec.batch_size
        d.no_image_normalization = False
    _optimizer(proto, spec, loss)
    _monitors_and_executor(proto, spec, loss, output)
    return proto


def write_loop_nntxt(spec: LoopSpec, path: str) -> str:
    """Write ``spec`` as a console-style ``.nntxt`` at ``path``; returns ``path``."""
    from google.protobuf import text_format

    with open(path, "w") as f:
        f.write(text_format.MessageToString(loop_proto(spec)))
    return path


def rnn_float64(values, x, y, head: str = "softmax_ce"):
    """The Elman RNN's per-sample losses and scores in float64, computed here without nnabla.

    Args:
        values: parameter name -> array (``PARAMETERS["recurrent"]``).
        x: (N, T, D) sequences; y: (N, 1) labels.

    Returns:
        ``(losses (N,), scores (N, K))``: the loss of each sample, and the logits (K = C), or
        the one score before the sigmoid (K = 1).

    """
    import numpy as np

    p = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    x = np.asarray(x, dtype=np.float64)
    h = np.zeros((len(x), p["Affine/affine/b"].shape[0]))
    for t in range(x.shape[1]):
        h = np.tanh(np.concatenate([x[:, t], h], axis=1) @ p["Affine/affine/W"]
                    + p["Affine/affine/b"])  # fmt: skip
    z = h @ p["Affine_2/affine/W"] + p["Affine_2/affine/b"]
    y = np.asarray(y).astype(np.int64).ravel()
    if head == "sigmoid_bce":
        s = z[:, 0]  # -log sigmoid(s) for y = 1, -log(1 - sigmoid(s)) for y = 0
        return np.logaddexp(0, s) - y * s, z
    top = z.max(axis=1)
    lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    return lse - z[np.arange(len(z)), y], z
