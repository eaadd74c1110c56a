"""Reading a console training result: ``.nnp`` archives, ``.nntxt`` definitions, ``.h5``
parameters.

Everything here returns protobuf messages and numpy arrays; nothing builds a graph or touches
nnabla's parameter scope.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections import OrderedDict
from typing import Dict, Optional

import numpy as np

from ..errors import NetworkDefinitionError, ParameterError


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
