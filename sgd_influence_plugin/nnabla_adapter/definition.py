"""Understanding a network definition: which network is trained, on what, with which loss and
solver, and the copy of it the replay runs (:func:`describe`).

The pieces it reads: the optimizer and its training network; the data inputs and the trained
parameters (checked against the parameters given); the loss (:mod:`.losses`); the solver
(:mod:`.solver`); the training and validation datasets; the executor's network, for
predictions. A recurrent (or repeated) network is unrolled first, by nnabla's own expansion,
and its generated inputs (a Delay's initial state) are read (:mod:`.recurrent`); before that,
the columns an Embed layer reads as word indices are found (:mod:`.indices`). The replay's
copy of the networks is changed as :mod:`.replay_network` says.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import NetworkDefinitionError, ParameterError
from . import losses as loss_kinds
from .heads import feature_variable, last_learned
from .indices import word_indices
from .optimizers import multipliers, optimizer_warnings
from .recurrent import expand_loops, generated_inputs
from .replay_network import one_variable_per_column, prepare_network, share_parameters
from .solver import SolverConfig, solver_config


@dataclass(frozen=True)
class DatasetRef:
    """A dataset named in the network definition: its CSV and how ``nnabla_cli train``
    scales its 8-bit images (``normalize``: divided by 255, unless ``no_image_normalization``;
    ``cached``: read through the cache it makes first, ``cache_dir`` with
    ``create_cache_explicitly``, as the console writes every dataset).
    """

    name: str
    uri: str
    normalize: bool
    cached: bool = False


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
            :func:`.heads.feature_variable`).
        label_classes: dataset column -> number of classes C, for each column that feeds the
            label input of a classification loss (C from the scores' shape, e.g. logits
            (B, C); 2 for a binary loss such as Sigmoid + BinaryCrossEntropy); its labels must
            be whole numbers in 0..C-1. Regression losses add nothing here. A column of
            ``one_hot`` joins it when the datasets are one-hot (``one_hot.settle_one_hot``).
        one_hot: dataset column -> C for a vector label ``(C,)`` that a loss compares with a
            Softmax over C classes (:func:`.losses.one_hot_targets`), when that is the
            network's one loss; whether it holds classes depends on the data.
        class_note: why a model with ``one_hot`` has no classes (the first row that is not
            one-hot), for the summary; empty otherwise.
        label_maps: dataset column -> C for each column that feeds a classification loss
            more than one label per sample (a segmentation's label map): every value must be
            a whole number in 0..C-1, but a sample has no one class (no class-centred target,
            no model class).
        task: ``classification``, ``regression`` or ``other`` (see :func:`.losses.understand`).
        target_column: the dataset column every loss compares the output with (the label,
            the regression target, a label map), e.g. ``y``; None when there is no one
            such column.
        generated: inputs of the training network that a fixed generator fills instead of
            a dataset column: variable -> (generator type, multiplier), e.g. a recurrent
            network's ``{"Delay_Initial": ("Constant", 0.0)}`` (:mod:`.recurrent`).
        runtime_generated: the same for the executor's network.
        word_indices: dataset column -> (Embed layer, V) for each column an Embed reads as
            word indices, e.g. ``{"x": ("Embed", 50)}``: its values must be whole numbers in
            0..V-1 (:mod:`.indices`).
        warnings: sentences about the definition's optimizers that do not stop the run
            (:func:`.optimizers.optimizer_warnings`), for the run's warnings.

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
    one_hot: Dict[str, int] = field(default_factory=dict)
    class_note: str = ""
    label_maps: Dict[str, int] = field(default_factory=dict)
    task: str = loss_kinds.OTHER
    target_column: Optional[str] = None
    generated: Dict[str, Tuple[str, float]] = field(default_factory=dict)
    runtime_generated: Dict[str, Tuple[str, float]] = field(default_factory=dict)
    word_indices: Dict[str, Tuple[str, int]] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)


def describe(
    proto, params: Dict[str, np.ndarray], source: str, optimizer_name: Optional[str] = None
):
    """Check the definition and build the :class:`ModelInfo` and the replay network proto.

    Raises:
        NetworkDefinitionError: no optimizer, no loss, unknown variables.
        ParameterError: a parameter the network uses is missing or has the wrong shape.

    """
    from nnabla.utils import nnabla_pb2

    opt = _optimizer(proto, source, optimizer_name)
    indices = word_indices(proto, opt)  # before the loops are unrolled: the console's names
    unrolled = expand_loops(proto, source)
    nets = {n.name: n for n in proto.network}
    net = _training_network(opt, nets, source)
    var_shapes = {v.name: tuple(v.shape.dim) for v in net.variable}
    losses = _loss_variables(opt, net, var_shapes, source)
    inputs, shapes = _data_inputs(opt, net, var_shapes, source)
    inputs, merged = one_variable_per_column(net, inputs, source)
    trainable = _trainable(opt, net, source)
    _check_parameters(net, params, source)
    loss_kinds.check_class_targets(net, inputs, var_shapes, source)
    task, target, label_classes = loss_kinds.understand(net, inputs, var_shapes)
    alone = not label_classes and len(losses) == 1 and task == loss_kinds.OTHER
    one_hot = loss_kinds.one_hot_targets(net, inputs, var_shapes) if alone else {}
    maps = loss_kinds.label_maps(net, inputs, var_shapes)
    scores = loss_kinds.class_scores(net, inputs, var_shapes)
    heads = {last_learned(net, v) for v in scores} - {None}
    notes = ([unrolled[net.name]] if net.name in unrolled else []) + merged
    notes += loss_kinds.stabilise(net, var_shapes) + prepare_network(net, source)
    notes += share_parameters(net)
    train_ref, val_ref, val_net = _datasets(proto, opt)
    info = ModelInfo(
        source=source,
        network=net.name,
        losses=losses,
        inputs=dict(inputs),
        input_shapes=dict(shapes),
        trainable=trainable,
        solver=solver_config(opt, proto),
        train_dataset=train_ref,
        val_dataset=val_ref,
        validation_network=val_net,
        notes=notes,
        label_classes=label_classes,
        one_hot=one_hot if len(one_hot) == 1 else {},
        label_maps=maps,
        task=task,
        target_column=target,
        generated=generated_inputs(opt, "optimizer", net, source),
        word_indices=indices,
        warnings=optimizer_warnings(proto, opt, net, source),
    )
    replay = nnabla_pb2.NNablaProtoBuf()
    replay.network.add().CopyFrom(net)
    _add_runtime_network(proto, nets, replay, info, heads)
    return info, replay


def _optimizer(proto, source: str, optimizer_name: Optional[str]):
    """The optimizer named ``optimizer_name``, or the definition's first one."""
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
    return opts[optimizer_name] if optimizer_name else proto.optimizer[0]


