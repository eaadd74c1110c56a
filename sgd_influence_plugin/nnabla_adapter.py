"""The one module that knows nnabla's network files, parameter scopes and contexts.

It turns a console training result (``results.nnp``, or ``net.nntxt`` plus a parameters
``.h5``) into a :class:`NnablaModel`: a per-sample loss graph at any batch size, the
trainable parameters as arrays, and a description (:class:`ModelInfo`) of what feeds the
network and how the console trained it. Nothing else in the package touches nnabla's
parameter scopes, file handlers or contexts.

What the replay changes in the training network, in both phases alike (see ``notes``):

- BatchNormalization runs in inference mode (running statistics, which are not trained), so
  per-sample losses do not depend on the rest of the batch.
- Dropout and shape-preserving random augmentation are replaced by identity. Replaying
  random masks inside a double-backward pass would need per-step seeds in both phases; turning
  them off in both keeps the two phases consistent.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from .errors import ContextError, NetworkDefinitionError, ParameterError

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
        label_classes: dataset column -> number of classes C, for each column that feeds the
            label input of a categorical loss (SoftmaxCrossEntropy, CategoricalCrossEntropy),
            read from the shape of that loss's scores (e.g. logits (B, C)); its labels must
            be whole numbers in 0..C-1. Regression losses add nothing here.

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
    label_classes: Dict[str, int] = field(default_factory=dict)


@dataclass
class LossGraph:
    """A per-sample loss graph at one batch size B.

    Attributes:
        batch_size: B.
        inputs: dataset column name -> input ``nn.Variable`` of shape (B, *sample_shape).
        loss: ``nn.Variable`` of shape (B, 1): each sample's loss, before any batch reduction
            (the sum of the means of the optimizer's loss variables over non-batch axes, so
            that mean over the batch equals the console's training objective).
        params: trainable parameter name -> ``nn.Variable`` (shared across batch sizes).

    """

    batch_size: int
    inputs: Dict[str, object]
    loss: object
    params: OrderedDict[str, object]


# ----------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------


def _parse_nntxt(text: str, where: str):
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    proto = nnabla_pb2.NNablaProtoBuf()
    try:
        text_format.Merge(text, proto)
    except text_format.ParseError as e:
        raise NetworkDefinitionError(
            f"{where}: not a valid network definition ({e}); export it again from the console"
        ) from e
    return proto


def _read_h5(fileobj, where: str) -> OrderedDict[str, np.ndarray]:
    import h5py

    params: OrderedDict[str, np.ndarray] = OrderedDict()
    try:
        with h5py.File(fileobj, "r") as hd:
            found = []
            hd.visititems(
                lambda name, obj: (
                    found.append((obj.attrs.get("index", 0), name))
                    if isinstance(obj, h5py.Dataset)
                    else None
                )
            )
            for _, name in sorted(found):
                params[name] = np.array(hd[name][...])
                if params[name].dtype.kind not in "biuf":
                    raise ParameterError(
                        f"{where}: '{name}' holds {params[name].dtype} data, not numbers; give "
                        "the parameters file the console saved with this network"
                    )
    except OSError as e:
        raise ParameterError(f"{where}: not a readable parameters .h5 file ({e})") from e
    return params


def read_params(path: str, names) -> Dict[str, np.ndarray]:
    """Read the parameters ``names`` from a nnabla ``.h5`` file: name -> array.

    Raises:
        ParameterError: the file is unreadable or lacks one of ``names``.

    """
    values = _read_h5(path, path)
    missing = [n for n in names if n not in values]
    if missing:
        raise ParameterError(f"{path}: parameters {missing} are missing from this file")
    return {n: values[n] for n in names}


def _proto_params(proto) -> OrderedDict[str, np.ndarray]:
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for p in proto.parameter:
        out[p.variable_name] = np.array(p.data, dtype=np.float32).reshape(tuple(p.shape.dim))
    return out


def _check_file(path: str, error, hint: str) -> None:
    if not os.path.isfile(path):
        raise error(f"{path}: file not found (relative paths start at {os.getcwd()}); {hint}")


def read_result(
    model: Optional[str] = None, config: Optional[str] = None, params: Optional[str] = None
):
    """Read a network definition and its parameters.

    Args:
        model: a ``.nnp`` holding both (``results.nnp``); or
        config: a ``.nntxt`` and ``params``: a parameters ``.h5`` (or ``.protobuf``). A
            ``config`` with parameters embedded needs no ``params``.

    Returns:
        ``(proto, parameters, source)``: the ``NNablaProtoBuf``, an ordered mapping of parameter
        name -> array, and a description of the files for messages.

    """
    if model:
        _check_file(model, NetworkDefinitionError, "give the results.nnp of a training result")
        try:
            zf = zipfile.ZipFile(model)
        except zipfile.BadZipFile as e:
            raise NetworkDefinitionError(
                f"{model}: not a valid .nnp (zip) file; give the results.nnp the console saved"
            ) from e
        with zf:
            names = zf.namelist()
            defs = [n for n in names if n.endswith((".nntxt", ".prototxt"))]
            if not defs:
                raise NetworkDefinitionError(f"{model}: holds no .nntxt network definition")
            proto = _parse_nntxt(zf.read(defs[0]).decode("utf-8"), f"{model}:{defs[0]}")
            param_files = [n for n in names if n.endswith(".h5")]
            values = _proto_params(proto)
            for n in param_files:
                values.update(_read_h5(io.BytesIO(zf.read(n)), f"{model}:{n}"))
        return proto, values, model
    if not config:
        raise NetworkDefinitionError(
            "no model given: pass a results.nnp, or a net.nntxt together with a parameters .h5"
        )
    _check_file(config, NetworkDefinitionError, "give the net.nntxt of a training result")
    try:
        with open(config, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise NetworkDefinitionError(f"{config}: cannot read ({e})") from e
    proto = _parse_nntxt(text, config)
    values = _proto_params(proto)
    source = config
    if not params and not values:
        raise ParameterError(
            f"{config}: holds no parameters (weights); pass the parameters .h5 saved with it "
            "(--params parameters.h5), or give the results.nnp instead (--model)"
        )
    if params:
        _check_file(params, ParameterError, "give the .h5 the console saved (e.g. parameters.h5)")
        values.update(_read_h5(params, params))
        source = f"{config} + {params}"
    return proto, values, source


# ----------------------------------------------------------------------------------------
# Describing and preparing the network
# ----------------------------------------------------------------------------------------


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


def _prepare_network(net, where: str) -> List[str]:
    """Switch BatchNorm to inference mode and random functions to identity, in place."""
    notes = []
    for f in net.function:
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


#: Categorical losses: function type -> its parameter message (holding ``axis``).
_CATEGORICAL_LOSSES = {
    "SoftmaxCrossEntropy": "softmax_cross_entropy_param",
    "CategoricalCrossEntropy": "categorical_cross_entropy_param",
}


def _label_classes(net, inputs: Dict[str, str], var_shapes) -> Dict[str, int]:
    """Dataset column -> number of classes, for data variables that are the label input
    (the second) of a categorical loss; C is the scores' size along the loss's axis.
    """
    out: Dict[str, int] = {}
    for f in net.function:
        if f.type not in _CATEGORICAL_LOSSES or len(f.input) < 2 or f.input[1] not in inputs:
            continue
        shape = var_shapes.get(f.input[0], ())
        param = _CATEGORICAL_LOSSES[f.type]
        axis = getattr(f, param).axis if f.HasField(param) else len(shape) - 1
        if 0 < axis < len(shape) and shape[axis] > 0:
            column = inputs[f.input[1]]
            out[column] = min(int(shape[axis]), out.get(column, int(shape[axis])))
    return out


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
    label_classes = _label_classes(net, inputs, var_shapes)
    notes = _prepare_network(net, source)

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
            break
    return info, replay


# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------


def make_context(context: str = "cpu"):
    """Nnabla context for ``cpu`` or ``cudnn[:DEVICE]``.

    Raises:
        ContextError: ``cudnn`` requested but nnabla-ext-cuda is not installed or finds no GPU.

    """
    from nnabla.ext_utils import get_extension_context

    kind, _, device = context.partition(":")
    if kind == "cpu":
        return get_extension_context("cpu")
    if kind in ("cudnn", "cuda"):
        try:
            import nnabla_ext.cudnn  # noqa: F401
        except Exception as e:  # noqa: BLE001 - ImportError or a CUDA driver error
            raise ContextError(
                f"context '{context}' needs the nnabla GPU extension, which could not be "
                f"loaded ({type(e).__name__}: {e}); install e.g. 'pip install "
                "nnabla-ext-cuda120==1.39.0' matching your CUDA, or use --context cpu"
            ) from e
        return get_extension_context("cudnn", device_id=device or "0")
    raise ContextError(f"unknown context '{context}'; use 'cpu' or 'cudnn[:DEVICE]'")


class NnablaModel:
    """A console network ready for the training phase and the replay.

    It keeps its own parameter scope (an ordered dict, never nnabla's global one): every graph
    built from it, at any batch size, shares the same parameter Variables.
    """

    def __init__(
        self, info: ModelInfo, replay_proto, params: Dict[str, np.ndarray], context: str = "cpu"
    ):
        import nnabla as nn

        self.info = info
        self.context_name = context
        self._ctx = make_context(context)
        self._proto = replay_proto
        # nnabla resolves "a/b/W" through nested scopes: keep that nested dict for graph
        # building, and a flat name -> Variable view for everything else.
        self._scope: OrderedDict[str, object] = OrderedDict()
        self._params: OrderedDict[str, object] = OrderedDict()
        with nn.context_scope(self._ctx), nn.parameter_scope("", self._scope):
            for name, value in params.items():
                v = nn.Variable.from_numpy_array(np.asarray(value, dtype=np.float32))
                v.need_grad = name in info.trainable
                nn.parameter.set_parameter(name, v)
                self._params[name] = v
        self._graphs: Dict[object, object] = {}  # batch size (or ('predict', B)) -> graph

    # -- parameters ---------------------------------------------------------------------
    @property
    def trainable(self) -> OrderedDict[str, object]:
        """Trainable parameter name -> nn.Variable (sorted by name)."""
        return OrderedDict((n, self._params[n]) for n in self.info.trainable)

    def get_params(self) -> Dict[str, np.ndarray]:
        """Copies of the trainable parameters, name -> float32 array."""
        return {n: np.array(v.d, copy=True) for n, v in self.trainable.items()}

    def set_params(self, values: Dict[str, np.ndarray]) -> None:
        """Overwrite trainable parameters (a subset is fine)."""
        for n, a in values.items():
            self._params[n].d = a

    @property
    def n_params(self) -> int:
        """Number of trainable scalars |theta|."""
        return int(sum(int(np.prod(v.shape)) for v in self.trainable.values()))

    def save_params(self, path: str) -> None:
        """Save every parameter (trainable and BatchNorm statistics) with nnabla, atomically."""
        import nnabla as nn

        tmp = path + ".tmp.h5"
        nn.parameter.save_parameters(tmp, params=self._params)
        os.replace(tmp, path)

    def load_params(self, path: str) -> None:
        """Load the trainable parameters from an .h5 written by :meth:`save_params`."""
        self.set_params(read_params(path, self.info.trainable))

    # -- graphs -------------------------------------------------------------------------
    def graph(self, batch_size: int) -> LossGraph:
        """The per-sample loss graph at ``batch_size`` (built once, then cached)."""
        if batch_size not in self._graphs:
            self._graphs[batch_size] = self._build(batch_size)
        return self._graphs[batch_size]

    def _build(self, batch_size: int) -> LossGraph:
        import nnabla as nn
        import nnabla.functions as F
        from nnabla.utils.load import IdentityRemover

        renamed: Dict[str, str] = {}
        with nn.context_scope(self._ctx):
            g = nn.graph_def.ProtoGraph.from_proto(
                self._proto, param_scope=self._scope, rng=np.random.RandomState(0)
            )
            net = g.networks[self.info.network]
            net.execute_on_proto(IdentityRemover(renamed, is_required=lambda pf: False))
            net(ctx=self._ctx, batch_size=batch_size)
            variables = net.variables
            inputs = OrderedDict()
            for var_name, column in self.info.inputs.items():
                v = variables[renamed.get(var_name, var_name)].variable_instance
                if v is None:
                    raise NetworkDefinitionError(
                        f"{self.info.source}: input '{var_name}' is not used by the network"
                    )
                inputs[column] = v
            per_sample = []
            for name in self.info.losses:
                lv = variables[renamed.get(name, name)].variable_instance
                if lv.ndim == 0 or lv.shape[0] != batch_size:
                    raise NetworkDefinitionError(
                        f"{self.info.source}: loss '{name}' has shape {tuple(lv.shape)}; the "
                        "per-sample loss must keep the batch axis first (remove any mean or "
                        "sum over the batch after the loss layer)"
                    )
                if lv.ndim > 1:
                    lv = F.mean(lv, axis=tuple(range(1, lv.ndim)), keepdims=False)
                per_sample.append(F.reshape(lv, (batch_size, 1)))
            loss = per_sample[0] if len(per_sample) == 1 else F.add_n(*per_sample)
        self._check_no_new_params()
        return LossGraph(batch_size=batch_size, inputs=inputs, loss=loss, params=self.trainable)

    def predict(self, arrays: Dict[str, np.ndarray], batch_size: int = 256) -> np.ndarray:
        """The executor network's first output for every row, e.g. class probabilities.

        Args:
            arrays: dataset column -> (N, ...) float32.

        Returns:
            float32 (N, *output_shape).

        Raises:
            NetworkDefinitionError: the definition has no executor (runtime) network.

        """
        import nnabla as nn
        from nnabla.utils.load import IdentityRemover

        info = self.info
        if not info.runtime_network:
            raise NetworkDefinitionError(
                f"{info.source}: no executor network (e.g. MainRuntime) to predict with"
            )
        n = len(next(iter(arrays.values())))
        outs = []
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            key = ("predict", b)
            if key not in self._graphs:
                renamed: Dict[str, str] = {}
                with nn.context_scope(self._ctx):
                    g = nn.graph_def.ProtoGraph.from_proto(
                        self._proto, param_scope=self._scope, rng=np.random.RandomState(0)
                    )
                    net = g.networks[info.runtime_network]
                    net.execute_on_proto(IdentityRemover(renamed, is_required=lambda pf: False))
                    net(ctx=self._ctx, batch_size=b)
                    ins = {
                        col: net.variables[renamed.get(v, v)].variable_instance
                        for v, col in info.runtime_inputs.items()
                    }
                    out = net.variables[
                        renamed.get(info.runtime_output, info.runtime_output)
                    ].variable_instance
                self._check_no_new_params()
                self._graphs[key] = (ins, out)
            ins, out = self._graphs[key]
            for col, var in ins.items():
                var.d = arrays[col][start : start + b]
            out.forward(clear_buffer=True)
            outs.append(np.array(out.d, copy=True))
        return np.concatenate(outs)

    def _check_no_new_params(self) -> None:
        """After building a graph: no parameter may have been created from an initializer
        (nnabla does that silently for names it does not find), and need_grad is reset.
        """
        import nnabla as nn

        with nn.parameter_scope("", self._scope):
            created = set(nn.get_parameters(grad_only=False)) - set(self._params)
        if created:
            raise ParameterError(
                f"{self.info.source}: the network uses parameters that were not loaded: "
                f"{sorted(created)}; give the parameters saved with this network definition"
            )
        for name, v in self._params.items():
            v.need_grad = name in self.info.trainable

    def context_scope(self):
        """Context manager that makes this model's context current (for new Variables)."""
        import nnabla as nn

        return nn.context_scope(self._ctx)


def load_model(
    model: Optional[str] = None,
    config: Optional[str] = None,
    params: Optional[str] = None,
    context: str = "cpu",
    optimizer: Optional[str] = None,
) -> NnablaModel:
    """Load a console training result (see :func:`read_result`) as a :class:`NnablaModel`."""
    proto, values, source = read_result(model, config, params)
    info, replay = describe(proto, values, source, optimizer)
    return NnablaModel(info, replay, values, context)
