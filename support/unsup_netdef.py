"""Console results whose loss does not compare the output with one label column: autoencoders,
a VAE and image-to-image networks, with their datasets (console CSVs of small PNGs).

Datasets (:func:`write_images`): N grayscale ``size`` x ``size`` PNGs ``img/<i>.png`` (a
bright bar at a random place, plus noise), and by ``target``:

- ``None``: the header is ``x:image`` alone (an autoencoder's dataset);
- ``"image"``: ``x:image`` a noisy copy, ``y:image`` the clean PNG ``clean/<i>.png``
  (image-to-image regression, a denoising autoencoder with its target in the dataset);
- ``"csv"``: the same, ``y:image`` a per-sample CSV of ``size`` lines of ``size`` numbers;
- ``"labels"``: ``y:image`` a per-sample CSV label map (0 background, 1 the bar, 2 its
  ends), for a per-pixel segmentation; ``"labels_png"``: the same as an 8-bit PNG of the
  class indices (read with the dataset's image normalization off).

Networks (:class:`UnsupSpec`, :func:`write_unsup_nntxt`), by ``arch``:

- ``ae``: ``Input`` -> Affine (8) -> Tanh -> Affine (size^2) -> Sigmoid -> Reshape;
  ``SquaredError(out, SquaredError_T)`` with ``SquaredError_T`` fed by ``x`` as the console
  writes a loss whose T.Dataset is ``x`` (``same_variable``: the loss reads the input
  variable itself);
- ``conv_ae``: Convolution (4, 3x3) -> Tanh -> MaxPooling 2 -> Unpooling 2 ->
  Deconvolution (1, 3x3) -> Sigmoid, the same loss;
- ``denoise``: ``ae`` with Dropout (0.25) on its input (masking noise);
- ``vae``: Affine (8) -> Tanh -> mean and log-variance Affines (2 each); a normal sample
  ``eps`` (``noise="randn"``: a ``Randn`` layer; ``"generator"``: an input filled by a
  ``Normal`` generator); ``z = mu + exp(logvar / 2) * eps`` -> Affine (8) -> Tanh -> Affine
  -> Reshape; losses ``SigmoidCrossEntropy(logits, x)`` and the KL term
  ``-0.5 * Sum(1 + logvar - mu^2 - exp(logvar))`` (B, 1), two loss variables;
- ``img2img``: Convolution (4, 3x3) -> Tanh -> Convolution (1, 3x3) ->
  ``SquaredError(out, y)``;
- ``segment``: Convolution (4, 3x3) -> Tanh -> Convolution (3, 3x3) ->
  ``SoftmaxCrossEntropy(axis=1)(scores, y)``, the label map y (B, 1, size, size).

A per-sample CSV target (``target_shape`` (size, size)) is reshaped to (B, 1, size, size).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from support.netdef import TrainingSpec, console_contents, write_in_child

ARCHS = ("ae", "conv_ae", "denoise", "vae", "img2img", "segment")


def _bar(size: int, rng):
    """(clean image in [0, 1] (size, size), label map 0/1/2): a bar of 3 pixels' width."""
    img = np.zeros((size, size))
    labels = np.zeros((size, size), dtype=int)
    a, lo = int(rng.randint(0, size - 2)), int(rng.randint(0, size // 2))
    hi = int(rng.randint(lo + 3, size + 1))
    if rng.uniform() < 0.5:
        img[a : a + 2, lo:hi], labels[a : a + 2, lo:hi] = 0.9, 1
        labels[a : a + 2, lo], labels[a : a + 2, hi - 1] = 2, 2
    else:
        img[lo:hi, a : a + 2], labels[lo:hi, a : a + 2] = 0.9, 1
        labels[lo, a : a + 2], labels[hi - 1, a : a + 2] = 2, 2
    return img, labels


def _png(path: str, values) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.clip(np.round(values * 255), 0, 255).astype(np.uint8)).save(path)


def write_images(folder: str, n_train: int, n_val: int, size: int = 8, seed: int = 0,
                 target: Optional[str] = None):  # fmt: skip
    """Write ``train.csv`` and ``val.csv`` of the module docstring's kind ``target``.

    Returns:
        ``{"train", "val", "input_shape": (1, size, size), "folder"}``.

    """
    rng = np.random.RandomState(seed)
    rows = []
    for i in range(n_train + n_val):
        clean, labels = _bar(size, rng)
        noisy = np.clip(clean + 0.15 * rng.rand(size, size), 0, 1)
        _png(os.path.join(folder, "img", f"{i}.png"), noisy)
        if target is None:
            rows.append([f"img/{i}.png"])
        elif target == "image":
            _png(os.path.join(folder, "clean", f"{i}.png"), clean)
            rows.append([f"img/{i}.png", f"clean/{i}.png"])
        else:
            if target == "labels_png":  # raw class indices: read without normalization
                _png(os.path.join(folder, "target", f"{i}.png"), labels / 255.0)
                rows.append([f"img/{i}.png", f"target/{i}.png"])
                continue
            values, fmt = (clean, "%.4f") if target == "csv" else (labels, "%d")
            os.makedirs(os.path.join(folder, "target"), exist_ok=True)
            np.savetxt(os.path.join(folder, "target", f"{i}.csv"), values, fmt=fmt, delimiter=",")
            rows.append([f"img/{i}.png", f"target/{i}.csv"])
    header = ["x:image"] + ([] if target is None else ["y:image"])
    paths = {}
    for part, part_rows in (("train", rows[:n_train]), ("val", rows[n_train:])):
        paths[part] = os.path.join(folder, f"{part}.csv")
        with open(paths[part], "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(part_rows)
    return {**paths, "input_shape": (1, size, size), "folder": folder}


@dataclass
class UnsupSpec(TrainingSpec):
    """What to write: ``arch`` (module docstring), ``same_variable`` (the reconstruction loss
    reads the input variable itself), ``noise`` (the VAE's sample: ``randn`` or
    ``generator``), ``target_shape`` (``y``'s shape when it is not the input's: a per-sample
    CSV's (size, size), reshaped in the network), ``normalize`` (the datasets' image
    normalization, off for a PNG label map), and as :class:`support.netdef.NetSpec`:
    input_shape, train_csv / val_csv, batch_size, lr, solver (``Sgd`` or ``Adam``),
    max_epoch, iter_per_epoch, seed.
    """

    arch: str = "ae"
    same_variable: bool = False
    noise: str = "randn"
    target_shape: Tuple[int, ...] = ()
    normalize: bool = True
    input_shape: Tuple[int, ...] = (1, 8, 8)
    batch_size: int = 8
    lr: float = 0.5


def _decoder_logits(spec: UnsupSpec, h, size: int, name: str = "Affine_2"):
    import nnabla.functions as F
    import nnabla.parametric_functions as PF

    return F.reshape(PF.affine(h, size, name=name), (h.shape[0],) + tuple(spec.input_shape))


def _reconstruction(spec: UnsupSpec, x, train: bool):
    """The autoencoders' output (B, *input_shape), in [0, 1]."""
    import nnabla.functions as F
    import nnabla.parametric_functions as PF

    if spec.arch == "conv_ae":
        h = F.tanh(PF.convolution(x, 4, (3, 3), pad=(1, 1), name="Convolution"))
        h = F.unpooling(F.max_pooling(h, (2, 2)), (2, 2))
        return F.sigmoid(PF.deconvolution(h, 1, (3, 3), pad=(1, 1), name="Deconvolution"))
    if spec.arch == "denoise" and train:
        x = F.dropout(x, 0.25)
    h = F.tanh(PF.affine(x, 8, name="Affine"))
    return F.sigmoid(_decoder_logits(spec, h, int(np.prod(spec.input_shape))))


def _vae(spec: UnsupSpec, x, eps):
    """``(reconstruction logits, KL (B, 1))`` of the VAE for the sample ``eps`` (B, 2)."""
    import nnabla.functions as F
    import nnabla.parametric_functions as PF

    h = F.tanh(PF.affine(x, 8, name="Affine"))
    mu, logvar = PF.affine(h, 2, name="Affine_mu"), PF.affine(h, 2, name="Affine_logvar")
    z = mu + F.exp(logvar * 0.5) * eps
    h2 = F.tanh(PF.affine(z, 8, name="Affine_3"))
    logits = _decoder_logits(spec, h2, int(np.prod(spec.input_shape)), name="Affine_4")
    kl = F.sum(1.0 + logvar - mu**2 - F.exp(logvar), axis=1, keepdims=True) * -0.5
    return logits, kl


def _net(spec: UnsupSpec, b: int, mode: str):
    """``(inputs {name: Variable}, outputs {name: Variable}, generators [names])`` of one
    network; ``mode`` is ``train``, ``valid`` or ``runtime``.
    """
    import nnabla as nn
    import nnabla.functions as F
    import nnabla.parametric_functions as PF

    x = nn.Variable((b,) + tuple(spec.input_shape))
    inputs, generators = {"Input": x}, []
    if spec.arch == "vae":
        if spec.noise == "generator":
            eps = inputs["Noise"] = nn.Variable((b, 2))
            generators.append("Noise")
        else:
            eps = F.randn(shape=(b, 2))
        logits, kl = _vae(spec, x, eps)
        if mode == "runtime":
            return inputs, {"y'": F.sigmoid(logits)}, generators
        return inputs, {"loss": F.sigmoid_cross_entropy(logits, x), "kl": kl}, generators
    if spec.arch in ("img2img", "segment"):
        h = F.tanh(PF.convolution(x, 4, (3, 3), pad=(1, 1), name="Convolution"))
        k = 3 if spec.arch == "segment" else 1
        out = PF.convolution(h, k, (3, 3), pad=(1, 1), name="Convolution_2")
        if mode == "runtime":
            return inputs, {"y'": F.softmax(out, axis=1) if k > 1 else out}, generators
        t = inputs["y"] = nn.Variable((b,) + tuple(spec.target_shape or spec.input_shape))
        if spec.target_shape:  # a per-sample CSV of size lines: (size, size)
            t = F.reshape(t, (b,) + tuple(spec.input_shape))
        loss = F.softmax_cross_entropy(out, t, axis=1) if k > 1 else F.squared_error(out, t)
        return inputs, {"loss": loss}, generators
    out = _reconstruction(spec, x, mode == "train")
    if mode == "runtime":
        return inputs, {"y'": out}, generators
    t = x if spec.same_variable else nn.Variable(x.shape)
    if not spec.same_variable:
        inputs["SquaredError_T"] = t
    return inputs, {"loss": F.squared_error(out, t)}, generators


def _data_variables(inputs, generators):
    """Network variable -> dataset column: ``Input`` and ``SquaredError_T`` read ``x``."""
    column = {"Input": "x", "SquaredError_T": "x", "y": "y"}
    return {v: column[v] for v in inputs if v not in generators}


def _write_in_this_process(spec: UnsupSpec, path: str) -> None:
    import nnabla as nn
    import nnabla.solvers as S
    from nnabla.utils import save

    from support.netdef import _add_initializers

    nn.clear_parameters()
    nn.random.seed(spec.seed)
    b = spec.batch_size
    nets = {m: _net(spec, b, m) for m in ("train", "valid", "runtime")}
    solver = S.Adam(spec.lr) if spec.solver == "Adam" else S.Sgd(spec.lr)
    solver.set_parameters(nn.get_parameters())
    names, outputs, generators = nets["train"]
    data_vars = _data_variables(names, generators)
    runtime_in = nets["runtime"][0]
    executor = {
        "name": "Executor",
        "network": "MainRuntime",
        "data": [v for v in runtime_in if v not in generators],
        "remp": _data_variables(runtime_in, generators),  # nnabla's spelling
        "generator_variables": [g for g in generators if g in runtime_in],
        "output": list(nets["runtime"][1]),
    }
    roles = {"Main": "train", "MainValidation": "valid", "MainRuntime": "runtime"}
    contents = console_contents(
        spec, solver, {n: nets[m][:2] for n, m in roles.items()}, data_vars,
        sorted(set(data_vars.values())), executor, spec.normalize, generators,
    )  # fmt: skip
    tmp = path + ".tmp.nntxt"
    save.save(tmp, contents)
    _add_initializers(tmp)
    _normal_generators(tmp)
    os.replace(tmp, path)


def _normal_generators(path: str) -> None:
    """Nnabla's saver writes every generator as ``Constant`` 0; the VAE's is ``Normal``."""
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    proto = nnabla_pb2.NNablaProtoBuf()
    with open(path) as f:
        text_format.Merge(f.read(), proto)
    for owner in list(proto.optimizer) + list(proto.monitor) + list(proto.executor):
        for g in owner.generator_variable:
            g.type, g.multiplier = "Normal", 1.0
    with open(path, "w") as f:
        f.write(text_format.MessageToString(proto))


def write_unsup_nntxt(spec: UnsupSpec, path: str) -> str:
    """Write ``spec`` as a console-style ``.nntxt`` at ``path`` (in a child process,
    :func:`support.netdef.write_in_child`); returns ``path``.
    """
    return write_in_child(spec, path)