def _training_network(opt, nets, source: str):
    """A copy of the network ``opt`` trains (the replay changes it), if it has a loss."""
    from nnabla.utils import nnabla_pb2

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
    return net


def _loss_variables(opt, net, var_shapes, source: str) -> List[str]:
    """The names of ``opt``'s loss variables, each a variable of ``net``."""
    losses = [lv.variable_name for lv in opt.loss_variable]
    for name in losses:
        if name not in var_shapes:
            raise NetworkDefinitionError(
                f"{source}: loss variable '{name}' is not in network '{net.name}'"
            )
    return losses


def _data_inputs(
    opt, net, var_shapes, source: str
) -> Tuple[Dict[str, str], Dict[str, Tuple[int, ...]]]:
    """``(network input -> dataset column, dataset column -> shape of one sample)``."""
    inputs: Dict[str, str] = OrderedDict()
    shapes: Dict[str, Tuple[int, ...]] = OrderedDict()
    for dv in opt.data_variable:
        if dv.variable_name not in var_shapes:
            raise NetworkDefinitionError(
                f"{source}: data variable '{dv.variable_name}' is not in network '{net.name}'"
            )
        inputs[dv.variable_name] = dv.data_name
        shapes[dv.data_name] = tuple(int(d) for d in var_shapes[dv.variable_name][1:])
    return inputs, shapes


