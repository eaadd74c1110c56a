"""One console result holding a tiny network per layer of the console's palette (normalization,
state, array ops, random layers), for the layer sweep (tests/test_layer_palette_norm.py).

Every layer ``K`` of :data:`LAYERS` gets its own networks ``Main_K`` (training: BatchNorm with
batch statistics, Dropout active), ``MainValidation_K`` and ``MainRuntime_K`` (inference) and
its own optimizer ``Opt_K``, all in one definition, so that one ``nnabla_cli train`` trains them
all (each optimizer updates its own network every iteration). The net: the six number columns
``x`` -> Affine (8) -> Tanh -> [the layer] -> Affine (3) -> SoftmaxCrossEntropy with ``y``
(``where="conv"``: Affine (16) -> Reshape (4, 2, 2) -> Convolution (4, 3x3) -> [the layer]).
:func:`layer_result` then writes one console-style result per layer (its own ``net.nntxt``
and ``results.nnp`` with the trained weights), as if the console had trained it alone.
Adding a layer is one entry of :data:`LAYERS`.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np

N_FEATURES = 6
N_CLASSES = 3
BATCH = 8


def _bn(h, train, **kw):
    import nnabla.parametric_functions as PF

    return PF.batch_normalization(h, batch_stat=train, name="BatchNormalization", **kw)


def _affine_w(h, n, apply_w, name):
    """An Affine whose weight goes through ``apply_w`` (a weight-normalizing function)."""
    import nnabla.parametric_functions as PF

    return PF.affine(h, n, apply_w=apply_w, name=name)


def _conv_w(h, apply_w):
    import nnabla.parametric_functions as PF

    return PF.convolution(h, 4, (3, 3), pad=(1, 1), apply_w=apply_w, name="Convolution_2")


def _resnet(h, train):
    """The console's ResNet block: Convolution -> BatchNorm -> ReLU -> Add2 with the input."""
    import nnabla.functions as F
    import nnabla.parametric_functions as PF

    r = PF.convolution(h, 4, (3, 3), pad=(1, 1), name="Convolution_2")
    r = F.relu(PF.batch_normalization(r, batch_stat=train, name="BatchNormalization"))
    return F.relu(PF.batch_normalization(r + h, batch_stat=train, name="BatchNormalization_2"))


def _split_stack(h):
    import nnabla.functions as F

    parts = F.split(F.reshape(h, (h.shape[0], 2, 4)), axis=1)
    return F.stack(*reversed(parts), axis=1)


def _one_hot(h, x):
    """A class-coded input column (x__0 holds 0, 1 or 2) one-hot, beside the features."""
    import nnabla.functions as F

    code = F.reshape(F.split(x, axis=1)[0], (x.shape[0], 1))
    return F.concatenate(h, F.one_hot(code, (3,)), axis=1)


def _F():
    import nnabla.functions

    return nnabla.functions


def _PF():
    import nnabla.parametric_functions

    return nnabla.parametric_functions


def _sn(w):
    return _PF().spectral_norm(w, test=not _logits.train, name="SpectralNorm")


