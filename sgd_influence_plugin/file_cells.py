"""File cells of a CSV written in another folder than the training CSV's: paths that open.

The influence CSV and every cleansed CSV name the training CSV's data files relative to their
own folder, as the user names it. nnabla's loader (and Windows) take a path's ``..`` steps in
the text, the file system of Linux or macOS through links: ``out/../data`` is ``data`` beside
``out`` for the first and beside the folder ``out`` links to for the second. A relative path
is written only where both open the same file; else (a link between the folders, another
drive on Windows) the file's real absolute path, which every reader opens alike.
"""

from __future__ import annotations

import os
from typing import Dict, List

from .dataset import Dataset
from .io_utils import cell_path, data_path


def _real_dir(folder: str, real_dirs: Dict[str, str]) -> str:
    if folder not in real_dirs:
        real_dirs[folder] = os.path.realpath(folder)
    return real_dirs[folder]


def relative_from(full: str, out_abs: str, real_dirs: Dict[str, str]) -> str:
    """``full`` (absolute, ``..`` taken in the text: :func:`.io_utils.data_path`) as a path
    relative to the absolute folder ``out_abs`` where it opens the same file taken in the text
    and through links, else the file's real absolute path (folders resolved once each, in
    ``real_dirs``).
    """
    real = os.path.join(_real_dir(os.path.dirname(full), real_dirs), os.path.basename(full))
    try:
        rel = os.path.relpath(full, out_abs)
    except ValueError:  # another drive
        return real
    walked = os.path.join(out_abs, os.path.dirname(rel))  # '..' steps through links
    return rel if _real_dir(walked, real_dirs) == os.path.dirname(real) else real


def _has_parent_step(cell: str) -> bool:
    return ".." in cell.replace("\\", "/").split("/")


def shown_where_they_are(train: Dataset, file_col: str, out_folder: str) -> List[str]:
    """Each row's file path for a CSV in ``out_folder``: relative paths rebased, absolute
    ones kept.

    One prefix, from ``out_folder`` to the training CSV's folder (:func:`relative_from`),
    serves every row (no file is looked up again: the reader opened each); a cell with a
    ``..`` step, which may climb out of a linked folder, is resolved on its own.
    """
    out_abs = os.path.abspath(out_folder)
    real_dirs: Dict[str, str] = {}
    prefix = os.path.dirname(relative_from(os.path.join(train.folder, "_"), out_abs, real_dirs))
    col = train.header.index(file_col)
    out = []
    for row in train.rows:
        cell = cell_path(row[col])
        if os.path.isabs(cell):
            out.append(cell)
        elif _has_parent_step(cell):
            out.append(relative_from(data_path(train.folder, cell), out_abs, real_dirs))
        else:
            out.append(os.path.normpath(os.path.join(prefix, cell)))
    return out


def rebased(cell: str, src_folder: str, out_abs: str, real_dirs: Dict[str, str]) -> str:
    """A cell of a CSV in ``src_folder`` rewritten for a CSV in the absolute folder
    ``out_abs``.

    Relative paths to existing files are given as :func:`relative_from` gives them (resolved
    folders are cached in ``real_dirs``); numbers, absolute paths and cells naming no
    existing file are returned unchanged.
    """
    text = cell_path(cell)
    if (
        os.path.splitext(text)[1]
        and not os.path.isabs(text)
        and os.path.exists(data_path(src_folder, text))
    ):
        return relative_from(data_path(src_folder, text), out_abs, real_dirs)
    return cell
