"""Read Neural Network Console dataset CSVs into arrays, once.

Format (as nnabla's ``CsvDataSource`` reads it):

- The header cells are ``NAME[__INDEX][:LABEL]``. ``x:image`` is variable ``x``; ``y__0``,
  ``y__1`` form the vector variable ``y``; columns whose name starts with ``#`` are ignored.
- A cell that parses as a number is a number; otherwise it is a file path relative to the
  CSV's folder (image, ``.csv`` or ``.npy``), loaded with nnabla's own loader so shapes,
  channel order and the 1/255 normalization match what ``nnabla_cli train`` feeds the network.

Each image is decoded once; :class:`Dataset` keeps the float32 arrays and the raw cells (the
latter for writing the influence and cleansed CSVs).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .errors import DatasetError, InputError

_FILE_EXTS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".dcm",
    ".csv",
    ".npy",
    ".wav",
)


def parse_header_cell(cell: str) -> Tuple[str, Optional[int], Optional[str]]:
    """Split a header cell ``NAME[__INDEX][:LABEL]`` into ``(name, index or None, label)``."""
    name_index, _, label = cell.partition(":")
    name, sep, index = name_index.partition("__")
    idx: Optional[int] = None
    if sep:
        try:
            idx = int(index)
        except ValueError:
            idx = None
            name = name_index
    return name, idx, (label or None)


def read_csv_table(path: str) -> Tuple[List[str], List[List[str]]]:
    """Read a CSV into ``(header, rows)`` with every row as long as the header; blank lines
    are skipped (see :func:`read_csv_rows` for the rows' numbers in messages).

    Raises:
        InputError: the file is missing or unreadable, has no header, or a row has the wrong
            number of cells.

    """
    header, rows, _ = read_csv_rows(path)
    return header, rows


def read_csv_rows(path: str) -> Tuple[List[str], List[List[str]], List[int]]:
    """:func:`read_csv_table` and each row's number as messages name it: its place among the
    records after the header, blank lines counted (1 = the first line after the header), so a
    message points at the line the user sees even when blank lines come before it.
    """
    if not os.path.isfile(path):
        raise InputError(
            f"{path}: file not found (check the path; relative paths start at {os.getcwd()})"
        )
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = [r for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: cannot read this CSV ({e}); save it as UTF-8 text") from e
    if not header:
        raise DatasetError(
            f"{path}: the file is empty; a dataset CSV needs a header such as "
            "'x:image,y:label' and one row per sample"
        )
    out, numbers = [], []
    for i, r in enumerate(rows):
        if not r:
            continue  # blank line
        if len(r) != len(header):
            raise DatasetError(
                f"{path} row {i + 1}: {len(r)} cells but the header has {len(header)}; "
                "every row needs one cell per column (quote cells that contain commas)"
            )
        out.append(r)
        numbers.append(i + 1)
    return header, out, numbers


@dataclass
class Dataset:
    """A console dataset, decoded.

    Attributes:
        path: the CSV's path.
        header: the CSV's header cells, as written.
        rows: the raw cells of each row (row i of the file's data is ``rows[i]``).
        arrays: variable name -> float32 array of shape (N, *sample_shape).
        columns: variable name -> the header cells (in order) that make up that variable.
        numbers: each row's number in messages (see :func:`read_csv_rows`); empty = i + 1.

    """

    path: str
    header: List[str]
    rows: List[List[str]]
    arrays: Dict[str, np.ndarray]
    columns: Dict[str, List[str]] = field(default_factory=dict)
    numbers: List[int] = field(default_factory=list)

    def row_number(self, i: int) -> int:
        """The number messages give data row ``i`` (0-based), blank lines counted."""
        return self.numbers[i] if self.numbers else i + 1

    @property
    def size(self) -> int:
        """Number of samples N."""
        return len(self.rows)

    @property
    def folder(self) -> str:
        """The folder that relative file paths in the CSV start from."""
        return os.path.dirname(os.path.abspath(self.path))

    def cell(self, row: int, column: str) -> str:
        """The raw cell of ``row`` (0-based data row) in the header cell named ``column``."""
        return self.rows[row][self.header.index(column)]


def _load_file(full: str, normalize: bool) -> np.ndarray:
    """Decode one data file as ``nnabla_cli train`` does.

    8-bit grayscale and RGB PNGs (the console's usual images) are decoded here with Pillow,
    exactly as nnabla's loader would (channels first, ``* (1 / 255)`` in float64 when
    normalizing), at a fifth of its per-file cost; every other file goes through nnabla's
    loader itself.
    """
    ext = os.path.splitext(full)[1].lower()
    if ext == ".png":
        value = _load_png(full, normalize)
        if value is not None:
            return value
    from nnabla.utils.data_source_loader import load

    with open(full, "rb") as f:
        return np.asarray(load(ext)(f, normalize=normalize))


def _load_png(full: str, normalize: bool) -> Optional[np.ndarray]:
    """(C, H, W) of an 8-bit ``L`` or ``RGB`` PNG as nnabla's loader returns it; None for
    any other kind of PNG (palette, alpha, 16-bit, ...), which nnabla's loader then handles.
    """
    from PIL import Image, UnidentifiedImageError

    # formats=("PNG",): the extension says PNG, so Pillow need not try its other decoders
    # first (a quarter of the per-file cost); a file that is no PNG goes to nnabla's loader.
    try:
        im = Image.open(full, formats=("PNG",))
    except UnidentifiedImageError:
        return None
    with im:
        if im.mode not in ("L", "RGB"):
            return None
        arr = np.asarray(im, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return arr * (1.0 / 255.0) if normalize else arr


#: Rows below which reading stays in this process (starting workers costs more than it saves).
PARALLEL_MIN_ROWS = 4000


def load_dataset(
    path: str,
    needs: Mapping[str, Tuple[int, ...]],
    normalize: bool = True,
    progress: Optional[Callable[[int, int], None]] = None,
    jobs: int = 1,
) -> Dataset:
    """Read a console dataset CSV and decode the variables a network needs.

    Args:
        path: the CSV.
        needs: variable name -> shape of one sample as the network expects it, e.g.
            ``{"x": (1, 28, 28), "y": (1,)}``.
        normalize: divide 8-bit image values by 255 (the console's default; the dataset's
            ``no_image_normalization`` turns it off).
        progress: optional callback ``(done, total)``, in rows decoded.
        jobs: worker processes that decode blocks of rows at once (see :mod:`.parallel`;
            the result is the same as with 1). Files of under :data:`PARALLEL_MIN_ROWS` rows
            are read in this process.

    Returns:
        The decoded :class:`Dataset`; ``arrays[name]`` has shape (N, *needs[name]).

    Raises:
        DatasetError: a needed column is missing, a cell is neither a number nor an existing
            file, a file has the wrong size, or the dataset has no rows. With several workers
            the row named is a bad row, not necessarily the first one.

    """
    header, rows, numbers = read_csv_rows(path)
    if not rows:
        raise DatasetError(f"{path}: the dataset has a header but no rows; add samples")
    folder = os.path.dirname(os.path.abspath(path))
    columns: Dict[str, List[Tuple[int, Optional[int]]]] = {}
    for ci, cell in enumerate(header):
        if cell.startswith("#"):
            continue
        name, idx, _ = parse_header_cell(cell)
        columns.setdefault(name, []).append((ci, idx))
    for name in needs:
        if name not in columns:
            have = ", ".join(repr(c) for c in header[:8])  # a short line, however wide
            if len(header) > 8:
                have += f" and {len(header) - 8} more ({len(header)} columns)"
            raise DatasetError(
                f"{path}: no column for variable '{name}' that the network needs; the header "
                f"has {have}. Add a column named '{name}' (e.g. '{name}:label') or rename one"
            )
    plan = {
        name: (
            tuple(int(d) for d in shape),
            [ci for ci, _ in sorted(columns[name], key=lambda t: (t[1] is None, t[1] or 0))],
        )
        for name, shape in needs.items()
    }

    n = len(rows)
    jobs = max(1, int(jobs))
    shared = (path, numbers, header, rows, plan, folder, normalize)
    if jobs == 1 or n < PARALLEL_MIN_ROWS:
        report = progress or (lambda done, total: None)
        arrays = _decode_unit((0, n), lambda stage, done, total: report(done, total), *shared)
    else:
        from . import parallel

        bounds = np.linspace(0, n, 4 * jobs + 1).astype(int)
        blocks = list(zip(bounds[:-1], bounds[1:]))
        done_per_block = [0] * len(blocks)

        def on_progress(b: int, stage: str, done: int, total: int) -> None:
            done_per_block[b] = done
            if progress is not None:
                progress(sum(done_per_block), n)

        parts = parallel.run_parallel(
            _decode_unit, blocks, shared, jobs=jobs, on_progress=on_progress
        )
        arrays = {name: np.concatenate([part[name] for part in parts]) for name in plan}
    return Dataset(
        path=path,
        header=header,
        rows=rows,
        arrays=arrays,
        columns={n: [header[ci] for ci, _ in columns[n]] for n in needs},
        numbers=numbers,
    )


def _decode_unit(block, progress, path, numbers, header, rows, plan, folder, normalize):
    """Rows ``lo..hi-1`` (``block``) of every variable of ``plan`` (name -> (shape, column
    indices)), as a unit of :func:`.parallel.run_parallel`; ``progress("read", rows done,
    rows)`` within the block.
    """
    lo, hi = (int(b) for b in block)
    out = {
        name: np.empty((hi - lo,) + shape, dtype=np.float32) for name, (shape, _) in plan.items()
    }
    for ri in range(lo, hi):
        for name, (shape, cols) in plan.items():
            out[name][ri - lo] = _row_value(
                path, numbers[ri], header, rows[ri], cols, shape, name, folder, normalize
            )
        done = ri + 1 - lo
        if done % 500 == 0 or done == hi - lo:
            progress("read", done, hi - lo)
    return out


def _row_value(path, number, header, row, cols, shape, name, folder, normalize) -> np.ndarray:
    """The value of variable ``name`` in the row messages call ``number``, shaped ``shape``."""
    values = [_cell_value(path, number, header[ci], row[ci], folder, normalize) for ci in cols]
    value = values[0] if len(values) == 1 else np.concatenate([np.ravel(v) for v in values])
    value = np.asarray(value, dtype=np.float32)
    if value.shape != shape:
        if (
            value.size != int(np.prod(shape))
            or value.ndim > 1
            and len(cols) == 1
            and is_file_cell(row[cols[0]])
        ):
            raise DatasetError(
                _shape_message(path, number, header, cols, row, value.shape, shape, name)
            )
        value = value.reshape(shape)
    return value


def cell_path(cell: str) -> str:
    r"""A file cell as a path of this system: the console on Windows writes relative paths
    with backslashes (``.\0\12.csv``), which nnabla's own loader also accepts; where ``\``
    is no separator they become ``/``.
    """
    text = cell.strip()
    return text.replace("\\", "/") if os.sep == "/" and "\\" in text else text


def data_path(folder: str, cell: str) -> str:
    """The file a cell of a CSV in ``folder`` names (relative paths start at ``folder``)."""
    text = cell_path(cell)
    return text if os.path.isabs(text) else os.path.join(folder, text)


def is_file_cell(cell: str) -> bool:
    """True if a CSV cell names a file (by its extension) rather than holding a number."""
    return os.path.splitext(cell.strip())[1].lower() in _FILE_EXTS


def _shape_message(path, number, header, cols, row, got, want, name) -> str:
    where = f"{path} row {number}"
    if len(cols) == 1 and is_file_cell(row[cols[0]]):
        got, want = tuple(got), tuple(want)
        if len(got) == len(want) == 3 and got[1:] == want[1:] and got[0] != want[0]:
            kinds = {1: "grayscale", 3: "color (RGB)", 4: "color with alpha (RGBA)"}
            return (
                f"{where}: '{row[cols[0]]}' has {got[0]} channel(s), "
                f"{kinds.get(got[0], 'channels')}, but the network's input '{name}' takes "
                f"{want[0]} ({kinds.get(want[0], 'channels')}); convert the images to "
                f"{want[0]} channel(s), or change the network's input to {got[0]} channel(s)"
            )
        return (
            f"{where}: '{row[cols[0]]}' loads with shape {got} but the network's input "
            f"'{name}' takes {want} (channels, height, width); resize the images to "
            "the network's input size or change the network's input shape"
        )
    return (
        f"{where}: variable '{name}' has shape {tuple(got)} from columns "
        f"{[header[c] for c in cols]} but the network takes {tuple(want)}"
    )


#: A plain decimal number as a CSV cell may hold it (no '_' digit separators, no hex).
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_NONFINITE = re.compile(r"^[+-]?(nan|inf|infinity)$", re.IGNORECASE)
#: Largest float32: a cell beyond it would become infinite in the network.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _cell_value(path, number, column, cell, folder, normalize):
    text = cell.strip()
    where = f"{path} row {number}, column '{column}'"
    if _NUMBER.match(text):
        value = float(text)  # '1e400' parses to inf
        if not np.isfinite(value):
            raise DatasetError(
                f"{where}: '{cell}' is not a finite number; give a number (labels are class "
                "indices 0, 1, ...)"
            )
        if abs(value) > _FLOAT32_MAX:
            raise DatasetError(
                f"{where}: '{cell}' is beyond the range of the network's 32-bit numbers "
                f"(about +-{_FLOAT32_MAX:.3g}); give a smaller number (labels are class indices "
                "0, 1, ...)"
            )
        return np.float32(value)
    if _NONFINITE.match(text):
        raise DatasetError(
            f"{where}: '{cell}' is not a finite number; give a number (labels are class "
            "indices 0, 1, ...)"
        )
    if not is_file_cell(text):
        raise DatasetError(
            f"{where}: '{cell}' is neither a number nor a file path; labels must be numbers "
            "written plainly (class indices 0, 1, ...; no '_' separators), and data cells "
            f"paths to files ({', '.join(_FILE_EXTS)})"
        )
    full = data_path(folder, text)
    if not os.path.isfile(full):
        raise DatasetError(
            f"{where}: file {_shown(text)} not found (paths are relative to the CSV's folder "
            f"{folder})"
        )
    try:
        value = _load_file(full, normalize)
    except Exception as e:  # noqa: BLE001 - any decoder failure is the file's fault
        raise DatasetError(
            f"{where}: cannot read '{text}' ({_why_unreadable(full, e)}); replace or remove "
            "this file"
        ) from e
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise DatasetError(
            f"{where}: '{text}' holds NaN or infinite values; replace them with numbers"
        )
    return value


def _why_unreadable(full: str, error: Exception) -> str:
    """A reason a user can act on: nnabla's loader only says "No backend available" when
    every image decoder failed, so ask Pillow what is wrong with an image file.
    """
    ext = os.path.splitext(full)[1].lower()
    if ext in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"):
        try:
            from PIL import Image

            with Image.open(full) as im:
                im.load()
        except Exception as pil_error:  # noqa: BLE001 - we only want its message
            return f"not a readable image: {pil_error}"
    return f"{type(error).__name__}: {error}"


def _shown(text: str) -> str:
    """A cell in quotes for a one-line message (a line break in it shown escaped)."""
    return repr(text) if any(c in text for c in "\r\n") else f"'{text}'"
