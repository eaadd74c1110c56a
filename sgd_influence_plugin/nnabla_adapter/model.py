"""The graph-building model: nnabla contexts, :class:`NnablaModel` (per-sample loss graphs at
any batch size over its own parameter scope) and :func:`load_model`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from ..errors import ContextError, NetworkDefinitionError, ParameterError
from .definition import ModelInfo, describe
from .files import read_params, read_result
from .recurrent import fill_generated


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


def make_context(context: str = "cpu"):
    """Nnabla context for ``cpu`` or ``cudnn[:DEVICE]``.

    Raises:
        ContextError: ``cudnn`` requested but nnabla-ext-cuda is not installed or finds no GPU.

    """
    from nnabla.ext_utils import get_extension_context

    kind, _, device = context.partition(":")
    if kind == "cpu":
        ctx = get_extension_context("cpu")
        _alias_extensions()
        return ctx
    if kind in ("cudnn", "cuda"):
        try:
            import nnabla_ext.cudnn  # noqa: F401
        except Exception as e:  # noqa: BLE001 - ImportError or a CUDA driver error
            raise ContextError(
                f"context '{context}' needs the nnabla GPU extension, which could not be "
                f"loaded ({type(e).__name__}: {e}); install e.g. 'pip install "
                "nnabla-ext-cuda120==1.39.0' matching your CUDA, or use --context cpu"
            ) from e
        ctx = get_extension_context("cudnn", device_id=device or "0")
        _alias_extensions()
        return ctx
    raise ContextError(f"unknown context '{context}'; use 'cpu' or 'cudnn[:DEVICE]'")


def _alias_extensions() -> None:
    """Make nnabla's implicit relative import of ``nnabla_ext.cpu`` find the loaded module.

    nnabla 1.39's ``_nd_array`` runs ``import nnabla_ext.cpu`` on every read or write of a
    Variable's ``d`` or ``g``, as a Python-2 style import that first looks for
    ``nnabla.nnabla_ext``, which does not exist: Python searches every folder on ``sys.path``
    for it, each time (5-7% of a training epoch's CPU time, measured on the benchmark's CNNs),
    then imports ``nnabla_ext.cpu`` absolutely. Empty packages of those two names (nowhere to
    look below them, so any other relative import of ``nnabla_ext`` still fails at once and
    falls back to the absolute one) that hand out the loaded modules end the search at once.
    The same module objects, so the same numbers.
    """
    import sys
    import types

    import nnabla_ext.cpu

    if "nnabla.nnabla_ext" in sys.modules:
        return
    for name, real in (
        ("nnabla.nnabla_ext.cpu", nnabla_ext.cpu),
        ("nnabla.nnabla_ext", nnabla_ext),
    ):
        alias = types.ModuleType(name)
        alias.__path__ = []  # a package with nowhere to look: unknown submodules fail at once
        alias.__getattr__ = lambda attr, real=real: getattr(real, attr)  # noqa: B023
        sys.modules[name] = alias
    sys.modules["nnabla.nnabla_ext"].cpu = nnabla_ext.cpu


def prepare_process() -> None:
    """Set up nnabla in a worker process before anything there uses it (idempotent): a
    process of :mod:`..parallel` (spawned or forked) or of a Dask cluster calls it before it
    rebuilds a model.

    nnabla keeps process-wide state: its logging (it configures Python's root logger on import
    and says "Initializing CPU extension..." there), the default context and the global
    parameter scope. Models use neither of the last two (each has its own scope and context,
    :class:`NnablaModel`), so what a worker needs is nnabla imported with its import-time
    lines quiet, as the command does before it imports nnabla: a worker reports through its
    results, never on the terminal.
    """
    import logging

    if not logging.root.handlers:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    import nnabla  # noqa: F401 - loads the CPU extension now, quietly


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
        from nnabla.core.graph_optimizer import IdentityRemover

        renamed: Dict[str, str] = {}
        with nn.context_scope(self._ctx):
            g = nn.graph_def.ProtoGraph.from_proto(
                self._proto, param_scope=self._scope, rng=np.random.RandomState(0)
            )
            net = g.networks[self.info.network]
            net.execute_on_proto(IdentityRemover(renamed, is_required=lambda pf: False))
            net(ctx=self._ctx, batch_size=batch_size)
            variables = net.variables
            fill_generated(variables, renamed, self.info.generated)
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
        return self._run_executor(arrays, batch_size, (self.info.runtime_output,))[0]

    def features(
        self, arrays: Dict[str, np.ndarray], batch_size: int = 256
    ) -> Optional[np.ndarray]:
        """The executor network's representation of every row: the input of its last learned
        layer (``info.runtime_features``), flattened; None when the network has none.

        Returns:
            float32 (N, D), e.g. (N, 32) for the hidden units before the sample CNN's last
            Affine.

        """
        return self.predict_with_features(arrays, batch_size, output=False)[1]

    def predict_with_features(
        self, arrays: Dict[str, np.ndarray], batch_size: int = 256, output: bool = True
    ):
        """``(predict(arrays), features(arrays))`` from one forward pass of the executor
        (``output=False``: ``(None, features)``). Features are None when there are none.
        """
        info = self.info
        has = self.feature_width is not None
        from_input = has and info.runtime_features in info.runtime_inputs  # logistic regression
        names = ((info.runtime_output,) if output else ()) + (
            (info.runtime_features,) if has and not from_input else ()
        )
        outs = self._run_executor(arrays, batch_size, names) if names else []
        pred = outs[0] if output else None
        if not has:
            return pred, None
        feats = (
            np.asarray(arrays[info.runtime_inputs[info.runtime_features]], np.float32)
            if from_input
            else outs[-1]
        )
        return pred, feats.reshape(len(feats), -1)

    @property
    def feature_width(self) -> Optional[int]:
        """Values per row of :meth:`features` (from the definition), or None without them."""
        info = self.info
        if not info.runtime_network or not info.runtime_features:
            return None
        net = next(n for n in self._proto.network if n.name == info.runtime_network)
        var = next(v for v in net.variable if v.name == info.runtime_features)
        return int(np.prod([int(d) for d in var.shape.dim[1:]]))

    def _run_executor(self, arrays, batch_size: int, names) -> List[np.ndarray]:
        """The executor's variables ``names`` for every row, float32 (N, ...) each, computed
        together in one forward pass per batch.
        """
        import nnabla as nn
        from nnabla.core.graph_optimizer import IdentityRemover

        info = self.info
        if not info.runtime_network:
            raise NetworkDefinitionError(
                f"{info.source}: no executor network (e.g. MainRuntime) to predict with"
            )
        n = len(next(iter(arrays.values())))
        outs: List[List[np.ndarray]] = [[] for _ in names]
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            key = ("executor", tuple(names), b)
            if key not in self._graphs:
                renamed: Dict[str, str] = {}
                with nn.context_scope(self._ctx):
                    g = nn.graph_def.ProtoGraph.from_proto(
                        self._proto, param_scope=self._scope, rng=np.random.RandomState(0)
                    )
                    net = g.networks[info.runtime_network]
                    net.execute_on_proto(IdentityRemover(renamed, is_required=lambda pf: False))
                    net(ctx=self._ctx, batch_size=b)
                    fill_generated(net.variables, renamed, info.runtime_generated)
                    ins = {
                        col: net.variables[renamed.get(v, v)].variable_instance
                        for v, col in info.runtime_inputs.items()
                    }
                    wanted = [net.variables[renamed.get(m, m)].variable_instance for m in names]
                for v in wanted:
                    v.persistent = True  # kept by clear_buffer when another one needs it
                self._check_no_new_params()
                self._graphs[key] = (ins, wanted)
            ins, wanted = self._graphs[key]
            for col, var in ins.items():
                var.d = arrays[col][start : start + b]
            nn.forward_all(wanted, clear_buffer=True)
            for got, v in zip(outs, wanted):
                got.append(np.array(v.d, copy=True))
        return [np.concatenate(o) for o in outs]

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

    def __reduce__(self):
        """Pickle as the replay definition and the current values of every parameter, e.g. to
        send the model to a cluster's workers; unpickling builds a new model (own parameter
        scope, no graphs yet) in the receiving process, in the same context.
        """
        values = OrderedDict((n, np.array(v.d, copy=True)) for n, v in self._params.items())
        return _rebuild, (self.info, self._proto.SerializeToString(), values, self.context_name)


def _rebuild(info: ModelInfo, proto: bytes, values, context: str) -> NnablaModel:
    from nnabla.utils import nnabla_pb2

    message = nnabla_pb2.NNablaProtoBuf()
    message.ParseFromString(proto)
    return NnablaModel(info, message, values, context)


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
