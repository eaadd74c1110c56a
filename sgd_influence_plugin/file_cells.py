"""File cells of a CSV written in another folder than the training CSV's: paths that open.

The influence CSV and every cleansed CSV name the training CSV's data files relative to their
own folder. Paths are computed between real locations (symbolic links resolved), so they open
from the CSV's folder even when the output folder or the data is reached through a link:
text like ``../data/...`` computed from the link's own path would resolve under the link's
target instead. Where no relative path exists (another drive on Windows) the path is absolute.
"""

from __future__ import annotations

import os
from typing import Dict, List

from .dataset import Dataset
from .io_utils import cell_path, data_path


def relative_from(full: str, out_real: str, real_dirs: Dict[str, str]) -> str:
    """``full`` as a path relative to the real folder ``out_real``, from the real location of
    its folder (cached in ``real_dirs``); absolute where none exists (another drive).
    """
    folder = os.path.dirname(full)
    if folder not in real_dirs:
        real_dirs[folder] = os.path.realpath(folder)
    real = os.path.join(real_dirs[folder], os.path.basename(full))
    try:
        return os.path.relpath(real, out_real)
    except ValueError:
        return real


def _has_parent_step(cell: str) -> bool:
    return ".." in cell.replace("\\", "/").split("/")


def shown_where_they_are(train: Dataset, file_col: str, out_folder: str) -> List[str]:
    """Each row's file path for a CSV in ``out_folder``: relative paths rebased, absolute
    ones kept.

    The relative path runs from the real location of ``out_folder`` to the real location of
    the training CSV's folder. One prefix serves every row (no file is looked up again: the
    reader opened each); a cell with a ``..`` step, which may climb out of a linked folder,
    is resolved on its own.
    """
    out_real = os.path.realpath(out_folder)
    try:
        prefix = os.path.relpath(os.path.realpath(train.folder), out_real)
    except ValueError:
        prefix = os.path.realpath(train.folder)
    col = train.header.index(file_col)
    out = []
    real_dirs: Dict[str, str] = {}
    for row in train.rows:
        cell = cell_path(row[col])
        if os.path.isabs(cell):
            out.append(cell)
        elif _has_parent_step(cell):
            out.append(relative_from(os.path.join(train.folder, cell), out_real, real_dirs))
        else:
            out.append(os.path.normpath(os.path.join(prefix, cell)))
    return out


def rebased(cell: str, src_folder: str, out_real: str, real_dirs: Dict[str, str]) -> str:
    """A cell of a CSV in ``src_folder`` rewritten for a CSV in the real folder ``out_real``.

    Relative paths to existing files become relative to ``out_real`` (resolved folders are
    cached in ``real_dirs``); numbers, absolute paths and cells naming no existing file are
    returned unchanged.
    """
    text = cell_path(cell)
    if (
        os.path.splitext(text)[1]
        and not os.path.isabs(text)
        and os.path.exists(data_path(src_folder, text))
    ):
        return relative_from(data_path(src_folder, text), out_real, real_dirs)
    return cell
