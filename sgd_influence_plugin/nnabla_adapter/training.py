"""Training from scratch the way the console does, for the data-cleansing experiment: a fresh
initialisation of a definition drawn with a seed (:func:`initial_parameters`), and
``nnabla_cli train`` on a subset of the training rows (:func:`train_from_scratch`). Only the
adapter reads nnabla's protobuf definitions and writes its parameter files.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from typing import Dict, Optional

import numpy as np

from ..errors import SettingsError
from ..io_utils import atomic_write, data_path


def train_from_scratch(
    config_proto_text: str,
    train_csv: str,
    val_csv: str,
    rows_header,
    rows,
    keep: np.ndarray,
    seed: int,
    work: str,
    init_params: Optional[str] = None,
) -> str:
    """Train the definition from scratch with ``nnabla_cli train`` on the kept rows (``keep``:
    their indices, or a bool mask over ``rows``; :func:`write_kept_rows`).

    Writes ``work/train.csv`` (the kept rows of the training CSV in an order shuffled by
    ``seed``, file cells made absolute) and ``work/net.nntxt`` (the definition with its
    training dataset pointed at that CSV, the validation dataset at ``val_csv``,
    ``iter_per_epoch`` = kept rows // batch size, no "save best" and no monitors: the caller
    measures the result itself, and the console's monitors evaluate the whole training set
    in each of the first five epochs). ``nnabla_cli`` starts from ``init_params`` (an .h5 of
    every parameter, see :func:`initial_parameters`) when given, otherwise from its own
    initialisation, which is the same on every run.

    Returns:
        The path of the trained ``results.nnp`` in ``work``.

    Raises:
        SettingsError: ``nnabla_cli train`` failed (the tail of its log is in the message).

    """
    os.makedirs(work, exist_ok=True)
    cleansed = write_kept_rows(train_csv, rows_header, rows, keep, seed, work)
    cfg = _write_definition(config_proto_text, cleansed, len(keep), val_csv, work)
    cli = os.path.join(os.path.dirname(sys.executable), "nnabla_cli")
    cmd = [cli, "train", "-c", cfg, "-o", work]
    if init_params:
        cmd += ["-p", os.path.abspath(init_params)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.exists(os.path.join(work, "results.nnp")):
        raise SettingsError(f"nnabla_cli train failed in {work}:\n{proc.stderr[-1500:]}")
    return os.path.join(work, "results.nnp")


def write_kept_rows(train_csv: str, rows_header, rows, keep: np.ndarray, seed: int, work: str):
    """``work/train.csv``: the rows ``keep`` in an order shuffled by ``seed``, each cell that
    names a file beside ``train_csv`` made absolute. Returns its path.

    ``keep``: the kept rows' indices (int), or a bool mask over ``rows`` (True = kept).

    Raises:
        ValueError: a mask whose length is not the number of rows, or an index outside them.

    """
    src_folder = os.path.dirname(os.path.abspath(train_csv))
    keep = np.asarray(keep)
    if keep.dtype == bool:  # iterating a mask would give rows[True] / rows[False]
        if len(keep) != len(rows):
            raise ValueError(f"keep: a mask of {len(keep)} for {len(rows)} rows")
        keep = np.flatnonzero(keep)
    keep = keep.astype(np.int64)
    if len(keep) and not (0 <= keep.min() and keep.max() < len(rows)):
        raise ValueError(f"keep: row indices must lie in 0..{len(rows) - 1}")
    rng = np.random.RandomState(seed)
    keep = keep[rng.permutation(len(keep))]
    cleansed = os.path.join(work, "train.csv")
    with atomic_write(cleansed, newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(rows_header)
        for j in keep:
            w.writerow([_absolute_cell(c, src_folder) for c in rows[j]])
    return cleansed


def _absolute_cell(cell: str, src_folder: str) -> str:
    r"""``cell`` made absolute where it names a file beside ``src_folder`` (read as
    :func:`.io_utils.data_path` reads it, so ``.\0\12.csv`` too), else unchanged.
    """
    full = os.path.normpath(data_path(src_folder, cell))
    return full if os.path.splitext(cell.strip())[1] and os.path.exists(full) else cell


def _write_definition(
    config_proto_text: str, cleansed: str, n_kept: int, val_csv: str, work: str
) -> str:
    """``work/net.nntxt``: the definition training on ``cleansed`` (``n_kept`` rows), its
    other datasets on ``val_csv``, no "save best", no monitors. Returns its path.

    A dataset the console reads through a cache (``cache_dir``) gets a new one in ``work``,
    made from its new CSV: the definition's own is the user's (beside their data), and
    ``nnabla_cli`` would either write the kept rows into it or, with ``overwrite_cache``
    off, train on the rows cached there, every row, whatever was removed.
    """
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    proto = nnabla_pb2.NNablaProtoBuf()
    text_format.Merge(config_proto_text, proto)
    opt = proto.optimizer[0]
    n_batches = max(
        1,
        n_kept
        // max(1, next(d.batch_size for d in proto.dataset if d.name == opt.dataset_name[0])),
    )
    for i, d in enumerate(proto.dataset):
        d.uri = cleansed if d.name in opt.dataset_name else os.path.abspath(val_csv)
        if d.cache_dir:  # the console's cache, made again in work from the new uri
            d.cache_dir = os.path.join(work, f"cache_{i}")
            d.overwrite_cache = True
    proto.training_config.iter_per_epoch = n_batches
    proto.training_config.save_best = False
    del proto.monitor[:]
    cfg = os.path.join(work, "net.nntxt")
    with open(cfg, "w") as f:
        f.write(text_format.MessageToString(proto))
    return cfg


def _glorot_affine(shape):
    from nnabla.initializer import calc_normal_std_glorot

    return calc_normal_std_glorot(shape[0], int(np.prod(shape[1:])))


def _glorot_conv(shape):
    from nnabla.initializer import calc_normal_std_glorot

    return calc_normal_std_glorot(shape[-3], shape[0], kernel=shape[-2:])


#: nntxt initializer type -> standard deviation for a parameter shape, as nnabla's loader
#: computes it.
_NORMAL_STD = {
    "NormalAffineGlorot": _glorot_affine,
    "NormalConvolutionGlorot": _glorot_conv,
    "Normal": lambda shape: 1.0,
}


def initial_parameters(config_proto_text: str, seed: int, path: str) -> str:
    """Draw a fresh initialisation of every parameter of a definition and save it as .h5.

    ``nnabla_cli train`` initialises from a fixed random state, so every run starts from the
    same weights; the paper's protocol changes the initialisation with the seed. This draws
    each parameter as nnabla's loader would (the definition's initializer type and multiplier;
    Glorot normal for ``Normal*Glorot``, the constant for ``Constant``) from
    ``numpy.random.RandomState(seed)``, under the names of the definition with its loops
    expanded (a layer repeated with weights of its own as ``Affine_1[0]/...``, ``[1]``, ...,
    the names ``nnabla_cli train`` loads). Give the file to :func:`train_from_scratch`.

    Raises:
        SettingsError: an initializer type other than Normal, Normal*Glorot or Constant.

    """
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    from .recurrent import expand_loops

    proto = nnabla_pb2.NNablaProtoBuf()
    text_format.Merge(config_proto_text, proto)
    expand_loops(proto, "the network definition")  # the names nnabla_cli train loads
    rng = np.random.RandomState(seed)
    seen = set()
    params = {}
    for net in proto.network:
        for v in net.variable:
            if v.type != "Parameter" or v.name in seen:
                continue
            seen.add(v.name)
            shape = tuple(int(d) for d in v.shape.dim)
            kind, mult = v.initializer.type, v.initializer.multiplier
            if kind == "Constant":
                value = np.full(shape, mult, dtype=np.float32)
            elif kind in _NORMAL_STD:
                value = (rng.randn(*shape) * _NORMAL_STD[kind](shape) * mult).astype(np.float32)
            else:
                raise SettingsError(
                    f"parameter {v.name}: initializer {kind!r} is not supported here; "
                    f"use one of {sorted(_NORMAL_STD) + ['Constant']}"
                )
            params[v.name] = value
    _save_h5(params, path)
    return path


def _save_h5(params: Dict[str, np.ndarray], path: str) -> None:
    """Parameters as nnabla's .h5 layout (one dataset per name, ``index`` and
    ``need_grad`` attributes), written to a temporary name and renamed.
    """
    import h5py

    tmp = path + ".tmp.h5"
    with h5py.File(tmp, "w") as hd:
        for i, (name, value) in enumerate(params.items()):
            ds = hd.create_dataset(name, data=value)
            # Batch-norm running statistics are not trained by the solver.
            ds.attrs["need_grad"] = not name.endswith(("/mean", "/var"))
            ds.attrs["index"] = i
    os.replace(tmp, path)
