"""Every check of a run's options, inputs and output places, before anything is computed.

:func:`~sgd_influence_plugin.runner.run` calls, in this order:

1. :func:`check_options`: the numbers and the choice of model files, from the request alone;
2. :func:`check_output_places`: the output CSV and its companions, the cache folder, against
   the input files and the folders of the images the CSVs name (after the model is read,
   which names the default datasets);
3. :func:`check_loaded`: labels, weight decay, the share to remove and free space, once the
   datasets are decoded.

Messages use the option names of the interface that called (:class:`FlagNames`), e.g. the
console plugin's ``--remove_ratio`` or the CLI's ``--remove-ratio``.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Sequence, Set

import numpy as np

from .dataset import Dataset, is_file_cell, read_csv_table
from .errors import DatasetError, OutputError, SettingsError
from .io_utils import locked_by_another, nearest_existing
from .output import COMPANIONS, planned_paths
from .ownership import FOLDER_MARKER, check_replaceable, read_ledger
from .settings import DEFAULT_TRIALS

#: Thumbnail sizes accepted, in pixels (a thumbnail is at most this wide and high).
THUMB_SIZES = (16, 512)
#: Largest seed numpy's RandomState takes.
MAX_SEED = 2**32 - 1
#: Most trials a run accepts. Each trial is a whole training epoch plus its replay, so M
#: trials take M times as long; averaging M trials lowers the noise of one trial by
#: 1/sqrt(M) only, so past a few dozen nothing changes the ranking, and 1000 trials of even a
#: tiny model take hours. A larger number is a typing error, not a request.
MAX_TRIALS = 1000
#: Marker file in a cache folder the tool made; only such a folder (or an empty one) is used.
CACHE_MARKER = ".sgd_influence_cache"
#: Lock file in a cache folder while a run uses it (see ``io_utils.try_lock``).
CACHE_LOCK = ".sgd_influence_lock"


@dataclass(frozen=True)
class FlagNames:
    """How the calling interface spells each option, for messages (None: it has none)."""

    model: str = "--model"
    config: str = "--config"
    params: str = "--params"
    train: str = "--train"
    val: str = "--val"
    output: str = "--output"
    cache_dir: Optional[str] = "--cache-dir"
    lr: str = "--lr"
    weight_decay: Optional[str] = "--weight-decay"
    batch_size: str = "--batch-size"
    epochs: str = "--epochs"
    trials: str = "--trials"
    seed: str = "--seed"
    thumb_size: Optional[str] = "--thumb-size"
    remove: Optional[str] = "--remove"
    remove_ratio: str = "--remove-ratio"


#: The ``sgd-influence`` command line.
CLI_FLAGS = FlagNames()
#: The console plugin's dialog (``SGD_Influence_Cleansing.py``).
PLUGIN_FLAGS = FlagNames(
    cache_dir=None,
    weight_decay=None,
    batch_size="--batch_size",
    thumb_size=None,
    remove=None,
    remove_ratio="--remove_ratio",
)


# ----------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def check_options(request, flags: FlagNames = CLI_FLAGS) -> None:
    """Check the request's own values (no file is read).

    Args:
        request: a :class:`~sgd_influence_plugin.runner.RunRequest`.
        flags: option names for messages.

    Raises:
        SettingsError: a value is out of range, or the model files are given inconsistently.

    """
    if request.params and not request.config:
        raise SettingsError(
            f"{flags.params} {request.params} needs {flags.config}: parameters go with the "
            f"network definition they were saved with; give {flags.config} net.nntxt too, or "
            f"give {flags.model} results.nnp alone"
        )
    if request.model and (request.config or request.params):
        given = flags.config if request.config else flags.params
        raise SettingsError(
            f"both {flags.model} and {given} given: give either {flags.model} results.nnp, or "
            f"{flags.config} net.nntxt with {flags.params} parameters.h5"
        )
    if not request.model and not request.config:
        raise SettingsError(
            f"no model given: pass {flags.model} results.nnp, or {flags.config} net.nntxt with "
            f"{flags.params} parameters.h5"
        )
    s = request.settings
    if _is_number(s.lr) and not (math.isfinite(s.lr) and s.lr > 0):
        raise SettingsError(f"{flags.lr} {s.lr}: the learning rate must be a positive number")
    wd_flag = flags.weight_decay or "weight decay"
    if s.weight_decay is not None and not (
        _is_number(s.weight_decay) and math.isfinite(s.weight_decay) and s.weight_decay >= 0
    ):
        raise SettingsError(
            f"{wd_flag} {s.weight_decay}: the weight decay must be a finite number >= 0"
        )
    for flag, value, what in (
        (flags.batch_size, s.batch_size, "the mini-batch size"),
        (flags.epochs, s.epochs, "the number of epochs"),
        (flags.trials, s.trials, "the number of trials"),
    ):
        if value is not None and not (_is_number(value) and int(value) == value and value >= 1):
            raise SettingsError(f"{flag} {value}: {what} must be a whole number >= 1")
    if s.trials > MAX_TRIALS:
        raise SettingsError(
            f"{flags.trials} {s.trials}: give at most {MAX_TRIALS} trials; each is a whole "
            "training epoch and its replay, and averaging more than a few dozen no longer "
            f"changes the ranking (default {DEFAULT_TRIALS})"
        )
    seed, trials = s.seed, s.trials
    top = MAX_SEED - (trials - 1)
    if not (_is_number(seed) and int(seed) == seed and 0 <= seed <= top):
        why = (
            f" (the {trials} trials use seeds {flags.seed} to {flags.seed} + {trials - 1})"
            if trials > 1
            else ""
        )
        raise SettingsError(
            f"{flags.seed} {seed}: give a whole number in 0..{top}{why}; numpy's seeds lie in "
            f"0..{MAX_SEED}"
        )
    lo, hi = THUMB_SIZES
    if not (_is_number(request.thumb_size) and lo <= request.thumb_size <= hi):
        raise SettingsError(
            f"{flags.thumb_size or 'thumbnail size'} {request.thumb_size}: thumbnails must be "
            f"{lo} to {hi} pixels"
        )
    if request.remove_ratio is not None:
        _check_ratio(request.remove_ratio, flags)


def _check_ratio(ratio, flags: FlagNames) -> None:
    if not (_is_number(ratio) and 0 <= ratio < 1):
        raise SettingsError(
            f"{flags.remove_ratio} {ratio}: the share of rows to remove must be in [0, 1), "
            "e.g. 0.05 for 5%"
        )


def check_remove_choice(
    remove: Optional[int], remove_ratio: Optional[float], flags: FlagNames = CLI_FLAGS
) -> None:
    """At most one of ``remove`` (a count >= 0) and ``remove_ratio`` (in [0, 1)); neither
    means: apply the recommendation.

    Raises:
        SettingsError: both, or a value out of range.

    """
    if remove is not None and remove_ratio is not None:
        raise SettingsError(
            f"give at most one of {flags.remove or 'a number of rows'} N or "
            f"{flags.remove_ratio} R (neither: apply the recommendation)"
        )
    if remove is not None and not (_is_number(remove) and int(remove) == remove and remove >= 0):
        raise SettingsError(f"{flags.remove} {remove}: the number of rows must be >= 0")
    if remove_ratio is not None:
        _check_ratio(remove_ratio, flags)


def rows_to_remove(
    n: int,
    remove: Optional[int],
    remove_ratio: Optional[float],
    flags: FlagNames = CLI_FLAGS,
    train_csv: str = "the training CSV",
) -> int:
    """The number of rows to drop from ``n``: ``remove``, or ``round(remove_ratio * n)``.

    Raises:
        SettingsError: it would remove every row (the message names the option given).

    """
    count = int(remove) if remove is not None else int(round(remove_ratio * n))
    if count >= n:
        if remove is not None:
            raise SettingsError(
                f"{flags.remove} {remove}: {train_csv} has {n} rows; remove at most {n - 1}"
            )
        top = (n - 0.5) / n  # round(r * n) < n  <=>  r * n < n - 0.5
        raise SettingsError(
            f"{flags.remove_ratio} {remove_ratio}: would remove {count} of the {n} rows of "
            f"{train_csv}, leaving none; give a share below {top:.4g}"
        )
    return count


def check_weight_decay(value: float, source: str, flags: FlagNames = CLI_FLAGS) -> None:
    """The weight decay the replay will use (given, or the solver's) must be finite, >= 0."""
    if not (math.isfinite(value) and value >= 0):
        fix = f"; fix it there or pass {flags.weight_decay}" if flags.weight_decay else ""
        raise SettingsError(
            f"{source}: the solver's weight_decay is {value}; it must be a finite number >= 0" + fix
        )


# ----------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------


def _real(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies below it (symbolic links resolved)."""
    p, f = _real(path), _real(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def _same(a: str, b: str) -> bool:
    if _real(a) == _real(b):
        return True
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def image_folders_of_table(csv_path: str, header: Sequence[str], rows) -> Set[str]:
    """The folders (absolute) of every file a dataset CSV names (columns not starting ``#``)."""
    base = os.path.dirname(os.path.abspath(csv_path))
    cols = [c for c, cell in enumerate(header) if not cell.startswith("#")]
    out: Set[str] = set()
    for row in rows:
        for c in cols:
            text = row[c].strip()
            if is_file_cell(text):
                out.add(os.path.dirname(os.path.join(base, text)))
    return out


def image_folders(*csv_paths: str) -> Set[str]:
    """The folders of every file the dataset CSVs name, e.g. ``data/train`` (absolute); only
    the CSV text is read, no image.
    """
    out: Set[str] = set()
    for path in csv_paths:
        header, rows = read_csv_table(path)
        out |= image_folders_of_table(path, header, rows)
    return out


def _check_writable(path: str, flag: str) -> None:
    """``path`` (a file or folder to be made) can be created: its nearest existing ancestor
    is a folder this process can write in.
    """
    parent = nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(parent):
        raise OutputError(
            f"{path}: cannot be created because {parent} is a file, not a folder; give "
            f"another {flag}"
        )
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".sgd_influence_probe_")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(
            f"{path}: cannot write in {parent} ({e.strerror or e}); give another {flag} or "
            "fix the folder's permissions"
        ) from e


def _limits(folder: str):
    """``(longest name, longest path)`` in bytes where ``folder`` (or its nearest existing
    ancestor) lies; 255 and 4096 (Linux's usual values) where the system does not say, and no
    path limit on Windows (long paths depend on the system's settings there).
    """
    at = nearest_existing(folder)
    limits = []
    for key, default in (("PC_NAME_MAX", 255), ("PC_PATH_MAX", 4096 if os.name != "nt" else 0)):
        try:
            value = os.pathconf(at, key)
        except (AttributeError, OSError, ValueError):
            value = default
        limits.append(value if value and value > 0 else default)
    return limits[0], limits[1]


#: Bytes a writer adds below an output's folder: the staging folder
#: (``.sgd_influence_staging_XXXXXXXX/``) and a thumbnail (``_thumbnails/0000000.png``).
_WRITER_DEPTH = 32 + len("_thumbnails/") + 12


def check_path_fits(path: str, flag: str, names: Sequence[str]) -> None:
    """The file system must take the names a writer makes at ``path``: every folder on the
    way and each of ``names`` (written in ``path``'s folder) at most its longest name, and the
    deepest path the writer makes (in its staging folder) at most its longest path.

    Checked before computing, so a long name is refused at once, not after the computation
    with a misleading "no space" (issue 18).

    Raises:
        OutputError: naming the part that is too long and its length.

    """
    full = os.path.abspath(path)
    folder = os.path.dirname(full)
    name_max, path_max = _limits(folder)
    parts = [p for p in folder.split(os.sep) if p] + list(names)
    for part in parts:
        size = len(os.fsencode(part))
        if size > name_max:
            shown = part if len(part) <= 60 else part[:28] + "..." + part[-28:]
            raise OutputError(
                f"{flag} {shown}: a name of {size} bytes, but this file system takes at most "
                f"{name_max}; give a shorter {flag}"
            )
    deepest = len(os.fsencode(folder)) + _WRITER_DEPTH + max(len(os.fsencode(n)) for n in names)
    if path_max and deepest >= path_max:
        raise OutputError(
            f"{flag}: the path is {len(os.fsencode(full))} bytes long, and the files written "
            f"there would need {deepest}, but this system takes at most {path_max}; give a "
            f"shorter {flag} (a folder nearer the root)"
        )


def check_output_csv(
    path: str,
    flag: str,
    input_files: Iterable[Optional[str]] = (),
    image_folders: Iterable[str] = (),
) -> None:
    """An output CSV must be a file path ending in ``.csv`` that is not an input.

    Refused: "", ".", a path ending in a separator, an existing folder, a name not ending in
    ``.csv`` (e.g. an existing image), an input file (model, parameters, the dataset CSVs), a
    place inside a folder of the images the CSVs name, and a place that cannot be written.
    Whether an existing CSV may be replaced is :func:`~sgd_influence_plugin.ownership.
    check_replaceable`'s decision.

    Raises:
        SettingsError: the path is not a CSV file path, or is an input.
        OutputError: the place is inside an image folder or not writable.

    """
    example = "e.g. sgd_influence/influence.csv"
    if not isinstance(path, str) or not path.strip():
        raise SettingsError(f"{flag} is empty; give the path of a .csv file to write, {example}")
    seps = tuple(s for s in (os.sep, os.altsep, "/") if s)
    name = os.path.basename(path)
    if path.endswith(seps) or name in (".", "..") or os.path.isdir(path):
        raise SettingsError(
            f"{flag} {path}: names a folder; give the path of a .csv file to write in it, "
            f"e.g. {os.path.join(path, 'influence.csv')}"
        )
    if not name.lower().endswith(".csv") or name.lower() == ".csv":
        exists = " (an existing file, which is left alone)" if os.path.lexists(path) else ""
        raise SettingsError(
            f"{flag} {path}: the output must be a file name ending in .csv{exists}, {example}"
        )
    stem = os.path.splitext(name)[0]
    check_path_fits(path, flag, [stem + suffix for suffix in (".csv", *COMPANIONS.values())])
    for src in input_files:
        if src and _same(path, src):
            raise SettingsError(
                f"{path}: refusing to overwrite the input {src}; choose another {flag}"
            )
    for folder in image_folders:
        if _inside(os.path.dirname(os.path.abspath(path)), folder):
            raise OutputError(
                f"{path}: lies in {folder}, a folder of the dataset's images; write the outputs "
                f"elsewhere (another {flag})"
            )
    _check_writable(path, flag)


def check_output_folder(
    folder: str,
    flag: str,
    files: Sequence[str],
    folders: Sequence[str] = (),
    input_files: Iterable[Optional[str]] = (),
    image_folders: Iterable[str] = (),
) -> None:
    """A folder a writer fills with files of fixed names (``evaluate --output-dir``, the
    paper-protocol script's ``--out``): the rule of :mod:`.ownership` for each of them.

    Refused: an empty value; an existing file; a folder that is, or lies in, a folder of the
    dataset's images; an output file that is an input (e.g. ``--test results.csv`` written
    into the same folder); an existing file or folder of those names the tool did not write;
    a damaged ledger; a place that cannot be written.

    Args:
        folder: the output folder (made if new).
        flag: the option that names it, for messages.
        files: names of the files written into it.
        folders: names of the folders written into it (each holds
            :data:`~sgd_influence_plugin.ownership.FOLDER_MARKER`).
        input_files: files the writer reads (None entries skipped).
        image_folders: folders of the images the dataset CSVs name.

    Raises:
        SettingsError: empty, or an output is an input.
        OutputError: any other of the above.

    """
    image_folders = list(image_folders)
    if not isinstance(folder, str) or not folder.strip():
        raise SettingsError(f"{flag} is empty; give a folder for the results, e.g. evaluation")
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise OutputError(
            f"{flag} {folder}: is a file, not a folder; give a folder for the results (a new "
            "one, or one sgd-influence wrote into)"
        )
    check_path_fits(os.path.join(folder, "x"), flag, [*files, *folders])
    for images in image_folders:
        if _inside(folder, images):
            raise OutputError(
                f"{flag} {folder}: lies in {images}, a folder of the dataset's images; write "
                "the results elsewhere"
            )
    inputs = [p for p in input_files if p]
    if os.path.isdir(folder):
        read_ledger(folder)
    for name in files:
        target = os.path.join(folder, name)
        for src in inputs:
            if _same(target, src):
                raise SettingsError(
                    f"{target}: refusing to overwrite the input {src}; choose another {flag}"
                )
        check_replaceable(target, flag)
    for name in folders:
        target = os.path.join(folder, name)
        _check_replaced_folder(target, f"'{name}' folder", flag, inputs, image_folders)
        check_replaceable(target, flag, folder=True, marker=FOLDER_MARKER)
    _check_writable(os.path.join(folder, files[0] if files else "probe"), flag)


def _check_replaced_folder(
    path: str, what: str, flag: str, input_files: Iterable[str], image_folders: Iterable[str]
) -> None:
    """A folder the tool fills must not hold, be, or lie inside an input."""
    for src in input_files:
        if src and _inside(src, path):
            raise OutputError(
                f"{path}: the {what} would hold the input {src}; choose another {flag}"
            )
    for folder in image_folders:
        if _inside(folder, path) or _inside(path, folder):
            raise OutputError(
                f"{path}: the {what} would overlap {folder}, a folder of the dataset's images; "
                f"choose another {flag}"
            )


def check_cache_dir(
    cache_dir: str,
    flags: FlagNames,
    input_files: Iterable[Optional[str]],
    image_folders: Iterable[str] = (),
    output_csv: Optional[str] = None,
) -> None:
    """The cache folder must be new, empty, or one the tool made (holding
    :data:`CACHE_MARKER`); not a file, not the output folder, and not holding, being or lying
    inside an input or an image folder.

    Raises:
        OutputError: any of these, or the place is not writable.

    """
    flag = flags.cache_dir or "cache folder"
    if not cache_dir or not str(cache_dir).strip():
        raise OutputError(f"{flag} is empty; give a folder for the cache, or leave it out")
    if os.path.lexists(cache_dir) and not os.path.isdir(cache_dir):
        raise OutputError(
            f"{flag} {cache_dir}: is a file; give a folder (new or empty) for the cache"
        )
    inputs = [p for p in input_files if p]
    _check_replaced_folder(cache_dir, "cache folder", flag, inputs, image_folders)
    if output_csv:
        plan = planned_paths(output_csv)
        if _same(cache_dir, os.path.dirname(plan.csv)) or _inside(cache_dir, plan.thumbnails):
            raise OutputError(
                f"{flag} {cache_dir}: is where the outputs go; keep the cache in a folder "
                f"of its own, e.g. {os.path.join(os.path.dirname(plan.csv), 'cache')}"
            )
    if os.path.isdir(cache_dir):
        entries = os.listdir(cache_dir)
        if entries and CACHE_MARKER not in entries:
            raise OutputError(
                f"{flag} {cache_dir}: is not empty and is not a cache folder sgd-influence made "
                f"(no {CACHE_MARKER} in it); give a new or empty folder for the cache"
            )
        if locked_by_another(os.path.join(cache_dir, CACHE_LOCK)):
            raise OutputError(cache_in_use(cache_dir, flag))
        probe_in = os.path.join(cache_dir, "probe")
    else:
        probe_in = cache_dir
    _check_writable(probe_in, flag)


def cache_in_use(cache_dir: str, flag: str) -> str:
    """The message for a cache folder another run holds."""
    return (
        f"{flag} {cache_dir}: is in use by another sgd-influence run; wait for it to end, or "
        f"give another {flag}"
    )


def check_output_places(
    request,
    flags: FlagNames,
    input_files: Sequence[Optional[str]],
    image_dirs: Iterable[str] = (),
) -> None:
    """The output CSV, every companion it will write, and the cache folder (see
    :func:`check_output_csv`, :func:`check_cache_dir` and
    :func:`~sgd_influence_plugin.ownership.check_replaceable`).

    Args:
        request: a :class:`~sgd_influence_plugin.runner.RunRequest`.
        flags: option names for messages.
        input_files: model, config, params and the dataset CSVs (None entries skipped).
        image_dirs: folders of the images the dataset CSVs name (:func:`image_folders`).

    """
    inputs = [p for p in input_files if p]
    image_dirs = list(image_dirs)
    check_output_csv(request.output, flags.output, inputs, image_dirs)
    plan = planned_paths(request.output)
    if os.path.isdir(os.path.dirname(plan.csv)):
        read_ledger(os.path.dirname(plan.csv))  # a damaged one is refused now, not at the end
    check_replaceable(plan.csv, flags.output)
    for kind in COMPANIONS:
        target = getattr(plan, kind)
        for src in inputs:
            if _same(target, src):
                raise SettingsError(
                    f"{target}: refusing to overwrite the input {src}; choose another "
                    f"{flags.output} name"
                )
        if kind == "thumbnails":
            _check_replaced_folder(target, "thumbnails folder", flags.output, inputs, image_dirs)
        if kind == "report" and not request.report:
            continue
        if kind == "cleansed" and request.remove_ratio is None:
            continue
        check_replaceable(target, flags.output, folder=kind == "thumbnails")
    if request.cache_dir is not None:
        check_cache_dir(request.cache_dir, flags, inputs, image_dirs, request.output)


# ----------------------------------------------------------------------------------------
# Loaded data
# ----------------------------------------------------------------------------------------


def check_labels(dataset: Dataset, label_classes: Mapping[str, int]) -> None:
    """Every label that feeds a categorical loss is a whole number in 0..C-1.

    Args:
        dataset: a decoded dataset.
        label_classes: dataset column -> number of classes C (``ModelInfo.label_classes``).

    Raises:
        DatasetError: the first row whose label is not, naming the file, row and column.

    """
    for column, classes in label_classes.items():
        if column not in dataset.arrays:
            continue
        cells = dataset.columns.get(column, [])
        header_cell = cells[0] if len(cells) == 1 else None
        ci = dataset.header.index(header_cell) if header_cell else None
        values = dataset.arrays[column].reshape(len(dataset.rows), -1)
        for r in range(dataset.size):
            text = dataset.rows[r][ci].strip() if ci is not None else ""
            if ci is not None and not is_file_cell(text):
                v = float(text)  # the loader accepted it as a number: exact, in float64
            else:
                v = float(values[r][0])
                text = f"{v:g}"
            where = f"{dataset.path} row {dataset.row_number(r)}, column '{header_cell or column}'"
            if v != int(v):
                raise DatasetError(
                    f"{where}: label '{text}' is not a whole number; labels are class indices "
                    f"0..{classes - 1}"
                )
            if not 0 <= v < classes:
                raise DatasetError(
                    f"{where}: label {text} is out of range for the network's {classes} classes "
                    f"(0..{classes - 1}); fix the label, or the size of the network's output"
                )


def check_known_rate(lr, weight_decay: float, n: int, batch_size: int, info) -> None:
    """A rate known before computing (a number, or ``solver``) and the weight decay must leave
    a model to replay (:func:`~sgd_influence_plugin.api.check_rates`); ``auto`` is checked
    once the curvature has chosen it.
    """
    from .api import check_rates
    from .core import n_steps

    rate = info.solver.lr if lr == "solver" else lr
    if _is_number(rate) and math.isfinite(rate) and rate > 0:
        check_rates(float(rate), float(weight_decay), n_steps(n, max(1, int(batch_size))))


def estimate_bytes(
    n_train: int,
    n_params: int,
    batch_size: int,
    trials: int,
    cache_all: bool,
    thumb_size: int,
    channels: int,
) -> Dict[str, int]:
    """A rough size of what a run writes: ``{"cache": bytes, "output": bytes}``.

    The cache keeps float32 parameters once per trial (and before every step of the replayed
    epoch with ``cache_all``), plus the order and learning rates; the output is the CSV
    (about 150 bytes a row) and one PNG thumbnail a row (taken as half its raw pixel bytes).
    """
    steps = max(1, math.ceil(n_train / max(1, batch_size)))
    params = 4 * n_params + 4096
    per_trial = params * (1 + (steps if cache_all else 0)) + 4 * n_train + 4 * steps + 4096
    thumbs = n_train * (thumb_size * thumb_size * max(1, channels) // 2 + 200)
    return {"cache": trials * per_trial, "output": 150 * n_train + thumbs + 65536}


def check_free_space(
    output_csv: str, cache_root: str, need: Mapping[str, int], flags: FlagNames
) -> None:
    """Refuse a run whose output or cache would not fit the free space (see
    :func:`estimate_bytes`); the cache and output share the space when on one disk.
    """
    out_at = nearest_existing(os.path.dirname(os.path.abspath(output_csv)))
    cache_at = nearest_existing(cache_root)
    same = os.stat(out_at).st_dev == os.stat(cache_at).st_dev
    for at, needed, flag in (
        (out_at, need["output"] + (need["cache"] if same else 0), flags.output),
        (cache_at, need["cache"] + (need["output"] if same else 0), flags.cache_dir),
    ):
        free = shutil.disk_usage(at).free
        if needed > free:
            where = f"another {flag}" if flag else "another place"
            raise OutputError(
                f"{at}: about {needed / 1e6:.1f} MB are needed but only {free / 1e6:.1f} MB "
                f"are free; free some space or choose {where}"
            )


def check_loaded(
    request,
    info,
    train: Dataset,
    val: Dataset,
    n_params: int,
    flags: FlagNames,
) -> None:
    """The checks that need the decoded datasets and the model description.

    Args:
        request: the :class:`~sgd_influence_plugin.runner.RunRequest`.
        info: the model's :class:`~sgd_influence_plugin.nnabla_adapter.ModelInfo`.
        train / val: the decoded datasets.
        n_params: trainable scalars, for the cache size.
        flags: option names for messages.

    Raises:
        DatasetError, SettingsError, OutputError: see the individual checks.

    """
    for d in (train, val):
        check_labels(d, getattr(info, "label_classes", {}))
    s = request.settings
    wd = s.weight_decay if s.weight_decay is not None else info.solver.weight_decay
    check_weight_decay(wd, info.source, flags)
    if request.remove_ratio is not None:
        rows_to_remove(train.size, None, request.remove_ratio, flags, train.path)
    batch = s.batch_size or info.solver.batch_size
    check_known_rate(s.lr, wd, train.size, batch, info)
    channels = max((shape[0] for shape in info.input_shapes.values() if len(shape) == 3), default=1)
    need = estimate_bytes(
        train.size,
        n_params,
        batch,
        s.trials,
        s.cache == "all",
        request.thumb_size,
        channels,
    )
    cache_root = request.cache_dir or tempfile.gettempdir()
    check_free_space(request.output, cache_root, need, flags)
