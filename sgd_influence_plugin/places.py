"""Where a writer may write: the output CSV and its companions, a folder of fixed file names,
the cache folder; checked against the inputs, the folders of the dataset's images, the ownership
rule of :mod:`.ownership` and the file system's limits, before anything is computed.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterable, Optional, Sequence, Set

from .cells import data_path, is_file_cell
from .dataset import read_csv_table
from .errors import OutputError, SettingsError
from .io_utils import locked_by_another, nearest_existing, what_is
from .output import COMPANIONS, planned_paths
from .ownership import FOLDER_MARKER, check_replaceable, read_ledger, set_name
from .validation import FlagNames

#: Marker file in a cache folder the tool made; only such a folder (or an empty one) is used.
CACHE_MARKER = ".sgd_influence_cache"
#: Lock file in a cache folder while a run uses it (see ``io_utils.try_lock``).
CACHE_LOCK = ".sgd_influence_lock"


def _real(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies below it (symbolic links resolved)."""
    p, f = _real(path), _real(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def same_file(a: str, b: str) -> bool:
    """``a`` and ``b`` name one file (the same path once links are resolved, or the same
    file on disk); False when either is missing or unreadable.
    """
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
                out.add(os.path.dirname(data_path(base, text)))
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


def _check_writable(path: str, flag: str, shown: str = "") -> None:
    """``path`` (a file or folder to be made) can be created: its nearest existing ancestor
    is a folder this process can write in; messages name ``shown`` (default ``path``).
    """
    shown = shown or path
    parent = nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(parent):
        raise OutputError(
            f"{shown}: cannot be created because {parent} is {what_is(parent)}, not a folder; "
            f"give another {flag}"
        )
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".sgd_influence_probe_")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(
            f"{shown}: cannot write in {parent} ({e.strerror or e}); give another {flag} or "
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
        if src and same_file(path, src):
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
    _check_the_folder(folder, flag, [*files, *folders], image_folders)
    inputs = [p for p in input_files if p]
    if os.path.isdir(folder):
        read_ledger(folder)
    for name in files:
        target = os.path.join(folder, name)
        for src in inputs:
            if same_file(target, src):
                raise SettingsError(
                    f"{target}: refusing to overwrite the input {src}; choose another {flag}"
                )
        check_replaceable(target, flag)
    for name in folders:
        target = os.path.join(folder, name)
        _check_replaced_folder(target, f"'{name}' folder", flag, inputs, image_folders)
        check_replaceable(target, flag, folder=True, marker=FOLDER_MARKER)
    _check_writable(
        os.path.join(folder, files[0] if files else "probe"), flag, "" if files else folder
    )


def _check_the_folder(folder, flag: str, names: Sequence[str], image_folders) -> None:
    """The output folder itself (:func:`check_output_folder`): given, not a file, room for
    each of ``names`` in it, not in a folder of the dataset's images.
    """
    if not isinstance(folder, str) or not folder.strip():
        raise SettingsError(f"{flag} is empty; give a folder for the results, e.g. evaluation")
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise OutputError(
            f"{flag} {folder}: is {what_is(folder)}, not a folder; give a folder for the "
            "results (a new one, or one sgd-influence wrote into)"
        )
    check_path_fits(os.path.join(folder, "x"), flag, names)
    for images in image_folders:
        if _inside(folder, images):
            raise OutputError(
                f"{flag} {folder}: lies in {images}, a folder of the dataset's images; write "
                "the results elsewhere"
            )


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
            f"{flag} {cache_dir}: is {what_is(cache_dir)}; give a folder (new or empty) for "
            "the cache"
        )
    inputs = [p for p in input_files if p]
    _check_replaced_folder(cache_dir, "cache folder", flag, inputs, image_folders)
    if output_csv:
        plan = planned_paths(output_csv)
        if same_file(cache_dir, os.path.dirname(plan.csv)) or _inside(cache_dir, plan.thumbnails):
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
    _check_writable(probe_in, flag, f"{flag} {cache_dir}")  # not the probe's made-up name


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
    owner = set_name("run", plan.csv)
    check_replaceable(plan.csv, flags.output, owner=owner)
    for kind in COMPANIONS:
        target = getattr(plan, kind)
        for src in inputs:
            if same_file(target, src):
                raise SettingsError(
                    f"{target}: refusing to overwrite the input {src}; choose another "
                    f"{flags.output} name"
                )
        if kind == "thumbnails":
            _check_replaced_folder(target, "thumbnails folder", flags.output, inputs, image_dirs)
        if kind == "report" and not request.report:
            continue
        check_replaceable(target, flags.output, folder=kind == "thumbnails", owner=owner)
    if request.cache_dir is not None:
        check_cache_dir(request.cache_dir, flags, inputs, image_dirs, request.output)
