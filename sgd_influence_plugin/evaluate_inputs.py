"""The inputs of ``sgd-influence evaluate`` (:mod:`.evaluate`): its options (``--ratios``,
``--seeds``, ``--retrain``) read and checked, every check that needs no decoded data made
before anything is loaded (:func:`check_evaluate`), then the model and the three datasets
loaded and checked before anything is computed (:func:`load_inputs`), and the label-noise
ground truth (:func:`read_noise`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import label_values, options, places, validation
from .dataset import Dataset, read_csv_table
from .errors import InputError, SettingsError
from .evaluate_report import OUTPUT_FILES
from .inputs import check_separate, read_datasets
from .nnabla_adapter import load_model
from .nnabla_adapter.rows import check_rows_independent
from .settings import MAX_SEED, InfluenceSettings, is_number

DEFAULT_RATIOS = options.default("ratios")


def parse_floats(text: str, what: str) -> List[float]:
    """``--WHAT``: comma-separated numbers."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise SettingsError(f"--{what} '{text}': give comma-separated numbers") from e


def parse_seeds(text: str) -> List[int]:
    """``--seeds``: comma-separated whole numbers (their range is checked by
    :func:`check_evaluate`).
    """
    values = parse_floats(text, "seeds")
    for v in values:
        if not (np.isfinite(v) and v == int(v)):
            raise SettingsError(f"--seeds '{text}': {v:g} is not a whole number; give e.g. 0,1,2")
    return [int(v) for v in values]


@dataclass(frozen=True)
class EvaluateRequest:
    """Files and options of one experiment (``sgd-influence evaluate``,
    :func:`.evaluate.evaluate`).

    Attributes:
        model_files: ``{"model": results.nnp}``, or ``{"config": net.nntxt, "params": .h5 or
            .protobuf}`` (as :class:`.runner.RunRequest`).
        train_csv / val_csv / test_csv: the dataset CSVs; the test set measures accuracy.
        out_dir: the folder of ``results.csv``, ``figure2.png``, ``summary.md`` and
            ``settings.yaml``.
        ratios: shares of the training rows to remove, each in [0, 1).
        seeds: one experiment per seed (its trials use seed, seed + 1, ...).
        retrain: ``last`` (the last epoch again, removed rows weighted 0) or ``scratch``.
        settings: the influence settings.
        noise_csv: the label-noise ground truth (``train_noise.csv``), or None.

    """

    model_files: Dict[str, Optional[str]]
    train_csv: str
    val_csv: str
    test_csv: str
    out_dir: str
    ratios: Sequence[float]
    seeds: Sequence[int]
    retrain: str
    settings: InfluenceSettings
    noise_csv: Optional[str] = None

    @property
    def csvs(self) -> List[str]:
        """The three dataset CSVs: training, validation, test."""
        return [self.train_csv, self.val_csv, self.test_csv]


def check_evaluate(req: EvaluateRequest) -> None:
    """Every check that needs no decoded data, before anything is loaded or computed.

    The model files and the settings as for ``run`` (:func:`.validation.check_options`),
    at least one share in ``ratios``, each in [0, 1), at least one seed, each a whole number
    whose trials' seeds stay in numpy's range, and ``out_dir`` with
    :func:`.places.check_output_folder`: not a file, not in an image folder, no result
    file that is an input or a file the tool did not write.

    Raises:
        SettingsError, OutputError: naming the option and the fix.

    """
    from .runner import RunRequest

    files = req.model_files
    validation.check_options(
        RunRequest(
            output="results.csv",
            model=files.get("model"),
            config=files.get("config"),
            params=files.get("params"),
            settings=req.settings,
        )
    )  # validates the settings too (InfluenceSettings.validate)
    if req.retrain not in ("last", "scratch"):
        raise SettingsError(f"--retrain {req.retrain}: choose last or scratch")
    _check_ratios(req.ratios)
    _check_seeds(req.seeds, req.settings.trials)
    inputs = [*files.values(), *req.csvs, req.noise_csv]
    places.check_output_folder(
        req.out_dir, "--output-dir", OUTPUT_FILES, (), inputs, places.image_folders(*req.csvs)
    )


def _check_ratios(ratios: Sequence[float]) -> None:
    """At least one share, each in [0, 1)."""
    if not len(ratios):
        raise SettingsError(
            "--ratios is empty: give the shares of the training rows to remove, e.g. "
            f"{DEFAULT_RATIOS}"
        )
    for r in ratios:
        if not (is_number(r) and np.isfinite(r) and 0 <= r < 1):
            raise SettingsError(
                f"--ratios {','.join(f'{x:g}' for x in ratios)}: {r:g} is not a share in "
                "[0, 1); give e.g. 0,0.05,0.1"
            )


