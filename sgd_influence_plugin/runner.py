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
from .labels import check_labels, read_label_names
from .nnabla_adapter import load_model
from .output import OutputPaths, check_not_input, cleanse, find_columns, write_influence_output
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
        label_names: text file with one class name per line, line 1 for label 0 (see
            :mod:`.labels`); the summary and the report show the names. None = numbers only.

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
    label_names: Optional[str] = None


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
    if request.thumb_size < 1:
        raise SettingsError(
            f"thumbnail size {request.thumb_size}: must be at least 1 pixel (--thumb-size)"
        )
    names = read_label_names(request.label_names) if request.label_names else None
    model = load_model(request.model, request.config, request.params, settings.context)
    info = model.info
    train_csv = _dataset_path(request.train, info.train_dataset, "training", "--train")
    val_csv = _dataset_path(request.val, info.val_dataset, "validation", "--val")
    check_not_input(
        request.output,
        [train_csv, val_csv, request.model, request.config, request.params, request.label_names],
    )
    normalize = info.train_dataset.normalize if info.train_dataset else True
    log(f"reading {train_csv} and {val_csv}")
    train = load_dataset(train_csv, info.input_shapes, normalize)
    val = load_dataset(val_csv, info.input_shapes, normalize)
    if names is not None:
        _, label_col = find_columns(train, list(info.input_shapes))
        labels = [train.cell(i, label_col) for i in range(train.size)] if label_col else None
        check_labels(names, labels, request.label_names, train_csv)
    for note in info.notes:
        log("replay network: " + note)
    log(
        f"{train.size} training and {val.size} validation samples; "
        f"{model.n_params} trained parameters"
    )
    result = compute_influence(
        model, train.arrays, val.arrays, settings, request.cache_dir, progress=progress, log=log
    )
    facts = run_facts(result, settings, info, model.n_params, train_csv, val_csv)
    facts["n_train"], facts["n_val"] = train.size, val.size
    facts["label_names"] = os.path.abspath(request.label_names) if request.label_names else None
    paths = write_influence_output(
        request.output,
        result.scores,
        train,
        list(info.input_shapes),
        facts,
        request.thumb_size,
        request.report,
        losses=result.losses,
        trial_scores=result.trial_scores,
        label_names=names,
    )
    if request.remove_ratio is not None:
        cleansed = os.path.join(os.path.dirname(paths.csv), "cleansed_train.csv")
        cleanse(paths.csv, train_csv, cleansed, remove_ratio=request.remove_ratio)
        paths.cleansed = cleansed
    return paths, result


def run_facts(result: InfluenceResult, settings, info, n_params, train_csv, val_csv) -> dict:
    """What ``settings.yaml`` records: what was asked (``requested``), what was used
    (``used``), how the learning rate was chosen, each trial, timings and versions.
    """
    return {
        "requested": settings.to_dict(),
        "used": {
            "lr": result.run.lr,
            "weight_decay": result.run.weight_decay,
            "batch_size": result.run.batch_size,
            "epochs": settings.epochs,
            "trials": settings.trials,
            "cache": settings.cache,
            "context": settings.context,
            "seeds": [o.seed for o in result.trials],
        },
        "lr_selection": result.run.lr_selection(),
        "trials": [
            {
                "seed": o.seed,
                "lr": o.lr,
                "attempts": o.attempts,
                "u_growth": float(f"{o.u_growth:.4g}"),
                "scale_rms": float(f"{s:.6g}"),
                "validation_loss": round(o.val_loss, 6),
            }
            for o, s in zip(result.trials, result.trial_scales)
        ],
        "model": info.source,
        "train_csv": os.path.abspath(train_csv),
        "val_csv": os.path.abspath(val_csv),
        "n_params": n_params,
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
        "influence": "trials combined: each trial divided by its RMS, averaged, times the "
        "median RMS; units of the mean validation loss",
    }


def _nnabla_version() -> str:
    import nnabla

    return nnabla.__version__