def _trainable(opt, net, source: str) -> List[str]:
    """The parameters of ``net`` that ``opt`` trains (learning-rate multiplier > 0), sorted."""
    trainable = sorted(n for n, m in multipliers(opt, net).items() if m > 0)
    if not trainable:
        raise NetworkDefinitionError(
            f"{source}: optimizer '{opt.name}' trains no parameter (every learning-rate "
            "multiplier is 0)"
        )
    return trainable


def _check_parameters(net, params: Dict[str, np.ndarray], source: str) -> None:
    """Every parameter of ``net`` is in ``params``, with its shape and finite values.

    Raises:
        ParameterError: the first parameter that is not.

    """
    var_shapes = {v.name: tuple(v.shape.dim) for v in net.variable}
    var_types = {v.name: v.type for v in net.variable}
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


def _datasets(proto, opt) -> Tuple[Optional[DatasetRef], Optional[DatasetRef], Optional[str]]:
    """``(training dataset, validation dataset, validation network)``: the optimizer's
    dataset, and the first other dataset a monitor reads (``valid`` monitors first).
    """

    def dataset_ref(name):
        for d in proto.dataset:
            if d.name == name:
                cached = bool(d.cache_dir) and d.create_cache_explicitly
                return DatasetRef(d.name, d.uri, not d.no_image_normalization, cached)
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
    return train_ref, val_ref, val_net


def _add_runtime_network(proto, nets, replay, info: ModelInfo, heads=frozenset()) -> None:
    """Add the first executor's network (other than the training network) to ``replay``,
    prepared like it, and name it and its inputs, output and features in ``info``.

    The output is the executor's first output computed by the same last learned layer as a
    classification loss's scores (``heads``: sets of parameter names, see
    :func:`.heads.last_learned`), e.g. ``y'`` = Softmax(Affine_2) beside a regression head's
    ``y2'`` listed first; with none such, its first output.
    """
    for ex in proto.executor:
        if ex.network_name in nets and ex.output_variable and ex.network_name != info.network:
            runtime = replay.network.add()
            runtime.CopyFrom(nets[ex.network_name])
            prepare_network(runtime, info.source)
            info.runtime_network = ex.network_name
            data = {d.variable_name: d.data_name for d in ex.data_variable}
            _check_executor_columns(ex, data, info)
            info.runtime_inputs = one_variable_per_column(runtime, data, info.source)[0]
            outputs = [o.variable_name for o in ex.output_variable]
            own = [o for o in outputs if last_learned(runtime, o) in heads]
            info.runtime_output = (own or outputs)[0]
            info.runtime_features = feature_variable(runtime, info.runtime_output)
            info.runtime_generated = generated_inputs(ex, "executor", runtime, info.source)
            return


def _check_executor_columns(ex, data: Dict[str, str], info: ModelInfo) -> None:
    """Every dataset column the executor ``ex`` reads (``data``: variable -> column) is one the
    training network reads, so the datasets the run decodes hold it.

    Raises:
        NetworkDefinitionError: naming the first column that is not.

    """
    generated = {g.variable_name for g in ex.generator_variable}
    for var, column in data.items():
        if column not in info.input_shapes and var not in generated:
            raise NetworkDefinitionError(
                f"{info.source}: executor '{ex.name}' fills '{var}' from dataset column "
                f"'{column}', which the training network does not read (it reads "
                f"{sorted(info.input_shapes)}); name the column the training network's input "
                "reads (the console writes x for Input) in the executor's data_variable"
            )