#: Layer name -> (where: after an "affine" (B, 8) or a "conv" (B, 4, 2, 2), builder(h, train,
#: x) -> h): the layer as the training (``train``) or the inference network has it.
LAYERS = {
    "BatchNormalization": ("affine", lambda h, t, x: _bn(h, t)),
    "BatchNormalization_noscale_nobias": (
        "affine", lambda h, t, x: _bn(h, t, no_scale=True, no_bias=True)),
    "BatchNormalization_frozen": ("affine", lambda h, t, x: _bn(h, False)),
    "BatchNormalization_conv": ("conv", lambda h, t, x: _bn(h, t)),
    "FusedBatchNormalization": ("conv", lambda h, t, x: _PF().fused_batch_normalization(
        h, batch_stat=t, name="FusedBatchNormalization")),
    "MeanSubtraction": ("affine", lambda h, t, x: _PF().mean_subtraction(
        h, update_running_mean=t, name="MeanSubtraction")),
    "LayerNormalization": ("affine", lambda h, t, x: _PF().layer_normalization(
        h, name="LayerNormalization")),
    "InstanceNormalization": ("conv", lambda h, t, x: _PF().instance_normalization(
        h, name="InstanceNormalization")),
    "GroupNormalization": ("conv", lambda h, t, x: _PF().group_normalization(
        h, 2, name="GroupNormalization")),
    "WeightNormalization": ("affine", lambda h, t, x: _affine_w(h, 8, lambda w: (
        _PF().weight_normalization(w, dim=1, name="WeightNormalization")), "Affine_3")),
    "WeightStandardization": ("conv", lambda h, t, x: _conv_w(
        h, lambda w: _F().weight_standardization(w, channel_axis=0))),
    "SpectralNorm": ("affine", lambda h, t, x: _affine_w(h, 8, _sn, "Affine_3")),
    "NormNormalization": ("affine", lambda h, t, x: _F().norm_normalization(h, 2, axes=[1])),
    "Concatenate": ("affine", lambda h, t, x: _F().concatenate(h, _F().tanh(h), axis=1)),
    "SplitStack": ("affine", lambda h, t, x: _split_stack(h)),
    "Slice": ("affine", lambda h, t, x: _F().slice(h, (0, 2), (BATCH, 7), (1, 1))),
    "Transpose": ("conv", lambda h, t, x: _F().transpose(h, (0, 2, 3, 1))),
    "Reshape": ("affine", lambda h, t, x: _F().reshape(h, (BATCH, 2, 4))),
    "Broadcast": ("affine", lambda h, t, x: _F().broadcast(
        _F().reshape(h, (BATCH, 1, 8)), (BATCH, 3, 8))),
    "Tile": ("affine", lambda h, t, x: _F().tile(h, (1, 2))),
    "Pad": ("affine", lambda h, t, x: _F().pad(h, (1, 2))),
    "Flip": ("conv", lambda h, t, x: _F().flip(h, axes=[2])),
    "Shift": ("conv", lambda h, t, x: _F().shift(h, (0, 1, 0))),
    "Sort": ("affine", lambda h, t, x: _F().sort(h, axis=1)),
    "TopKData": ("affine", lambda h, t, x: _F().top_k_data(h, 3, reduce=False)),
    "TopKData_reduce": ("affine", lambda h, t, x: _F().top_k_data(h, 3)),
    "MeanBatchAxis": ("affine", lambda h, t, x: h - _F().mean(h, axis=0, keepdims=True)),
    "OneHot": ("affine", lambda h, t, x: _one_hot(h, x)),
    "Identity": ("affine", lambda h, t, x: _F().identity(h)),
    "Dropout": ("affine", lambda h, t, x: _F().dropout(h, 0.3) if t else h),
    "RandomFlip": ("conv", lambda h, t, x: _F().random_flip(h, axes=[3]) if t else h),
    "RandomShift": ("conv", lambda h, t, x: _F().random_shift(h, (1, 1)) if t else h),
    "ImageAugmentation": ("conv", lambda h, t, x: _F().image_augmentation(
        h, flip_lr=True, brightness=0.1) if t else h),
    "ResNetBlock": ("conv", lambda h, t, x: _resnet(h, t)),
}  # fmt: skip


def _logits(builder, where, x, train):
    import nnabla.functions as F
    import nnabla.parametric_functions as PF

    if where == "conv":
        h = F.reshape(PF.affine(x, 16, name="Affine"), (x.shape[0], 4, 2, 2))
        h = PF.convolution(h, 4, (3, 3), pad=(1, 1), name="Convolution")
    else:
        h = F.tanh(PF.affine(x, 8, name="Affine"))
    _logits.train = train
    return PF.affine(builder(h, train, x), N_CLASSES, name="Affine_2")


