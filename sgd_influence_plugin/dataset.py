"""Read Neural Network Console dataset CSVs into arrays, once.

Format (as nnabla's ``CsvDataSource`` reads it):

- The header cells are ``NAME[__INDEX][:LABEL]``. ``x:image`` is variable ``x``; ``y__0``,
  ``y__1`` form the vector variable ``y``; columns whose name starts with ``#`` are ignored.
- A cell that parses as a number is a number; otherwise it is a file path relative to the
  CSV's folder (image, ``.csv`` or ``.npy``), loaded with nnabla's own loader so shapes,
  channel order and the 1/255 normalization match what ``nnabla_cli train`` feeds the network.

Each image is decoded once (what a cell holds: :mod:`.cells`), in worker processes for large
files; :class:`Dataset` keeps the float32 arrays and the raw cells (the latter for writing the
influence and cleansed CSVs).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from .cells import one_kind_per_variable, variable_value
from .errors import DatasetError, InputError


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


def read_csv_rows(
    path: str, blank_lines: bool = True
) -> Tuple[List[str], List[List[str]], List[int]]:
    """:func:`read_csv_table` and each row's number as messages name it: its place among the
    records after the header, blank lines counted (1 = the first line after the header), so a
    message points at the line the user sees even when blank lines come before it.
    ``blank_lines=False`` refuses them instead, as ``nnabla_cli train`` fails on one (its
    CSV reader takes it for a sample with no values).
    """
    if not os.path.isfile(path):
        what = "is a folder, not a CSV file" if os.path.isdir(path) else "file not found"
        raise InputError(f"{path}: {what} (check the path; relative paths start at {os.getcwd()})")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = [r for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(
            f"{path}: cannot read this CSV ({e}); save it as UTF-8 text, as nnabla_cli train "
            "reads it (in Excel: 'CSV UTF-8 (Comma delimited)', not 'CSV', which is Shift-JIS "
            "on Japanese Windows)"
        ) from e
    if not header:
        raise DatasetError(
            f"{path}: the file is empty; a dataset CSV needs a header such as "
            "'x:image,y:label' and one row per sample"
        )
    out, numbers = [], []
    for i, r in enumerate(rows):
        if not r and blank_lines:
            continue
        if not r:
            raise DatasetError(
                f"{path} row {i + 1}: a blank line, which nnabla_cli train cannot read (it "
                "stops with 'tuple index out of range'); delete it"
            )
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


#: How 8-bit images are scaled: True (by 1/255), False (not), or :data:`.cells.CACHED`.
Normalize = Union[bool, str]
#: Decoded arrays by variable name, and the first row of each kind (:meth:`CsvRows.block`).
Block = Tuple[Dict[str, np.ndarray], Dict[Tuple[str, bool], int]]
#: Rows below which reading stays in this process (starting workers costs more than it saves).
PARALLEL_MIN_ROWS = 4000
#: Decoded rows between two progress reports.
_REPORT_EVERY = 500


def load_dataset(
    path: str,
    needs: Mapping[str, Tuple[int, ...]],
    normalize: Normalize = True,
    progress: Optional[Callable[[int, int], None]] = None,
    jobs: int = 1,
) -> Dataset:
    """Read a console dataset CSV and decode the variables a network needs:
    :func:`read_rows` then :func:`decode`.

    Args:
        path: the CSV.
        needs: variable name -> shape of one sample as the network expects it, e.g.
            ``{"x": (1, 28, 28), "y": (1,)}``.
        normalize: divide 8-bit image values by 255 (the console's default; the dataset's
            ``no_image_normalization`` turns it off), in float64 (True) or, as the console's
            cache does, in float32 (:data:`.cells.CACHED`).
        progress: optional callback ``(done, total)``, in rows decoded.
        jobs: worker processes that decode blocks of rows at once (see :func:`decode`).

    Returns:
        The decoded :class:`Dataset`; ``arrays[name]`` has shape (N, *needs[name]).

    Raises:
        DatasetError: a needed column is missing, a cell is neither a number nor an existing
            file, a file has the wrong size, or the dataset has no rows. With several workers
            the row named is a bad row, not necessarily the first one.

    """
    return decode(read_rows(path, needs, normalize), progress, jobs)


def read_rows(
    path: str, needs: Mapping[str, Tuple[int, ...]], normalize: Normalize = True
) -> CsvRows:
    """A dataset CSV's text read and its columns checked against ``needs`` (as in
    :func:`load_dataset`), nothing decoded yet: no image or data file is opened, so the
    memory the arrays will take (:attr:`CsvRows.values_per_row` float32 values, 4 bytes
    each, a row) can be checked first.

    Raises:
        InputError, DatasetError: the file cannot be read, has no rows, or lacks a column.

    """
    header, rows, numbers = read_csv_rows(path, blank_lines=False)
    if not rows:
        raise DatasetError(f"{path}: the dataset has a header but no rows; add samples")
    if "" in header:
        raise DatasetError(
            f"{path}: column {header.index('') + 1} of the header is empty (a comma too many "
            "at the end of the line?), which nnabla_cli train cannot read; delete the column"
        )
    columns = _variable_columns(header)
    _check_needs(path, header, columns, needs)
    return CsvRows(
        path=path,
        header=header,
        rows=rows,
        numbers=numbers,
        plan=_decoding_plan(columns, needs),
        normalize=normalize,
        columns={n: [header[ci] for ci, _ in columns[n]] for n in needs},
    )


def decode(
    rows_read: CsvRows,
    progress: Optional[Callable[[int, int], None]] = None,
    jobs: int = 1,
) -> Dataset:
    """Every needed variable of the rows :func:`read_rows` read, decoded into float32
    arrays, in ``jobs`` worker processes (see :mod:`.parallel`; the result is the same as
    with 1). Files of under :data:`PARALLEL_MIN_ROWS` rows are decoded in this process.

    Raises:
        DatasetError: a cell is neither a number nor an existing file, or a file has the
            wrong size.

    """
    jobs = max(1, int(jobs))
    n = len(rows_read.rows)
    if not in_workers(n, jobs):
        arrays, firsts = rows_read.block(0, n, progress or (lambda done, total: None))
    else:
        arrays, firsts = _decode_in_workers(rows_read, jobs, progress)
    r = rows_read
    one_kind_per_variable(r.path, r.rows, r.numbers, r.plan, firsts)
    return Dataset(
        path=rows_read.path,
        header=rows_read.header,
        rows=rows_read.rows,
        arrays=arrays,
        columns=rows_read.columns,
        numbers=rows_read.numbers,
    )


def in_workers(rows: int, jobs: int) -> bool:
    """Whether :func:`decode` decodes ``rows`` rows in ``jobs`` worker processes (and joins
    their parts into new arrays) rather than in this process.
    """
    return int(jobs) > 1 and rows >= PARALLEL_MIN_ROWS


def _variable_columns(header: List[str]) -> Dict[str, List[Tuple[int, Optional[int]]]]:
    """Variable name -> ``(column, element index or None)`` of each header cell that feeds
    it, in the header's order; ``#`` columns feed nothing.
    """
    columns: Dict[str, List[Tuple[int, Optional[int]]]] = {}
    for ci, cell in enumerate(header):
        if cell.startswith("#"):
            continue
        name, idx, _ = parse_header_cell(cell)
        columns.setdefault(name, []).append((ci, idx))
    return columns


def _check_needs(path: str, header: List[str], columns, needs: Mapping) -> None:
    """Raise :class:`DatasetError` for the first variable in ``needs`` no column feeds, or
    whose ``NAME__INDEX`` columns are out of order (nnabla reads them left to right, this
    tool by index: the model may have seen either order).
    """
    for name in needs:
        indexed = [(ci, idx) for ci, idx in columns.get(name, []) if idx is not None]
        for (ca, a), (cb, b) in zip(indexed, indexed[1:]):
            if b < a:
                raise DatasetError(
                    f"{path}: column '{header[cb]}' comes after '{header[ca]}'; nnabla reads "
                    f"the columns of '{name}' left to right whatever their numbers, so the "
                    f"network may have seen another order: put them in the order {name}__0, "
                    f"{name}__1, ... (and train on that file)"
                )
        if name not in columns:
            have = ", ".join(repr(c) for c in header[:8])  # a short line, however wide
            if len(header) > 8:
                have += f" and {len(header) - 8} more ({len(header)} columns)"
            raise DatasetError(
                f"{path}: no column for variable '{name}' that the network needs; the header "
                f"has {have}. Add a column named '{name}' (e.g. '{name}:label') or rename one"
            )


def _decoding_plan(columns, needs: Mapping) -> Dict[str, Tuple[Tuple[int, ...], List[int]]]:
    """Variable name -> (its sample shape, its columns ordered by element index; a column
    without an index last).
    """
    return {
        name: (
            tuple(int(d) for d in shape),
            [ci for ci, _ in sorted(columns[name], key=lambda t: (t[1] is None, t[1] or 0))],
        )
        for name, shape in needs.items()
    }


@dataclass(frozen=True)
class CsvRows:
    """The rows of one CSV and what to decode of them (:func:`_decoding_plan`), as
    :func:`read_rows` returns them; ``columns`` as :attr:`Dataset.columns`.
    """

    path: str
    header: List[str]
    rows: List[List[str]]
    numbers: List[int]
    plan: Dict[str, Tuple[Tuple[int, ...], List[int]]]
    normalize: Normalize
    columns: Dict[str, List[str]] = field(default_factory=dict)

    @property
    def values_per_row(self) -> int:
        """Decoded values of one row, every needed variable together (e.g. 3 * 128 * 128 +
        1 for a colour image and its label).
        """
        return sum(int(np.prod(shape)) for shape, _ in self.plan.values())

    def block(self, lo: int, hi: int, report: Callable[[int, int], None]) -> Block:
        """Rows lo..hi-1 of every needed variable and, per variable, the first row whose
        grayscale image was widened to the network's channels and the first that was not
        (:func:`.cells.variable_value`); ``report(rows done, rows)`` within the block.
        """
        folder = os.path.dirname(os.path.abspath(self.path))
        block = {
            name: np.empty((hi - lo,) + shape, dtype=np.float32)
            for name, (shape, _) in self.plan.items()
        }
        firsts: Dict[Tuple[str, bool], int] = {}
        for ri in range(lo, hi):
            row, number = self.rows[ri], self.numbers[ri]
            for name, (shape, cols) in self.plan.items():
                block[name][ri - lo], widened = variable_value(
                    self.path, number, self.header, row, cols, shape, name, folder, self.normalize
                )
                firsts.setdefault((name, widened), ri)
            done = ri + 1 - lo
            if done % _REPORT_EVERY == 0 or done == hi - lo:
                report(done, hi - lo)
        return block, firsts


def _decode_in_workers(
    rows_read: CsvRows, jobs: int, progress: Optional[Callable[[int, int], None]]
) -> Block:
    """Every row decoded by ``jobs`` worker processes (:mod:`.parallel`), in 4 blocks per
    worker, joined in row order (as :meth:`CsvRows.block`); ``progress(rows done, rows)``
    sums the blocks' progress.
    """
    from . import parallel

    n = len(rows_read.rows)
    bounds = np.linspace(0, n, 4 * jobs + 1).astype(int)
    blocks = list(zip(bounds[:-1], bounds[1:]))
    done_per_block = [0] * len(blocks)

    def on_progress(b: int, stage: str, done: int, total: int) -> None:
        done_per_block[b] = done
        if progress is not None:
            progress(sum(done_per_block), n)

    parts = parallel.run_parallel(
        _decode_unit, blocks, (rows_read,), jobs=jobs, on_progress=on_progress
    )
    firsts: Dict[Tuple[str, bool], int] = {}
    for _, part_firsts in parts:  # blocks in row order: the first row of each kind stays
        for key, ri in part_firsts.items():
            firsts.setdefault(key, ri)
    arrays = {name: np.concatenate([part[name] for part, _ in parts]) for name in rows_read.plan}
    return arrays, firsts


def _decode_unit(block, progress, rows_read: CsvRows) -> Block:
    """Rows ``block = (lo, hi)`` decoded, as a unit of :func:`.parallel.run_parallel` (a
    module-level function, so spawned workers run it too); ``progress("read", done, rows)``.
    """
    lo, hi = (int(b) for b in block)
    return rows_read.block(lo, hi, lambda done, total: progress("read", done, total))
