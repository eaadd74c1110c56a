"""The copy of a network the replay runs: what it changes, in both phases alike.

:func:`prepare_network` makes the changes and lists them (``ModelInfo.notes``):

- BatchNormalization runs in inference mode (running statistics, which are not trained), so
  per-sample losses do not depend on the rest of the batch; so do MeanSubtraction (its trained
  running mean, which its training mode would move at every forward pass and subtract from the
  batch): the network the replay differentiates is the inference one.
- Dropout and shape-preserving random augmentation are replaced by identity. Replaying
  random masks inside a double-backward pass would need per-step seeds in both phases; turning
  them off in both keeps the two phases consistent.

Layers that work across the samples of a mini-batch are refused (:mod:`.batch_axis`). Layers
nnabla does not have, random layers that change the shape and random generators (a
``Randn`` layer's new sample at every step) are refused here, before anything is computed.
Variables fed by the same dataset column (an autoencoder's ``Input`` and its loss's target
``SquaredError_T``, both reading ``x``) become one (:func:`one_variable_per_column`). A
parameter that several functions take (a recurrent layer's weights) is fed to them through
one Identity (:func:`share_parameters`), so that the exact replay step's double backward
sums its gradient over every use.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Dict, List, Tuple

from ..errors import NetworkDefinitionError
from .batch_axis import check_batch_axis

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
#: Functions that draw new random values at every step from no input (a VAE's ``Randn``
#: sample) or pick among their inputs at random: the replay would differentiate other draws
#: than the training phase took, at every pass (its scores would be noise).
_RANDOM_DRAWS = {
    "Rand",
    "Randint",
    "Randn",
    "RandBinomial",
    "RandBeta",
    "RandGamma",
    "RandomChoice",
}
#: Layers with a state that training updates, switched to inference mode (the trained state,
#: never updated by the tool's passes): type -> (parameter message, field, value, note).
_INFERENCE_MODE = {
    "BatchNormalization": (
        "batch_normalization_param", "batch_stat", False,
        "BatchNormalization uses running statistics"),
    "FusedBatchNormalization": (
        "fused_batch_normalization_param", "batch_stat", False,
        "BatchNormalization uses running statistics"),
    "MeanSubtraction": (
        "mean_subtraction_param", "update_running_mean", False,
        "MeanSubtraction subtracts its trained running mean (not updated)"),
}  # fmt: skip
_CROP = (
    "is random and changes the shape; the replay cannot reproduce it. Move it to the dataset "
    "(pre-cropped images) or remove it from the training network"
)
#: Layers the replay cannot differentiate as trained: type -> why, and what to do instead.
_UNREPLAYABLE = {
    "SpectralNorm": (
        "cannot be replayed: in training mode its power iteration moves its vector u at "
        "every forward pass (the replay's passes would each differentiate another function), "
        "and nnabla differentiates its inference mode to NaN; train without it (e.g. "
        "WeightNormalization) to compute influence"
    ),
    "RandomCrop": _CROP,
    "RandomResizedCrop": _CROP,
    "SyncBatchNormalization": (
        "cannot be replayed on one device; replace it with BatchNormalization (single-device "
        "training) to compute influence"
    ),
    "Sort": (
        "cannot be replayed: nnabla 1.39's backward of Sort sends each gradient to another "
        "element than the one sorted there (it is no derivative of the loss, so neither the "
        "training nor the replay follows the loss); remove it and train again"
    ),
    "TopKData": (
        "(reduce false) cannot be replayed: nnabla 1.39's backward passes the gradient of "
        "every element, not only of the k kept, which is no derivative of the loss; use "
        "reduce true or remove it, and train again"
    ),
}


def _unreplayable(f) -> str:
    """Why the replay cannot differentiate function ``f`` as trained, or ''."""
    if f.type == "TopKData" and f.top_k_data_param.reduce:
        return ""  # its backward is the derivative (the exact step has none: core)
    return _UNREPLAYABLE.get(f.type, "")


#: Names in ``nnabla.function`` that are no layer type of a network definition.
_NOT_LAYERS = {
    "Dummy",
    "Function",
    "Info",
    "ProtoFunction",
    "ProtoVariable",
    "PythonFunction",
    "UnsafeVariable",
}


def _is_nnabla_function(kind: str) -> bool:
    """True if nnabla has a function (layer) of type ``kind``, e.g. ``Affine``; the graph
    loader builds exactly these (``nnabla.utils.load_function``).
    """
    import nnabla.function as F

    return kind[:1].isupper() and kind not in _NOT_LAYERS and callable(getattr(F, kind, None))


def _changes_shape(f, shapes) -> bool:
    """True if function ``f``'s output has another shape than its input (an
    ImageAugmentation's ``shape`` crops), by the definition's variable shapes.
    """
    return bool(f.input and f.output) and shapes.get(f.input[0]) != shapes.get(f.output[0])


def prepare_network(net, where: str) -> List[str]:
    """Switch BatchNorm to inference mode and random functions to identity, in place.

    Returns:
        A note per function changed, e.g. ``"Dropout: Dropout disabled in both phases"``.

    Raises:
        NetworkDefinitionError: a function type nnabla does not have (checked here, before
            anything is computed, instead of nnabla's ValueError when the graph is built).

    """
    import nnabla

    shapes = {v.name: tuple(v.shape.dim) for v in net.variable}
    notes = []
    for f in net.function:
        if not _is_nnabla_function(f.type):
            raise NetworkDefinitionError(
                f"{where}: function '{f.name}' of network '{net.name}' has type '{f.type}', "
                f"which nnabla {nnabla.__version__} does not have; replace that layer, or "
                "export the network from a console whose nnabla has it"
            )
        if f.type in _INFERENCE_MODE:
            message, field, value, note = _INFERENCE_MODE[f.type]
            setattr(getattr(f, message), field, value)
            notes.append(f"{f.name}: {note}")
        elif _unreplayable(f):
            raise NetworkDefinitionError(
                f"{where}: function '{f.name}' ({f.type}) of network '{net.name}' "
                + _unreplayable(f)
            )
        elif f.type in _RANDOM_IDENTITY and _changes_shape(f, shapes):
            raise NetworkDefinitionError(
                f"{where}: function '{f.name}' ({f.type}) of network '{net.name}' is random "
                f"and changes the shape {shapes.get(f.input[0])} to {shapes.get(f.output[0])} "
                "(a crop); the replay cannot reproduce it. Crop the images in the dataset "
                "instead, or give the layer the input's shape, and train again"
            )
        elif f.type in _RANDOM_IDENTITY:
            for fd, _ in f.ListFields():
                if fd.name.endswith("_param"):
                    f.ClearField(fd.name)
            notes.append(f"{f.name}: {f.type} disabled in both phases")
            f.type = "Identity"
        elif f.type in _RANDOM_DRAWS:
            raise NetworkDefinitionError(
                f"{where}: function '{f.name}' ({f.type}) of network '{net.name}' draws new "
                "random values at every step, which the replay cannot reproduce (its scores "
                "would be noise); remove it from the training network (a VAE: feed the mean "
                "to the decoder) and give that definition with --config and these parameters"
            )
    check_batch_axis(net, where)
    return notes


def share_parameters(net) -> List[str]:
    """Feed every parameter that several functions take through one Identity, in place.

    A recurrent layer's weights are taken by its copy at every step of the unrolled loop.
    nnabla's graph builder gives each of those uses a variable of its own (one array, but no
    link between the uses), and ``nn.grad`` (the graph the exact replay step, the curvature
    behind ``--lr auto`` and the cross-fitted replay differentiate) then finds the parameter
    at one use only: its gradient would hold one step's part (measured on an Elman RNN over
    12 steps: the recurrent bias's gradient was the last step's alone, 18% of the whole).
    Plain backward passes (the fd step, SGD) accumulate every use and were right. Through
    one ``Identity`` (output ``NAME/shared``, a variable of the parameter's shape), the
    parameter has one use, and the gradient of every step adds up in the Identity's output
    as it does for any variable taken twice.

    Returns:
        A note per parameter changed, e.g. ``"Affine/affine/W: taken by 12 functions, fed to
        them through one Identity"``.

    """
    params = {v.name: v for v in net.variable if v.type == "Parameter"}
    uses = Counter(i for f in net.function for i in f.input if i in params)
    names = {v.name for v in net.variable} | {f.name for f in net.function}
    notes = []
    for name, n in uses.items():
        if n < 2:
            continue
        shared = f"{name}/shared"
        while shared in names:
            shared += "_"
        names.add(shared)
        for f in net.function:
            for k, i in enumerate(f.input):
                if i == name:
                    f.input[k] = shared
        v = net.variable.add()
        v.name, v.type = shared, "Buffer"
        v.shape.CopyFrom(params[name].shape)
        f = net.function.add()
        f.name, f.type = shared, "Identity"
        f.input.append(name)
        f.output.append(shared)
        notes.append(f"{name}: taken by {n} functions, fed to them through one Identity")
    return notes


def one_variable_per_column(net, inputs: Dict[str, str], where: str) -> Tuple[Dict, List[str]]:
    """Make every dataset column feed one variable of ``net``, in place.

    The console gives a loss's target a variable of its own (``SquaredError_T``), fed from a
    dataset column like any input; an autoencoder's target is ``x``, the column ``Input``
    reads too. ``nnabla_cli train`` fills both with the same values. The replay fills one
    variable per column, so every function that reads a second variable of a column reads
    the first one instead (the same values), and the second is removed.

    Args:
        inputs: variable -> dataset column (the optimizer's or the executor's data variables).

    Returns:
        ``(variable -> column`` with one variable per column, ``notes)``.

    Raises:
        NetworkDefinitionError: two variables of one column with different shapes (nnabla
            cannot fill both from one column either).

    """
    shapes = {v.name: tuple(v.shape.dim) for v in net.variable}
    first: Dict[str, str] = {}
    kept: Dict[str, str] = OrderedDict()
    notes = []
    for var, column in inputs.items():
        keep = first.setdefault(column, var)
        if keep == var:
            kept[var] = column
            continue
        if shapes.get(var) != shapes.get(keep):
            raise NetworkDefinitionError(
                f"{where}: variables '{keep}' {shapes.get(keep)} and '{var}' {shapes.get(var)} "
                f"of network '{net.name}' both read dataset column '{column}' but have "
                "different shapes; give them the same shape (a Reshape layer after one) and "
                "train again"
            )
        for f in net.function:
            for k, i in enumerate(f.input):
                if i == var:
                    f.input[k] = keep
        for k, v in enumerate(net.variable):
            if v.name == var:
                del net.variable[k]
                break
        notes.append(f"{var}: reads column '{column}' as '{keep}' does; fed through '{keep}'")
    return kept, notes