def _network_entries(name, where, builder):
    """The three networks of layer ``name`` and their variables, nnabla's saver's way."""
    import nnabla as nn
    import nnabla.functions as F

    out, inputs = [], {}
    with nn.parameter_scope(name):
        for net, train in ((f"Main_{name}", True), (f"MainValidation_{name}", False)):
            x, y = nn.Variable((BATCH, N_FEATURES)), nn.Variable((BATCH, 1))
            loss = F.softmax_cross_entropy(_logits(builder, where, x, train), y)
            out.append({"name": net, "batch_size": BATCH, "outputs": {"loss": loss},
                        "names": {"x": x, "y": y}})  # fmt: skip
            inputs[net] = loss
        xr = nn.Variable((BATCH, N_FEATURES))
        prob = F.softmax(_logits(builder, where, xr, False))
        out.append({"name": f"MainRuntime_{name}", "batch_size": BATCH,
                    "outputs": {"y'": prob}, "names": {"x": xr}})  # fmt: skip
    return out


def _write_all_in_this_process(names, data, path, lr):
    import nnabla as nn
    import nnabla.solvers as S
    from nnabla.utils import save

    nn.clear_parameters()
    nn.random.seed(0)
    np.random.seed(0)
    layers = LAYERS
    networks, optimizers, monitors, executors = [], [], [], []
    dvars = {"x": "x", "y": "y"}
    for name in names:
        where, builder = layers[name]
        networks += _network_entries(name, where, builder)
        solver = S.Sgd(lr)
        prefix = name + "/"  # the full names, as the saver compares them
        solver.set_parameters({k: v for k, v in nn.get_parameters().items()
                               if k.startswith(prefix)})  # fmt: skip
        optimizers.append({"name": f"Opt_{name}", "solver": solver, "network": f"Main_{name}",
                           "dataset": "Training", "weight_decay": 0.0, "lr_decay": 1.0,
                           "lr_decay_interval": 1, "update_interval": 1,
                           "data_variables": dvars, "loss_variables": ["loss"]})  # fmt: skip
        monitors.append({"name": f"valid_error_{name}", "network": f"MainValidation_{name}",
                         "dataset": "Validation", "data_variables": dvars,
                         "monitor_variables": ["loss"]})  # fmt: skip
        executors.append({"name": f"Executor_{name}", "network": f"MainRuntime_{name}",
                          "data": ["x"], "output": ["y'"]})  # fmt: skip
    ds = {"cache_dir": None, "variables": ("x", "y"), "batch_size": BATCH,
          "no_image_normalization": False}  # fmt: skip
    contents = {
        "global_config": {"default_context": nn.Context(["cpu:float"], "CpuCachedArray", "0")},
        "training_config": {"max_epoch": 3, "iter_per_epoch": data["n_train"] // BATCH,
                            "save_best": False},  # fmt: skip
        "networks": networks,
        "datasets": [{"name": "Training", "uri": data["train"], "shuffle": True, **ds},
                     {"name": "Validation", "uri": data["val"], "shuffle": False, **ds}],
        "optimizers": optimizers,
        "monitors": monitors,
        "executors": executors,
    }  # fmt: skip
    tmp = path + ".tmp.nntxt"
    save.save(tmp, contents)
    _add_initializers(tmp)
    os.replace(tmp, path)


#: Parameter name ending -> (initializer, multiplier), as the console writes them.
_INITIALIZERS = (
    ("/W", ("NormalAffineGlorot", 1.0)),
    ("/gamma", ("Constant", 1.0)),
    ("/var", ("Constant", 1.0)),
    ("/g", ("Constant", 1.0)),
    ("/u", ("Normal", 1.0)),
    ("", ("Constant", 0.0)),  # biases, beta, running means, MeanSubtraction's count
)


def _add_initializers(path: str) -> None:
    """Nnabla's saver writes no initializers (``nnabla_cli train`` would start from zeros)."""
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    proto = nnabla_pb2.NNablaProtoBuf()
    with open(path) as f:
        text_format.Merge(f.read(), proto)
    for net in proto.network:
        for v in net.variable:
            if v.type == "Parameter":
                kind, mult = next(i for end, i in _INITIALIZERS if v.name.endswith(end))
                v.initializer.type, v.initializer.multiplier = kind, mult
    with open(path, "w") as f:
        f.write(text_format.MessageToString(proto))


