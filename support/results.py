"""Console training results made by ``nnabla_cli train`` (the console's own engine), for the
tests, the sample and the benchmarks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

NNABLA_CLI = os.path.join(os.path.dirname(sys.executable), "nnabla_cli")
_PLUGINS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugins", "_Post_Process", "_XAI"
)
#: The console entry scripts of a checkout.
IMAGE_SCRIPT = os.path.join(_PLUGINS, "_Image", "SGD_Influence_Cleansing.py")
TABLE_SCRIPT = os.path.join(_PLUGINS, "_Table", "SGD_Influence_Table.py")


def fix_random_seeds(nntxt: str, seed: int) -> int:
    """Give every random function of a definition a fixed seed, in place.

    nnabla's saver writes ``seed: -1`` for Dropout, and nnabla then draws a new seed at every
    run, so two ``nnabla_cli train`` runs of one definition end at different parameters (the
    only source of variation: initializers use ``RandomState(0)`` and the dataset shuffle
    ``RandomState(dataset index)``). Function k of a network gets ``seed + k``.

    Returns:
        The number of seeds set.

    """
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    proto = nnabla_pb2.NNablaProtoBuf()
    with open(nntxt) as f:
        text_format.Merge(f.read(), proto)
    fixed = 0
    for net in proto.network:
        for k, func in enumerate(net.function):
            for field, value in func.ListFields():
                if field.name.endswith("_param") and getattr(value, "seed", None) == -1:
                    value.seed = seed + k
                    fixed += 1
    with open(nntxt, "w") as f:
        f.write(text_format.MessageToString(proto))
    return fixed


def train_nntxt(folder, nntxt):
    """Train the definition ``nntxt`` with ``nnabla_cli train`` into ``folder`` and extract
    ``parameters.h5`` from the resulting ``results.nnp``; returns the folder.
    """
    os.makedirs(folder, exist_ok=True)
    proc = subprocess.run(
        [NNABLA_CLI, "train", "-c", str(nntxt), "-o", str(folder)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"nnabla_cli train failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    with zipfile.ZipFile(os.path.join(folder, "results.nnp")) as zf:
        with zf.open("parameter.h5") as src, open(
            os.path.join(folder, "parameters.h5"), "wb"
        ) as dst:
            shutil.copyfileobj(src, dst)
    return str(folder)


def train_on(folder, data, spec):
    """Write ``spec`` for the dataset ``data`` (``{"train", "val", "input_shape"}``, as
    :mod:`support.console_kinds` returns) and train it into ``folder``; returns the folder.
    ``spec`` is a :class:`support.netdef.NetSpec`, or a
    :class:`support.loops_netdef.LoopSpec` for a network with a loop, or a
    :class:`support.text_netdef.TextSpec` for a text classifier, or a
    :class:`support.multi_netdef.MultiSpec` for vector targets, two inputs or two losses, or a
    :class:`support.unsup_netdef.UnsupSpec` for an autoencoder, a VAE or an image target.
    """
    from support.loops_netdef import LoopSpec, write_loop_nntxt
    from support.multi_netdef import MultiSpec, write_multi_nntxt
    from support.netdef import write_nntxt
    from support.text_netdef import TextSpec, write_text_nntxt
    from support.unsup_netdef import UnsupSpec, write_unsup_nntxt

    writers = {LoopSpec: write_loop_nntxt, TextSpec: write_text_nntxt, MultiSpec: write_multi_nntxt,
               UnsupSpec: write_unsup_nntxt}  # fmt: skip
    write = writers.get(type(spec), write_nntxt)
    os.makedirs(folder, exist_ok=True)
    n_train = sum(1 for _ in open(data["train"])) - 1
    spec.train_csv, spec.val_csv = data["train"], data["val"]
    spec.input_shape = tuple(data["input_shape"])
    spec.iter_per_epoch = max(1, n_train // spec.batch_size)
    nntxt = write(spec, os.path.join(folder, "net.nntxt"))
    fix_random_seeds(nntxt, 313 + spec.seed)
    return train_nntxt(folder, nntxt)


def load_trained(folder, data):
    """(model, training arrays, validation arrays) of the result in ``folder`` and the dataset
    ``data`` (``{"train", "val"}`` CSVs), loaded by the package as a run loads them.
    """
    from sgd_influence_plugin.dataset import load_dataset
    from sgd_influence_plugin.nnabla_adapter import load_model

    model = load_model(model=os.path.join(folder, "results.nnp"))
    train = load_dataset(data["train"], model.info.input_shapes)
    val = load_dataset(data["val"], model.info.input_shapes)
    return model, train.arrays, val.arrays


def train_result(folder, data, spec):
    """Write net.nntxt for ``data``, train it with ``nnabla_cli train`` into ``folder``.

    The folder then looks like a console result: results.nnp, net.nntxt, parameters.h5
    (extracted from the nnp), monitoring_report.yml. Random functions get fixed seeds (see
    :func:`fix_random_seeds`), so the same data and spec give the same parameters, bit for bit.
    """
    return train_on(folder, {**data, "input_shape": (1, data["size"], data["size"])}, spec)


def console_outputs(result, csv_path, out_dir, prefix="y'"):
    """The oracle of a model's outputs: ``nnabla_cli forward`` of ``result``'s
    ``results.nnp`` over ``csv_path`` into ``out_dir``; float (N, K), the columns of
    ``output_result.csv`` whose header starts with ``prefix`` (``y'__`` for one output of
    several, e.g. not ``y2'``).
    """
    import numpy as np

    from support.console_kinds import read_rows

    os.makedirs(out_dir, exist_ok=True)
    proc = subprocess.run(
        [NNABLA_CLI, "forward", "-c", os.path.join(result, "results.nnp"), "-d", csv_path,
         "-o", out_dir], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = read_rows(os.path.join(out_dir, "output_result.csv"))
    cols = [c for c, h in enumerate(table["header"]) if h.startswith(prefix)]
    return np.array([[float(r[c]) for c in cols] for r in table["rows"]])


def rewritten_definition(result, folder, edit):
    """The result's definition with ``edit(proto)`` applied, written in ``folder``: the
    ``--config`` and ``--params`` arguments that run it with the result's weights.
    """
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    proto = nnabla_pb2.NNablaProtoBuf()
    text_format.Merge(open(os.path.join(result, "net.nntxt")).read(), proto)
    edit(proto)
    path = os.path.join(str(folder), "net.nntxt")
    with open(path, "w") as f:
        f.write(text_format.MessageToString(proto))
    return ["--config", path, "--params", os.path.join(result, "parameters.h5")]
