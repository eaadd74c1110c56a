"""One run from files to files; the console plugin, the CLI and the tests call :func:`run`."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import __version__
from .api import InfluenceResult, compute_influence
from .dataset import load_dataset
from .errors import SettingsError
from .nnabla_adapter import load_model
from .output import OutputPaths, check_not_input, cleanse, write_influence_output
from .settings import InfluenceSettings


@dataclass
class RunRequest:
    """Files and options of one run.

    Attributes:
        output: path of the influence CSV to write.
        model: ``results.nnp``; or ``config`` (``net.nntxt``) with ``params`` (``.h5``).
        train / val: dataset CSVs; None = the ones the network definition names (the
            optimizer's dataset and the validation monitor's), resolved from the cwd.
        settings: the influence settings.
        cache_dir: keep the cache here; None = temporary, removed at the end.
        report: also write report.html.
        remove_ratio: also write ``cleansed_train.csv`` beside the output without this share
            of the most harmful rows (None = don't).
        thumb_size: thumbnail box in pixels.

    """

    output: str
    model: Optional[str] = None
    config: Optional[str] = None
    params: Optional[str] = None
    train: Optional[str] = None
    val: Optional[str] = None
    settings: InfluenceSettings = field(default_factory=InfluenceSettings)
    cache_dir: Optional[str] = None
    report: bool = False
    remove_ratio: Optional[float] = None
    thumb_size: int = 64


def _dataset_path(given, ref, what, flag):
    if given:
        return given
    if ref is None or not ref.uri:
        raise SettingsError(f"the network definition names no {what} dataset; pass {flag}")
    return ref.uri


def run(
    request: RunRequest,
    log: Callable[[str], None] = lambda m: None,
    progress=None,
) -> tuple[OutputPaths, InfluenceResult]:
    """Load, validate every input, compute, and write the outputs (see :mod:`.output`).

    Raises:
        SGDInfluenceError: any bad input, before anything is written.

    """
    settings = request.settings.validate()
    if request.remove_ratio is not None and not 0 <= request.remove_ratio < 1:
        raise SettingsError(f"remove ratio {request.remove_ratio}: must be in [0, 1)")
    model = load_model(request.model, request.config, request.params, settings.context)
    info = model.info
    train_csv = _dataset_path(request.train, info.train_dataset, "training", "--train")
    val_csv = _dataset_path(request.val, info.val_dataset, "validation", "--val")
    check_not_input(
        request.output, [train_csv, val_csv, request.model, request.config, request.params]
    )
    normalize = info.train_dataset.normalize if info.train_dataset else True
    log(f"reading {train_csv} and {val_csv}")
    train = load_dataset(
        train_csv, info.input_shapes, normalize, _stage(progress, "reading training CSV")
    )
    val = load_dataset(
        val_csv, info.input_shapes, normalize, _stage(progress, "reading validation CSV")
    )
    for note in info.notes:
        log("replay network: " + note)
    log(
        f"{train.size} training and {val.size} validation samples; "
        f"{model.n_params} trained parameters"
    )
    result = compute_influence(
        model, train.arrays, val.arrays, settings, request.cache_dir, progress=progress, log=log
    )
    facts = {
        "settings": settings.to_dict(),
        "lr": result.run.lr,
        "weight_decay": result.run.weight_decay,
        "batch_size": result.run.batch_size,
        "epochs": settings.epochs,
        "trials": settings.trials,
        "cache": settings.cache,
        "model": info.source,
        "train_csv": os.path.abspath(train_csv),
        "val_csv": os.path.abspath(val_csv),
        "n_train": train.size,
        "n_val": val.size,
        "n_params": model.n_params,
        "validation_loss": round(result.val_loss, 6),
        "cache_bytes": result.cache_bytes,
        "timings_seconds": {k: round(float(v), 4) for k, v in result.timings.items()},
        "network_changes": list(info.notes),
        "warnings": list(result.warnings),
        "versions": {
            "sgd_influence_plugin": __version__,
            "nnabla": _nnabla_version(),
            "python": platform.python_version(),
        },
        "sign": "influence < 0: removing the sample lowers the validation loss (harmful)",
    }
    paths = write_influence_output(
        request.output,
        result.scores,
        train,
        list(info.input_shapes),
        facts,
        request.thumb_size,
        request.report,
    )
    if request.remove_ratio is not None:
        cleansed = os.path.join(os.path.dirname(paths.csv), "cleansed_train.csv")
        cleanse(paths.csv, train_csv, cleansed, remove_ratio=request.remove_ratio)
        paths.cleansed = cleansed
    return paths, result


def _stage(progress, stage: str):
    """``(done, total)`` callback that reports to ``progress`` as ``stage`` (None: none)."""
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


def _nnabla_version() -> str:
    import nnabla

    return nnabla.__version__
