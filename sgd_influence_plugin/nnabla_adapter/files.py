"""Reading a console training result: ``.nnp`` archives, ``.nntxt`` definitions, ``.h5``
parameters.

Everything here returns protobuf messages and numpy arrays; nothing builds a graph or touches
nnabla's parameter scope.
"""

from __future__ import annotations

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
        raise ParameterError(
            f"{where}: not a readable parameters .h5 file ({e}); give the parameters.h5 the "
            "console saved with this network"
        ) from e
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


def _check_h5_numbers(path: str, where: str) -> None:
    """Every dataset of a parameters ``.h5`` holds numbers (nnabla's loader would fail on
    text with an error that names no parameter).

    Raises:
        ParameterError: a dataset holds something else, or the file is no HDF5 file.

    """
    import h5py

    bad = []
    try:
        with h5py.File(path, "r") as hd:
            hd.visititems(
                lambda name, obj: (
                    bad.append((name, obj.dtype))
                    if isinstance(obj, h5py.Dataset) and obj.dtype.kind not in "biuf"
                    else None
                )
            )
    except OSError as e:
        raise ParameterError(
            f"{where}: not a readable parameters .h5 file ({e}); give the parameters.h5 the "
            "console saved with this network"
        ) from None
    if bad:
        raise ParameterError(
            f"{where}: '{bad[0][0]}' holds {bad[0][1]} data, not numbers; give the parameters "
            "file the console saved with this network"
        )


def _load_with_nnabla(source, where: str, extension: str = "") -> OrderedDict[str, np.ndarray]:
    """Every parameter in ``source`` read by nnabla's own loader: name -> float32 array.

    ``source`` is a path or a file object (then ``extension`` names its format, e.g.
    ``.protobuf``). nnabla reads ``.h5``, ``.protobuf``, parameters embedded in ``.nntxt`` /
    ``.prototxt`` and every one of those inside a ``.nnp``, the way ``nnabla_cli`` does. It
    loads into a parameter scope of our own (a plain dict), never into nnabla's global one.

    Raises:
        ParameterError: nnabla cannot read the file, or a value is not a number.

    """
    import nnabla as nn
    from nnabla.parameter import load_parameters

    scope: OrderedDict = OrderedDict()
    try:
        with nn.parameter_scope("", scope):
            load_parameters(source, extension=extension or ".h5")
            found = nn.get_parameters(grad_only=False)
    except Exception as e:  # noqa: BLE001 - nnabla raises anything on a damaged file
        if isinstance(source, str) and source.endswith(".h5"):
            _check_h5_numbers(source, where)  # names the parameter that holds no numbers
        raise ParameterError(
            f"{where}: nnabla cannot read the parameters in it ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no detail'}); give the file the console "
            "saved with this network (parameters.h5, parameter.protobuf or results.nnp)"
        ) from None
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, var in found.items():
        value = np.array(var.d)
        if value.dtype.kind not in "biuf":
            raise ParameterError(
                f"{where}: '{name}' holds {value.dtype} data, not numbers; give the "
                "parameters file the console saved with this network"
            )
        out[name] = value.astype(np.float32, copy=False)
    return out


def _project_file_message(path: str) -> str:
    """What to give instead of a console project file (``.sdcproj``): one of its results."""
    stem = os.path.splitext(path)[0]
    results = os.path.join(stem + ".files", "<date_time>", "results.nnp")
    found = []
    if os.path.isdir(stem + ".files"):
        found = sorted(
            d
            for d in os.listdir(stem + ".files")
            if os.path.isfile(os.path.join(stem + ".files", d, "results.nnp"))
        )
    have = f" (there: {', '.join(found[-3:])})" if found else ""
    return (
        f"{path}: is a console project file, not a training result; give the results.nnp of "
        f"one of its training results, {results}{have}, or run the plugin from that result "
        "folder"
    )


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
    for given in (model, config, params):
        if given and given.lower().endswith(".sdcproj"):
            raise NetworkDefinitionError(_project_file_message(given))
    if model:
        return _read_nnp(model)
    if not config:
        raise NetworkDefinitionError(
            "no model given: pass a results.nnp, or a net.nntxt together with a parameters .h5"
        )
    return _read_nntxt(config, params)


def _read_nnp(model: str):
    """:func:`read_result` of a ``.nnp``: its first definition, every weight file inside."""
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
            raise NetworkDefinitionError(
                f"{model}: holds no .nntxt network definition; give the results.nnp the "
                "console saved, or --config net.nntxt with --params"
            )
        proto = _parse_nntxt(zf.read(defs[0]).decode("utf-8"), f"{model}:{defs[0]}")
    # nnabla reads every weight file inside (parameter.h5, parameter.protobuf of NNC 1.x
    # and of the cloud, or values embedded in the definition).
    return proto, _load_with_nnabla(model, model), model


def _read_nntxt(config: str, params: Optional[str]):
    """:func:`read_result` of a ``.nntxt``: its embedded parameters, then those of
    ``params`` (which win).
    """
    _check_file(config, NetworkDefinitionError, "give the net.nntxt of a training result")
    try:
        with open(config, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise NetworkDefinitionError(
            f"{config}: cannot read ({e}); give the net.nntxt (UTF-8 text) of a training result"
        ) from e
    proto = _parse_nntxt(text, config)
    values = _load_with_nnabla(config, config) if proto.parameter else OrderedDict()
    source = config
    if not params and not values:
        raise ParameterError(
            f"{config}: holds no parameters (weights); pass the parameters .h5 saved with it "
            "(--params parameters.h5), or give the results.nnp instead (--model)"
        )
    if params:
        _check_file(params, ParameterError, "give the .h5 or .protobuf the console saved with it")
        if os.path.splitext(params)[1] not in (".h5", ".protobuf", ".nnp"):
            raise ParameterError(
                f"{params}: not a parameters file nnabla reads (.h5, .protobuf or .nnp); give "
                "the parameters.h5 or parameter.protobuf saved with the network"
            )
        values.update(_load_with_nnabla(params, params))
        source = f"{config} + {params}"
    return proto, values, source
