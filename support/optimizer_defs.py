"""Edit a console ``net.nntxt`` the ways a console user organises a definition, for the tests:
a layer's learning-rate multiplier (:func:`set_multiplier`), a second optimizer
(:func:`add_optimizer_copy`), other names for the networks, optimizer, executor and datasets
(:func:`rename`). Each reads and rewrites the file in place with nnabla's protobuf.
"""

from __future__ import annotations

from typing import Dict, Iterable

from google.protobuf import text_format


def _read(path: str):
    from nnabla.utils import nnabla_pb2

    proto = nnabla_pb2.NNablaProtoBuf()
    with open(path) as f:
        text_format.Merge(f.read(), proto)
    return proto


def _write(proto, path: str) -> str:
    with open(path, "w") as f:
        f.write(text_format.MessageToString(proto))
    return path


def set_multiplier(path: str, prefix: str, mult: float) -> str:
    """Every parameter whose name starts with ``prefix`` (e.g. ``Affine/``) gets the
    learning-rate multiplier ``mult`` (unitless) in every optimizer; returns ``path``.
    """
    proto = _read(path)
    for opt in proto.optimizer:
        for pv in opt.parameter_variable:
            if pv.variable_name.startswith(prefix):
                pv.learning_rate_multiplier = mult
    return _write(proto, path)


def add_optimizer_copy(path: str, name: str, trains: Iterable[str]) -> str:
    """Append a copy of the first optimizer named ``name`` that trains only the parameters
    whose names start with one of ``trains`` (the others at multiplier 0); returns ``path``.
    """
    proto = _read(path)
    new = proto.optimizer.add()
    new.CopyFrom(proto.optimizer[0])
    new.name = name
    for pv in new.parameter_variable:
        keep = any(pv.variable_name.startswith(p) for p in trains)
        pv.learning_rate_multiplier = 1.0 if keep else 0.0
    return _write(proto, path)


def rename(path: str, names: Dict[str, str], runtime_is_training: bool = False) -> str:
    """Rename networks, optimizers, executors, datasets and monitors (old -> new, wherever a
    definition names them); with ``runtime_is_training`` the executor runs the training
    network itself, its output the loss (no separate runtime network). Returns ``path``.
    """
    proto = _read(path)
    for item in list(proto.network) + list(proto.optimizer) + list(proto.executor):
        item.name = names.get(item.name, item.name)
    for item in list(proto.dataset) + list(proto.monitor):
        item.name = names.get(item.name, item.name)
    for item in list(proto.optimizer) + list(proto.monitor) + list(proto.executor):
        item.network_name = names.get(item.network_name, item.network_name)
    for item in list(proto.optimizer) + list(proto.monitor):
        renamed = [names.get(d, d) for d in item.dataset_name]
        del item.dataset_name[:]
        item.dataset_name.extend(renamed)
    if runtime_is_training:
        for ex in proto.executor:
            ex.network_name = proto.optimizer[0].network_name
            del ex.output_variable[:]
            loss = proto.optimizer[0].loss_variable[0].variable_name
            ex.output_variable.add().variable_name = loss
    return _write(proto, path)