def write_data(folder: str, n_train: int = 48, n_val: int = 24, seed: int = 0):
    """Six standardized number columns (x__0 a class code 0-2) and a label 0-2 from a linear
    rule plus noise; ``{"train", "val", "n_train", "folder"}``.
    """
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    n = n_train + n_val
    x = np.round(rng.randn(n, N_FEATURES), 3)
    x[:, 0] = rng.randint(0, 3, n)
    y = np.argmax(x[:, 1:4] + 0.5 * rng.randn(n, 3), axis=1)
    header = ["y:label"] + [f"x__{k}" for k in range(N_FEATURES)]
    paths = {}
    for key, rows in (("train", range(n_train)), ("val", range(n_train, n))):
        paths[key] = os.path.join(folder, f"{key}.csv")
        with open(paths[key], "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows([[int(y[i])] + [f"{v:g}" for v in x[i]] for i in rows])
    return {**paths, "n_train": n_train, "folder": folder}


def train_palette(folder: str, names, lr: float = 0.1):
    """Write the definition of layers ``names`` for :func:`write_data`'s data in ``folder``
    (in a child process: nnabla's global scope) and train it with ``nnabla_cli train``;
    returns ``(folder, data)``.
    """
    import json

    from support.results import fix_random_seeds, train_nntxt

    data = write_data(os.path.join(folder, "data"))
    path = os.path.join(folder, "all.nntxt")
    code = (
        "import json,sys; from support.palette_state_netdef import _write_all_in_this_process as w;"
        "w(json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], float(sys.argv[4]))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(list(names)), json.dumps(data),
                           path, str(lr)], capture_output=True, text=True, env=env)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"writing {path} failed:\n{proc.stderr[-3000:]}")
    fix_random_seeds(path, 313)
    train_nntxt(os.path.join(folder, "all"), path)
    return folder, data


def layer_result(folder: str, name: str) -> str:
    """A console-style result of layer ``name`` alone in ``folder/name``: its networks,
    optimizer, monitor and executor renamed to the console's ``Main``, ``MainValidation``,
    ``MainRuntime``, ``Optimizer``, ``Executor``, and the trained weights (``results.nnp``,
    ``net.nntxt``, ``parameters.h5``); returns that folder.
    """
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    src = nnabla_pb2.NNablaProtoBuf()
    with zipfile.ZipFile(os.path.join(folder, "all", "results.nnp")) as zf:
        nntxt = next(n for n in zf.namelist() if n.endswith(".nntxt"))
        text_format.Merge(zf.read(nntxt).decode(), src)
    out = nnabla_pb2.NNablaProtoBuf()
    for field in ("global_config", "training_config"):
        getattr(out, field).CopyFrom(getattr(src, field))
    out.dataset.extend(src.dataset)
    suffix = "_" + name
    for field in ("network", "optimizer", "monitor", "executor"):
        for item in getattr(src, field):
            if item.name.endswith(suffix):
                getattr(out, field).add().CopyFrom(item)
    _rename(out, suffix)
    dest = os.path.join(folder, name)
    os.makedirs(dest, exist_ok=True)
    text = text_format.MessageToString(out)
    with open(os.path.join(dest, "net.nntxt"), "w") as f:
        f.write(text)
    shutil.copy(os.path.join(folder, "all", "parameters.h5"), os.path.join(dest, "parameters.h5"))
    with zipfile.ZipFile(os.path.join(dest, "results.nnp"), "w") as zf:
        zf.writestr("nnp_version.txt", "0.1\n")
        zf.writestr("network.nntxt", text)
        zf.write(os.path.join(dest, "parameters.h5"), "parameter.h5")
    return dest


def _rename(proto, suffix):
    """Names ``Main_K`` -> ``Main`` etc., and every reference to them."""

    def plain(name):
        return name[: -len(suffix)] if name.endswith(suffix) else name

    for net in proto.network:
        net.name = plain(net.name)
    for opt in proto.optimizer:
        opt.name, opt.network_name = plain(opt.name), plain(opt.network_name)
    for mon in proto.monitor:
        mon.name, mon.network_name = plain(mon.name), plain(mon.network_name)
    for ex in proto.executor:
        ex.name, ex.network_name = plain(ex.name), plain(ex.network_name)
