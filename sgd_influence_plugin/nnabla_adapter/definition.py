"""Understanding a network definition: which network is trained, on what, with which loss and
solver, and the copy of it the replay runs (:func:`describe`).

What the replay changes in the training network, in both phases alike (see ``notes``):

- BatchNormalization runs in inference mode (running statistics, which are not trained), so
  per-sample losses do not depend on the rest of the batch.
- Dropout and shape-preserving random augmentation are replaced by identity. Replaying
  random masks inside a double-backward pass would need per-step seeds in both phases; turning
  them off in both keeps the two phases consistent.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import NetworkDefinitionError, ParameterError
from . import losses as loss_kinds

#: Functions that are random at training time and keep the input's shape: replaced by identity.
_RANDOM_IDENTITY = {
    "Dropout",
    "ImageAugmentation",
    "RandomFlip",
    "RandomShift",
    "RandomErase",
    "RandomBrightness",
    "RandomContrast",
}
#: Random functions that change the shape: the replay cannot model them.
_RANDOM_UNSUPPORTED = {"RandomCrop", "RandomResizedCrop"}
_BATCH_NORMS = {
    "BatchNormalization": "batch_normalization_param",
    "FusedBatchNormalization": "fused_batch_normalization_param",
}
#: Solver type -> (its parameter message field, the learning-rate field in it).
_LR_FIELD = {
    "Sgd": ("sgd_param", "lr"),
    "SgdW": ("sgdw_param", "lr"),
    "Momentum": ("momentum_param", "lr"),
    "Nesterov": ("nesterov_param", "lr"),
    "Lars": ("lars_param", "lr"),
    "RMSprop": ("rmsprop_param", "lr"),
    "RMSpropGraves": ("rmsprop_graves_param", "lr"),
    "Adagrad": ("adagrad_param", "lr"),
    "Adadelta": ("adadelta_param", "lr"),
    "Adam": ("adam_param", "alpha"),
    "AdamW": ("adamw_param", "alpha"),
    "Adamax": ("adamax_param", "alpha"),
    "AdaBelief": ("adabelief_param", "alpha"),
    "AdaBound": ("adabound_param", "alpha"),
    "AMSGrad": ("amsgrad_param", "alpha"),
    "AMSBound": ("amsbound_param", "alpha"),
    "Lamb": ("lamb_param", "eta"),
    "Lion": ("lion_param", "lr"),
}


@dataclass(frozen=True)
class SolverConfig:
    """How the console trained the network (read from the optimizer's solver).

    Attributes:
        type: nnabla solver name, e.g. ``Sgd``, ``Momentum``, ``Adam``.
        lr: its base learning rate (``lr``, or ``alpha`` for the Adam family).
        weight_decay: L2 coefficient lambda; SGD adds lambda * theta to the gradient.
        batch_size: the training dataset's mini-batch size.

    """

    type: str
    lr: float
    weight_decay: float
    batch_size: int


@dataclass(frozen=True)
class DatasetRef:
    """A dataset named in the network definition."""

    name: str
    uri: str
    normalize: bool


@dataclass
class ModelInfo:
    """What the rest of the package needs to know about the network.

    Attributes:
        source: the file(s) the model came from, for messages.
        network: name of the optimizer's (training) network, e.g. ``Main``.
        losses: names of its loss variables.
        inputs: network input variable -> dataset column (variable) name that feeds it.
        input_shapes: dataset column name -> shape of one sample, e.g. ``{"x": (1, 28, 28)}``.
        trainable: names of the trained parameters (learning-rate multiplier > 0), sorted.
        solver: the console's solver settings.
        train_dataset: the optimizer's dataset, if named.
        val_dataset: the dataset of the validation monitor (``valid_error``), if any.
        validation_network: the network the validation monitor runs, if any.
        notes: what the replay changed in the network (BatchNorm mode, Dropout).
        runtime_network: the executor's network (``MainRuntime``), for predictions; or None.
        runtime_inputs: its input variable -> dataset column.
        runtime_output: its first output variable (e.g. the softmax ``y'``).
        runtime_features: the variable that feeds the last learned layer on the way to
            ``runtime_output`` (e.g. the hidden units before the last Affine), the network's
            own representation of a sample; None when there is none (see
            :func:`_feature_variable`).
        label_classes: dataset column -> number of classes C, for each column that feeds the
            label input of a classification loss (C from the scores' shape, e.g. logits
            (B, C); 2 for a binary loss such as Sigmoid + BinaryCrossEntropy); its labels must
            be whole numbers in 0..C-1. Regression losses add nothing here.
        task: ``classification``, ``regression`` or ``other`` (see :func:`.losses.understand`).
        target_column: the dataset column the loss compares the output with (the label, or
            the regression target), e.g. ``y``; None when the task is ``other``.

    """

    source: str
    network: str
    losses: List[str]
    inputs: Dict[str, str]
    input_shapes: Dict[str, Tuple[int, ...]]
    trainable: List[str]
    solver: SolverConfig
    train_dataset: Optional[DatasetRef]
    val_dataset: Optional[DatasetRef]
    validation_network: Optional[str]
    notes: List[str] = field(default_factory=list)
    runtime_network: Optional[str] = None
    runtime_inputs: Dict[str, str] = field(default_factory=dict)
    runtime_output: Optional[str] = None
    runtime_features: Optional[str] = None
    label_classes: Dict[str, int] = field(default_factory=dict)
    task: str = loss_kinds.OTHER
    target_column: Optional[str] = None


def _solver_config(opt, proto) -> SolverConfig:
    s = opt.solver
    lr = float("nan")
    if s.type in _LR_FIELD:
        sub, lr_field = _LR_FIELD[s.type]
        if s.HasField(sub):
            # Protobuf stores float32: 0.1 reads back as 0.10000000149; keep what was typed.
            lr = float(f"{getattr(getattr(s, sub), lr_field):.7g}")
    batch_size = 0
    for d in proto.dataset:
        if d.name in opt.dataset_name:
            batch_size = int(d.batch_size)
    if not batch_size:
        for n in proto.network:
            if n.name == opt.network_name:
                batch_size = int(n.batch_size)
    return SolverConfig(
        type=s.type or "Sgd",
        lr=lr,
        weight_decay=float(f"{s.weight_decay:.7g}"),
        batch_size=batch_size or 1,
    )


#: Names in ``nnabla.function`` that are no layer type of a network definition.
_NOT_LAYERS = {
    "Dummy",
    "Function",
    "Info",
    "ProtoFunction",
    "ProtoVariable",
    "PythonFunction",
    "UnsafeVariable",
}


def _is_nnabla_function(kind: str) -> bool:
    """True if nnabla has a function (layer) of type ``kind``, e.g. ``Affine``; the graph
    loader builds exactly these (``nnabla.utils.load_function``).
    """
    import nnabla.function as F

    return kind[:1].isupper() and kind not in _NOT_LAYERS and callable(getattr(F, kind, None))


def _prepare_network(net, where: str) -> List[str]:
    """Switch BatchNorm to inference mode and random functions to identity, in place.

    Raises:
        NetworkDefinitionError: a function type nnabla does not have (checked here, before
            anything is computed, instead of nnabla's ValueError when the graph is built).

    """
    import nnabla

    notes = []
    for f in net.function:
        if not _is_nnabla_function(f.type):
            raise NetworkDefinitionError(
                f"{where}: function '{f.name}' of network '{net.name}' has type '{f.type}', "
                f"which nnabla {nnabla.__version__} does not have; replace that layer, or "
                "export the network from a console whose nnabla has it"
            )
        if f.type in _BATCH_NORMS:
            getattr(f, _BATCH_NORMS[f.type]).batch_stat = False
            notes.append(f"{f.name}: BatchNormalization uses running statistics")
        elif f.type == "SyncBatchNormalization":
            raise NetworkDefinitionError(
                f"{where}: function '{f.name}' is SyncBatchNormalization; replace it with "
                "BatchNormalization (single-device training) to compute influence"
            )
        elif f.type in _RANDOM_IDENTITY:
            for fd, _ in f.ListFields():
                if fd.name.endswith("_param"):
                    f.ClearField(fd.name)
            notes.append(f"{f.name}: {f.type} disabled in both phases")
            f.type = "Identity"
        elif f.type in _RANDOM_UNSUPPORTED:
            raise NetworkDefinitionError(
                f"{where}: function '{f.name}' ({f.type}) is random and changes the shape; the "
                "replay cannot reproduce it. Move it to the dataset (pre-cropped images) or "
                "remove it from the training network"
            )
    return notes


def _feature_variable(net, output: str) -> Optional[str]:
    """The data input of the last function with parameters on the way back from ``output``
    (e.g. ``@MainRuntime/ReLU_out_2`` before the last Affine), or None: no such function, or a
    function on the way with no data input.

    Walking back, each function is followed through its first input that is not a parameter;
    the first function that takes a parameter (Affine, Convolution, ...) ends the walk.
    """
    kinds = {v.name: v.type for v in net.variable}
    producer = {o: f for f in net.function for o in f.output}
    name = output
    for _ in range(len(net.function)):
        f = producer.get(name)
        if f is None:
            return None
        data = [i for i in f.input if kinds.get(i) != "Parameter"]
        if not data:
            return None
        if len(data) < len(f.input):
            return data[0]
        name = data[0]
    return None


def describe(
    proto, params: Dict[str, np.ndarray], source: str, optimizer_name: Optional[str] = None
):
    """Check the definition and build the :class:`ModelInfo` and the replay network proto.

    Raises:
        NetworkDefinitionError: no optimizer, no loss, unknown variables.
        ParameterError: a parameter the network uses is missing or has the wrong shape.

    """
    from nnabla.utils import nnabla_pb2

    if not proto.optimizer:
        raise NetworkDefinitionError(
            f"{source}: the network definition has no optimizer; the console writes one in "
            "the training result's net.nntxt (give that file, not a runtime-only export)"
        )
    opts = {o.name: o for o in proto.optimizer}
    if optimizer_name is not None and optimizer_name not in opts:
        raise NetworkDefinitionError(
            f"{source}: no optimizer named '{optimizer_name}' (have {sorted(opts)})"
        )
    opt = opts[optimizer_name] if optimizer_name else proto.optimizer[0]
    nets = {n.name: n for n in proto.network}
    if opt.network_name not in nets:
        raise NetworkDefinitionError(
            f"{source}: optimizer '{opt.name}' trains network '{opt.network_name}', which is "
            f"not defined (networks: {sorted(nets)})"
        )
    net = nnabla_pb2.Network()
    net.CopyFrom(nets[opt.network_name])
    if not opt.loss_variable:
        raise NetworkDefinitionError(
            f"{source}: optimizer '{opt.name}' names no loss variable; add a loss layer (e.g. "
            "SoftmaxCrossEntropy) to the training network"
        )
    var_shapes = {v.name: tuple(v.shape.dim) for v in net.variable}
    var_types = {v.name: v.type for v in net.variable}
    losses = [lv.variable_name for lv in opt.loss_variable]
    for name in losses:
        if name not in var_shapes:
            raise NetworkDefinitionError(
                f"{source}: loss variable '{name}' is not in network '{net.name}'"
            )
    if opt.generator_variable:
        raise NetworkDefinitionError(
            f"{source}: optimizer '{opt.name}' uses generator inputs "
            f"({[g.variable_name for g in opt.generator_variable]}); they are random per step "
            "and are not supported"
        )
    inputs: Dict[str, str] = OrderedDict()
    shapes: Dict[str, Tuple[int, ...]] = OrderedDict()
    for dv in opt.data_variable:
        if dv.variable_name not in var_shapes:
            raise NetworkDefinitionError(
                f"{source}: data variable '{dv.variable_name}' is not in network '{net.name}'"
            )
        inputs[dv.variable_name] = dv.data_name
        shapes[dv.data_name] = tuple(int(d) for d in var_shapes[dv.variable_name][1:])
    lr_mult = {}
    for pv in opt.parameter_variable:
        pattern = re.compile(
            "^"
            + re.sub(
                r"{[^}]*}",
                r"\\[\\d+\\]",
                re.escape(pv.variable_name).replace(r"\{", "{").replace(r"\}", "}"),
            )
            + "$"
        )
        for name, t in var_types.items():
            if t == "Parameter" and (name == pv.variable_name or pattern.match(name)):
                lr_mult[name] = pv.learning_rate_multiplier
    trainable = sorted(n for n, m in lr_mult.items() if m > 0)
    if not trainable:
        raise NetworkDefinitionError(
            f"{source}: optimizer '{opt.name}' trains no parameter (every learning-rate "
            "multiplier is 0)"
        )
    for name, t in var_types.items():
        if t != "Parameter":
            continue
        want = var_shapes[name]
        if name not in params:
            raise ParameterError(
                f"{source}: parameter '{name}' of network '{net.name}' is missing from the "
                "parameters file; give the parameters saved with this network definition"
            )
        if tuple(params[name].shape) != tuple(want):
            raise ParameterError(
                f"{source}: parameter '{name}' has shape {tuple(params[name].shape)} but "
                f"network '{net.name}' needs {tuple(want)}; the parameters belong to a "
                "different network definition"
            )
        bad = int(np.size(params[name]) - np.count_nonzero(np.isfinite(params[name])))
        if bad:
            raise ParameterError(
                f"{source}: parameter '{name}' holds {bad} NaN or infinite value(s); the "
                "training diverged or the file is damaged: give parameters from a good run"
            )
    task, target, label_classes = loss_kinds.understand(net, inputs, var_shapes)
    notes = loss_kinds.stabilise(net, var_shapes) + _prepare_network(net, source)

    def dataset_ref(name):
        for d in proto.dataset:
            if d.name == name:
                return DatasetRef(d.name, d.uri, not d.no_image_normalization)
        return None

    train_ref = dataset_ref(opt.dataset_name[0]) if opt.dataset_name else None
    val_ref, val_net = None, None
    monitors = sorted(proto.monitor, key=lambda m: ("valid" not in m.name.lower(), m.name))
    for m in monitors:
        for dn in m.dataset_name:
            if train_ref is None or dn != train_ref.name:
                val_ref, val_net = dataset_ref(dn), m.network_name
                break
        if val_ref:
            break
    info = ModelInfo(
        source=source,
        network=net.name,
        losses=losses,
        inputs=dict(inputs),
        input_shapes=dict(shapes),
        trainable=trainable,
        solver=_solver_config(opt, proto),
        train_dataset=train_ref,
        val_dataset=val_ref,
        validation_network=val_net,
        notes=notes,
        label_classes=label_classes,
        task=task,
        target_column=target,
    )
    replay = nnabla_pb2.NNablaProtoBuf()
    replay.network.add().CopyFrom(net)
    for ex in proto.executor:
        if ex.network_name in nets and ex.output_variable and ex.network_name != net.name:
            runtime = replay.network.add()
            runtime.CopyFrom(nets[ex.network_name])
            _prepare_network(runtime, source)
            info.runtime_network = ex.network_name
            info.runtime_inputs = {d.variable_name: d.data_name for d in ex.data_variable}
            info.runtime_output = ex.output_variable[0].variable_name
            info.runtime_features = _feature_variable(runtime, info.runtime_output)
            break
    return info, replay
