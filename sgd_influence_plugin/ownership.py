"""Which files sgd-influence may replace.

One rule for every writer (``run``, ``check``, ``cleanse``, ``evaluate``, ``install-plugin``
and the paper-protocol script): **a writer replaces only what it created itself**, and refuses
anything else before computing, naming the file and the fix.

- Files: the tool keeps the names and SHA-256 digests of the files it wrote in each folder in
  :data:`LEDGER`. An existing file is replaced only when the ledger lists it with its current
  content; a file the user made, or one the tool wrote and the user edited since, is not.
- Folders the tool makes (a thumbnails folder, the installed package, the protocol's
  ``estimates/``) hold a marker file (:data:`THUMBNAILS_MARKER` or :data:`FOLDER_MARKER`);
  an existing folder is replaced, as a whole, only when it holds one.

How a writer puts a set of files in place under this rule, all of it or none of it, is
:mod:`.staged_commit`.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import OutputError
from .io_utils import atomic_write, sha256_file
from .made_folders import unknown_entry, write_marker

#: Per folder: the files the tool wrote there, name -> SHA-256 digests.
LEDGER = ".sgd_influence_written.json"
#: Marker file in every thumbnails folder the tool makes.
THUMBNAILS_MARKER = ".sgd_influence_thumbnails"
#: Marker file in every other folder the tool makes and may replace as a whole.
FOLDER_MARKER = ".sgd_influence_folder"
#: Either marker says "the tool made this folder".
FOLDER_MARKERS = (FOLDER_MARKER, THUMBNAILS_MARKER)


def read_ledger_sets(folder: str) -> Tuple[Dict[str, List[str]], Dict[str, str]]:
    """The ledger of ``folder``: (file name -> accepted SHA-256 digests, file name -> the
    output set it belongs to); ({}, {}) if there is none.
    """
    path = os.path.join(folder, LEDGER)
    if not os.path.lexists(path):
        return {}, {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        files = data["files"]
        sets = data.get("sets", {})
        if not isinstance(files, dict) or not isinstance(sets, dict):
            raise TypeError("files or sets is not a mapping")
        return {str(k): [str(h) for h in v] for k, v in files.items()}, {
            str(k): str(v) for k, v in sets.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise OutputError(
            f"{path}: cannot tell which files here sgd-influence wrote, this list of them is "
            f"unreadable ({e}); write the output into another folder"
        ) from e


def read_ledger(folder: str) -> Dict[str, List[str]]:
    """The ledger of ``folder``: file name -> accepted SHA-256 digests ({} if none).

    Raises:
        OutputError: a file of that name exists but is not a ledger this tool wrote.

    """
    return read_ledger_sets(folder)[0]


def output_set(path: str) -> Optional[str]:
    """The output set the ledger of its folder puts the file ``path`` in (e.g. ``run
    influence.csv``), or None (not listed, or written before sets were recorded).
    """
    return read_ledger_sets(os.path.dirname(os.path.abspath(path)))[1].get(os.path.basename(path))


def set_name(command: str, main: str) -> str:
    """The name of the output set whose main file is ``main``, written by ``command``."""
    return f"{command} {os.path.basename(main)}"


def write_ledger(
    folder: str, files: Dict[str, List[str]], sets: Optional[Dict[str, str]] = None
) -> None:
    """Write the ledger of ``folder``: ``files`` (those with a digest) and their sets."""
    kept = {k: v for k, v in sorted(files.items()) if v}
    data = {
        "about": "files sgd-influence wrote in this folder and may replace: name -> SHA-256; "
        "sets: name -> the output set (command and main file) it belongs to",
        "files": kept,
        "sets": {k: v for k, v in sorted((sets or {}).items()) if k in kept},
    }
    with atomic_write(os.path.join(folder, LEDGER), encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def written_by_tool(path: str) -> bool:
    """True if ``path`` is a file this tool wrote and nobody changed since (see the ledger),
    or a folder it made (holding one of :data:`FOLDER_MARKERS`).
    """
    if os.path.islink(path):
        return False
    if os.path.isdir(path):
        markers = [m for m in FOLDER_MARKERS if os.path.isfile(os.path.join(path, m))]
        return bool(markers) and unknown_entry(path, markers[0], _is_thumbs(markers)) is None
    if not os.path.isfile(path):
        return False
    digests = read_ledger(os.path.dirname(os.path.abspath(path))).get(os.path.basename(path))
    return bool(digests) and sha256_file(path) in digests


def _is_thumbs(markers: Sequence[str]) -> bool:
    return THUMBNAILS_MARKER in markers


def check_folder_contents(path: str, flag: str) -> None:
    """Refuse a folder the tool made that holds a file the tool did not write there."""
    markers = [m for m in FOLDER_MARKERS if os.path.isfile(os.path.join(path, m))]
    if not markers or os.path.islink(path):
        return
    unknown = unknown_entry(path, markers[0], _is_thumbs(markers))
    if unknown is not None:
        raise OutputError(
            f"{unknown}: sgd-influence did not write this file (or it was changed since), and "
            f"it lies in {path}, a folder the tool would replace; nothing was written. Move "
            f"the file out of that folder, or give another {flag}"
        )


def check_replaceable(
    path: str,
    flag: str = "--output",
    folder: bool = False,
    marker: str = THUMBNAILS_MARKER,
    owner: Optional[str] = None,
) -> None:
    """Refuse to write ``path`` if something the tool did not write is there, or a file of
    another output set.

    Args:
        path: a file (or, with ``folder``, a folder) a writer would replace.
        flag: the option that chose it, for the message.
        folder: ``path`` is a folder the tool makes.
        marker: the marker such a folder holds, for the message.
        owner: the output set (:func:`set_name`) the writer writes ``path`` for; a file the
            ledger puts in another set is refused.

    Raises:
        OutputError: ``path`` exists and is not the tool's (see :func:`written_by_tool`),
            holds a file the tool did not write, belongs to another output set, or has the
            wrong kind (a folder where a file goes, or the other way round).

    """
    if not os.path.lexists(path):
        return
    what = "folder" if folder else "file"
    if folder and os.path.isdir(path):
        check_folder_contents(path, flag)
    if folder != (os.path.isdir(path) and not os.path.islink(path)) or not written_by_tool(path):
        made = (
            f"has no {marker} marker, so sgd-influence did not make it"
            if folder and os.path.isdir(path)
            else "was not written by sgd-influence (or was edited since)"
        )
        raise OutputError(
            f"{path}: already exists and {made}; it is left alone. Give another {flag} name, "
            f"or move or delete that {what} yourself"
        )
    theirs = output_set(path) if owner else None
    if theirs is not None and theirs != owner:
        raise OutputError(
            f"{path}: belongs to another output set ({theirs}), whose other files describe it; "
            f"it is left alone. Give another {flag} name (this command writes {owner})"
        )


def mark_folder(
    path: str, marker: str = FOLDER_MARKER, about: str = "", listing: bool = False
) -> None:
    """Put ``marker`` into the folder ``path`` (which the tool made), so a later run may
    replace the folder as a whole.

    With ``listing`` the marker lists every file now in the folder with its digest
    (:mod:`.made_folders`): a later run replaces the folder only while it holds exactly
    those files. Without, for a folder filled later (the protocol's ``estimates/``), the
    marker alone decides.
    """
    about = about or "Made by sgd-influence; it replaces this folder as a whole.\n"
    if listing:
        write_marker(path, marker, about)
        return
    with open(os.path.join(path, marker), "w") as f:
        f.write(about)