def _check_seeds(seeds: Sequence[int], trials: int) -> None:
    """At least one seed, each a whole number whose ``trials`` trials' seeds (seed, seed + 1,
    ...) stay in numpy's range.
    """
    if not len(seeds):
        raise SettingsError("--seeds is empty: give at least one seed, e.g. 0,1,2")
    top = MAX_SEED - (trials - 1)
    for seed in seeds:
        if not (is_number(seed) and int(seed) == seed and 0 <= seed <= top):
            raise SettingsError(
                f"--seeds {','.join(str(x) for x in seeds)}: {seed} is not a whole number in "
                f"0..{top} (each seed's {trials} trials use seeds up to seed + "
                f"{trials - 1}; numpy's seeds lie in 0..{MAX_SEED})"
            )


#: ``flipped`` cells of a label-noise ground truth, and what each means.
NOISE_FLAGS = {"1": True, "true": True, "0": False, "false": False}
_NOISE_FIX = (
    "give the sample project's train_noise.csv: one row per training row, in the same order, "
    "with a 'flipped' column of 1 (the label was flipped) or 0"
)


def read_noise(path: str, n: int) -> np.ndarray:
    """Boolean (N,) mask of flipped labels from a ground-truth CSV with a ``flipped`` column
    (cells ``1``/``0`` or ``True``/``False``, any case).

    Raises:
        InputError: no such column, a cell that is neither, or not one row per training row:
            a guess would give wrong precision figures.

    """
    try:
        header, rows = read_csv_table(path)
    except InputError as e:  # an empty file asks for a dataset's header: say what this is
        if not os.path.isfile(path):
            raise
        raise InputError(f"{path}: not a label-noise file ({e}); {_NOISE_FIX}") from None
    if "flipped" not in header:
        raise InputError(f"{path}: no 'flipped' column; {_NOISE_FIX}")
    col = header.index("flipped")
    flags = []
    for i, row in enumerate(rows):
        cell = row[col].strip() if col < len(row) else ""
        if cell.lower() not in NOISE_FLAGS:
            raise InputError(f"{path} row {i + 1}: flipped '{cell}' is not 1 or 0; {_NOISE_FIX}")
        flags.append(NOISE_FLAGS[cell.lower()])
    if len(flags) != n:
        raise InputError(f"{path}: {len(flags)} rows but the training CSV has {n}; {_NOISE_FIX}")
    return np.array(flags, dtype=bool)


@dataclass
class EvaluateInputs:
    """What the experiment reads, loaded and checked (:func:`load_inputs`).

    Attributes:
        model: the trained model (its parameters are the experiment's starting point).
        train / val / test: the three datasets, decoded.
        flipped: the rows whose labels were flipped (``--noise``), or None.
        counts: the numbers of rows to remove, one per distinct share, ascending.

    """

    model: object
    train: Dataset
    val: Dataset
    test: Dataset
    flipped: Optional[np.ndarray]
    counts: List[int]


def load_inputs(
    model_files: Dict[str, Optional[str]],
    csvs: Sequence[str],
    ratios: Sequence[float],
    settings: InfluenceSettings,
    noise_csv: Optional[str] = None,
) -> EvaluateInputs:
    """The model and the datasets ``csvs`` (training, validation, test) loaded, every label
    checked against the network's classes, the training set's size and the replay's rate
    (:func:`.validation.check_replay_data`, as for run and check), the ground truth read;
    after :func:`check_evaluate`, before anything is computed.

    Raises:
        SGDInfluenceError: a bad input or setting, naming it and the fix.

    """
    train_csv, val_csv, test_csv = csvs  # a test on the validation rows: allowed, biased
    check_separate([("--train", train_csv), ("--val", val_csv)])
    check_separate([("--train", train_csv), ("--test", test_csv)])
    model = load_model(
        model_files.get("model"),
        model_files.get("config"),
        model_files.get("params"),
        settings.context,
    )
    train, val, test = read_datasets([(path, None) for path in csvs], model, settings)
    label_values.check_labels(model.info, (train, val, test))
    check_rows_independent(model, train.arrays, model.info.source)
    validation.check_replay_data(settings, model.info, train)  # as run and check make them
    n = train.size
    flipped = read_noise(noise_csv, n) if noise_csv else None
    counts = sorted({int(round(r * n)) for r in ratios})
    if any(c < 0 or c >= n for c in counts):
        raise SettingsError(f"--ratios {list(ratios)}: shares must be in [0, 1)")
    return EvaluateInputs(model, train, val, test, flipped, counts)
