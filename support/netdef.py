"""Write console-style network definitions (``net.nntxt``) for a few small image classifiers.

The sample project, the benchmarks and the tests need real ``.nntxt`` files of the kind
Neural Network Console saves: a ``Main`` network for training (BatchNorm with batch
statistics, Dropout active), ``MainValidation`` (inference mode), ``MainRuntime`` (softmax
output), two datasets, an optimizer, monitors and an executor. This module builds those
networks with nnabla's parametric functions and lets ``nnabla.utils.save`` write the file, so
the result is exactly what nnabla (and ``nnabla_cli train``) reads. It runs in a child
process (:func:`write_nntxt`) because it fills nnabla's global parameter scope; the plugin
itself never calls it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Tuple

from support.palette_netdef import PALETTE_ARCHS, PALETTE_INITIALIZERS, palette_logits
from support.quant_netdef import QUANT_ARCHS, quant_logits

ARCHITECTURES = (
    ("logreg", "mlp", "cnn", "cnn_bn", "smooth_cnn", "lenet", "dwcnn")
    + tuple(QUANT_ARCHS)
    + PALETTE_ARCHS
)
#: The loss layers the console offers, as it writes them (``Softmax`` + ``CategoricalCrossEntropy``
#: is what its editor puts after a classifier; ``SoftmaxCrossEntropy`` is one layer):
#: head -> outputs per sample (None = ``n_classes``).
HEADS = {
    "softmax_ce": None,
    "softmax_cce": None,
    "sigmoid_bce": 1,
    "sigmoid_ce": 1,
    "squared": 1,
    "huber": 1,
}


@dataclass
class TrainingSpec:
    """What every fixture definition beside :class:`NetSpec` shares: its dataset CSVs, the
    batch size, the solver (``Sgd`` or ``Adam``) and its rate, the epochs and iterations per
    epoch, and the seed. Each builder (text, loops, multi, unsup) adds its own fields.
    """

    train_csv: str = "train.csv"
    val_csv: str = "val.csv"
    batch_size: int = 16
    lr: float = 0.1
    solver: str = "Sgd"
    max_epoch: int = 3
    iter_per_epoch: int = 1
    seed: int = 0


@dataclass
class NetSpec:
    """What to write.

    Attributes:
        arch: one of :data:`ARCHITECTURES`.
        input_shape: (C, H, W) of one image, as the CSV's images load.
        n_classes: number of labels; the label column holds integers 0..n_classes-1.
        train_csv / val_csv: dataset URIs written into the file (relative to the cwd of
            ``nnabla_cli train``, as the console does).
        batch_size: mini-batch size of both datasets.
        lr: learning rate of the solver.
        solver: nnabla solver name (``Sgd``, ``Momentum``, ``Adam``).
        weight_decay: L2 coefficient of the solver.
        max_epoch: epochs ``nnabla_cli train`` runs.
        iter_per_epoch: mini-batches per epoch, as the console writes it (N // batch_size);
            ``nnabla_cli train`` trains max_epoch * iter_per_epoch steps.
        dropout: Dropout probability after the hidden layer of ``mlp``/``cnn``/``cnn_bn``/``lenet``
            (0 = none).
        save_best: the console's "save best" switch.
        seed: seeds the definition's random functions (Dropout; ``313 + seed``,
            :func:`support.results.fix_random_seeds`). It does not change the initial
            weights ``nnabla_cli train`` starts from, which come from nnabla's own fixed
            random state; draw others with
            :func:`sgd_influence_plugin.nnabla_adapter.training.initial_parameters`.
        head: the loss layer, a key of :data:`HEADS`; binary and regression heads have one
            output per sample (the runtime network outputs the sigmoid's probability, or the
            regression's value).

    """

    arch: str = "cnn"
    input_shape: Tuple[int, int, int] = (1, 28, 28)
    n_classes: int = 10
    train_csv: str = "train.csv"
    val_csv: str = "val.csv"
    batch_size: int = 32
    lr: float = 0.05
    solver: str = "Sgd"
    weight_decay: float = 0.0
    max_epoch: int = 5
    iter_per_epoch: int = 1
    dropout: float = 0.0
    save_best: bool = False
    seed: int = 0
    head: str = "softmax_ce"


def _outputs(spec: NetSpec) -> int:
    if spec.head not in HEADS:
        raise ValueError(f"unknown head {spec.head!r}; choose one of {sorted(HEADS)}")
    return HEADS[spec.head] or spec.n_classes


def _loss(spec: NetSpec, z, t):
    """The per-sample loss of ``spec.head`` on scores ``z`` and target ``t``."""
    import nnabla.functions as F

    if spec.head == "softmax_ce":
        return F.softmax_cross_entropy(z, t)
    if spec.head == "softmax_cce":
        return F.categorical_cross_entropy(F.softmax(z), t)
    if spec.head == "sigmoid_bce":
        return F.binary_cross_entropy(F.sigmoid(z), t)
    if spec.head == "sigmoid_ce":
        return F.sigmoid_cross_entropy(z, t)
    if spec.head == "squared":
        return F.squared_error(z, t)
    return F.huber_loss(z, t)


def _runtime_output(spec: NetSpec, z):
    import nnabla.functions as F

    if spec.head in ("softmax_ce", "softmax_cce"):
        return F.softmax(z)
    if spec.head in ("sigmoid_bce", "sigmoid_ce"):
        return F.sigmoid(z)
    return z


def _logits(spec: NetSpec, x, train: bool):
    import nnabla.functions as F
    import nnabla.parametric_functions as PF

    def dropout(h):
        return F.dropout(h, spec.dropout) if (train and spec.dropout > 0) else h

    k = _outputs(spec)
    if spec.arch in QUANT_ARCHS:
        return quant_logits(spec.arch, x, k, train)
    if spec.arch in PALETTE_ARCHS:
        return palette_logits(spec.arch, x, k)
    if spec.arch == "logreg":
        return PF.affine(x, k, name="Affine")
    if spec.arch == "mlp":
        h = F.relu(PF.affine(x, 64, name="Affine"))
        return PF.affine(dropout(h), k, name="Affine_2")
    if spec.arch == "dwcnn":  # the webcam sample's kind: a depthwise convolution
        h = F.relu(PF.convolution(x, 6, (3, 3), pad=(1, 1), name="Convolution"))
        h = PF.depthwise_convolution(h, (3, 3), pad=(1, 1), name="DepthwiseConvolution")
        h = F.leaky_relu(F.max_pooling(h, (2, 2)))
        return PF.affine(h, k, name="Affine")
    if spec.arch in ("cnn", "cnn_bn"):
        h = PF.convolution(x, 8, (3, 3), pad=(1, 1), name="Convolution")
        if spec.arch == "cnn_bn":
            h = PF.batch_normalization(h, batch_stat=train, name="BatchNormalization")
        h = F.max_pooling(F.relu(h), (2, 2))
        h = PF.convolution(h, 16, (3, 3), pad=(1, 1), name="Convolution_2")
        if spec.arch == "cnn_bn":
            h = PF.batch_normalization(h, batch_stat=train, name="BatchNormalization_2")
        h = F.max_pooling(F.relu(h), (2, 2))
        h = F.relu(PF.affine(h, 32, name="Affine"))
        return PF.affine(dropout(h), k, name="Affine_2")
    if spec.arch == "smooth_cnn":
        h = F.tanh(PF.convolution(x, 4, (5, 5), pad=(2, 2), name="Convolution"))
        h = F.average_pooling(h, (2, 2))
        h = F.tanh(PF.convolution(h, 8, (3, 3), pad=(1, 1), name="Convolution_2"))
        h = F.average_pooling(h, (2, 2))
        return PF.affine(h, k, name="Affine")
    if spec.arch == "lenet":  # the console's LeNet sample, with ReLU
        h = F.relu(F.max_pooling(PF.convolution(x, 16, (5, 5), name="Convolution"), (2, 2)))
        h = PF.convolution(h, 30, (5, 5), name="Convolution_2")
        h = F.relu(F.max_pooling(h, (2, 2)))
        h = F.relu(PF.affine(h, 150, name="Affine"))
        return PF.affine(dropout(h), k, name="Affine_2")
    raise ValueError(f"unknown architecture {spec.arch!r}; choose one of {ARCHITECTURES}")


def _write_in_this_process(spec: NetSpec, path: str) -> None:
    import nnabla as nn
    import nnabla.solvers as S
    from nnabla.utils import save

    nn.clear_parameters()
    nn.random.seed(spec.seed)
    import numpy as np

    np.random.seed(spec.seed)
    b = spec.batch_size
    x = nn.Variable((b,) + tuple(spec.input_shape))
    t = nn.Variable((b, 1))
    loss = _loss(spec, _logits(spec, x, train=True), t)
    xv = nn.Variable((b,) + tuple(spec.input_shape))
    tv = nn.Variable((b, 1))
    loss_v = _loss(spec, _logits(spec, xv, train=False), tv)
    xr = nn.Variable((b,) + tuple(spec.input_shape))
    prob = _runtime_output(spec, _logits(spec, xr, train=False))

    if spec.solver == "Sgd":
        solver = S.Sgd(spec.lr)
    elif spec.solver == "Momentum":
        solver = S.Momentum(spec.lr, 0.9)
    elif spec.solver == "Adam":
        solver = S.Adam(spec.lr)
    else:
        raise ValueError(f"unsupported solver {spec.solver!r}")
    solver.set_parameters(nn.get_parameters())

    data_vars = {"x": "x", "y": "y"}
    contents = {
        "global_config": {"default_context": nn.Context(["cpu:float"], "CpuCachedArray", "0")},
        "training_config": {
            "max_epoch": spec.max_epoch,
            "iter_per_epoch": spec.iter_per_epoch,
            "save_best": spec.save_best,
        },
        "networks": [
            {"name": "Main", "batch_size": b, "outputs": {"loss": loss}, "names": {"x": x, "y": t}},
            {
                "name": "MainValidation",
                "batch_size": b,
                "outputs": {"loss": loss_v},
                "names": {"x": xv, "y": tv},
            },
            {"name": "MainRuntime", "batch_size": b, "outputs": {"y'": prob}, "names": {"x": xr}},
        ],
        "datasets": [
            {
                "name": "Training",
                "uri": spec.train_csv,
                "cache_dir": None,
                "variables": ("x", "y"),
                "shuffle": True,
                "batch_size": b,
                "no_image_normalization": False,
            },
            {
                "name": "Validation",
                "uri": spec.val_csv,
                "cache_dir": None,
                "variables": ("x", "y"),
                "shuffle": False,
                "batch_size": b,
                "no_image_normalization": False,
            },
        ],
        "optimizers": [
            {
                "name": "Optimizer",
                "solver": solver,
                "network": "Main",
                "dataset": "Training",
                "weight_decay": spec.weight_decay,
                "lr_decay": 1.0,
                "lr_decay_interval": 1,
                "update_interval": 1,
                "data_variables": data_vars,
                "loss_variables": ["loss"],
            },
        ],
        "monitors": [
            {
                "name": "train_error",
                "network": "MainValidation",
                "dataset": "Training",
                "data_variables": data_vars,
                "monitor_variables": ["loss"],
            },
            {
                "name": "valid_error",
                "network": "MainValidation",
                "dataset": "Validation",
                "data_variables": data_vars,
                "monitor_variables": ["loss"],
            },
        ],
        "executors": [
            {"name": "Executor", "network": "MainRuntime", "data": ["x"], "output": ["y'"]},
        ],
    }
    tmp = path + ".tmp.nntxt"
    save.save(tmp, contents)
    _add_initializers(tmp, PALETTE_INITIALIZERS if spec.arch in PALETTE_ARCHS else ())
    os.replace(tmp, path)


#: Parameter-name suffix -> (initializer type, multiplier), as the console writes them.
_INITIALIZERS = (
    ("/affine/W", ("NormalAffineGlorot", 1.0)),
    ("/conv/W", ("NormalConvolutionGlorot", 1.0)),
    ("/bicon_affine/W", ("NormalAffineGlorot", 1.0)),
    ("/bicon_conv/W", ("NormalConvolutionGlorot", 1.0)),
    ("/bwn_affine/W", ("NormalAffineGlorot", 1.0)),
    ("/bwn_conv/W", ("NormalConvolutionGlorot", 1.0)),
    ("/gamma", ("Constant", 1.0)),
    ("/var", ("Constant", 1.0)),
    ("", ("Constant", 0.0)),  # biases, beta, running mean
)


def _add_initializers(path: str, first=()) -> None:
    """Nnabla's saver writes no initializers; ``nnabla_cli train`` would start from zeros.
    ``first``: (suffix, initializer) pairs tried before :data:`_INITIALIZERS`.
    """
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    proto = nnabla_pb2.NNablaProtoBuf()
    with open(path) as f:
        text_format.Merge(f.read(), proto)
    for net in proto.network:
        for v in net.variable:
            if v.type != "Parameter":
                continue
            table = tuple(first) + _INITIALIZERS
            kind, mult = next(init for suffix, init in table if v.name.endswith(suffix))
            v.initializer.type = kind
            v.initializer.multiplier = mult
    with open(path, "w") as f:
        f.write(text_format.MessageToString(proto))


def console_contents(spec, solver, nets, data_vars, columns, executor, normalize=True,
                     generators=None):  # fmt: skip
    """Nnabla's ``save`` contents of a console-style result with one optimizer.

    Args:
        spec: ``max_epoch``, ``iter_per_epoch``, ``batch_size``, ``train_csv``, ``val_csv``.
        solver: the nnabla solver, its parameters set.
        nets: ``{"Main" | "MainValidation" | "MainRuntime": (inputs, outputs)}``, dicts of
            name -> Variable; Main's outputs are the losses.
        data_vars: network variable -> dataset column, for the optimizer and the monitors.
        columns: the datasets' variables (columns), in order.
        executor: the executor's dict (``name``, ``network``, ``data``, ``output``, ...).
        normalize: the datasets' image normalization.
        generators: variable -> generator for the optimizer and the monitors (None: no key).

    """
    import nnabla as nn

    b = spec.batch_size
    losses = list(nets["Main"][1])
    feeds = {"data_variables": data_vars}
    if generators is not None:
        feeds["generator_variables"] = generators

    def dataset(name, uri, shuffle):
        return {"name": name, "uri": uri, "cache_dir": None, "variables": tuple(columns),
                "shuffle": shuffle, "batch_size": b,
                "no_image_normalization": not normalize}  # fmt: skip

    def monitor(name, ds):
        return {"name": name, "network": "MainValidation", "dataset": ds, **feeds,
                "monitor_variables": losses}  # fmt: skip

    return {
        "global_config": {"default_context": nn.Context(["cpu:float"], "CpuCachedArray", "0")},
        "training_config": {
            "max_epoch": spec.max_epoch,
            "iter_per_epoch": spec.iter_per_epoch,
            "save_best": False,
        },  # fmt: skip
        "networks": [
            {"name": n, "batch_size": b, "outputs": out, "names": names}
            for n, (names, out) in nets.items()
        ],  # fmt: skip
        "datasets": [
            dataset("Training", spec.train_csv, True),
            dataset("Validation", spec.val_csv, False),
        ],  # fmt: skip
        "optimizers": [
            {
                "name": "Optimizer",
                "solver": solver,
                "network": "Main",
                "dataset": "Training",
                "weight_decay": 0.0,
                "lr_decay": 1.0,
                "lr_decay_interval": 1,
                "update_interval": 1,
                **feeds,
                "loss_variables": losses,
            }
        ],  # fmt: skip
        "monitors": [monitor("train_error", "Training"), monitor("valid_error", "Validation")],
        "executors": [executor],
    }


def write_nntxt(spec: NetSpec, path: str) -> str:
    """Write ``spec`` as a console-style ``.nntxt`` at ``path`` (in a child process).

    Returns:
        ``path``.

    """
    return write_in_child(spec, path)


def write_in_child(spec, path: str) -> str:
    """Run ``_write_in_this_process(spec, path)`` of the module that defines ``spec``'s class
    (a dataclass with an ``input_shape`` tuple) in a child process: nnabla's graph building
    and saving fill global scopes this process must not keep. Returns ``path``.
    """
    code = (
        "import importlib,json,sys; m=importlib.import_module(sys.argv[1]);"
        "d=json.loads(sys.argv[3]); d['input_shape']=tuple(d['input_shape']);"
        "m._write_in_this_process(getattr(m, sys.argv[2])(**d), sys.argv[4])"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    kind = type(spec)
    argv = [kind.__module__, kind.__name__, json.dumps(asdict(spec)), path]
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"writing {path} failed:\n{proc.stderr[-3000:]}")
    return path
