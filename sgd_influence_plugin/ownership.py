"""Which files sgd-influence may replace, and how a set of outputs is put in place.

One rule for every writer (``run``, ``check``, ``cleanse``, ``evaluate``, ``install-plugin``
and the paper-protocol script): **a writer replaces only what it created itself**, and refuses
anything else before computing, naming the file and the fix.

- Files: the tool keeps the names and SHA-256 digests of the files it wrote in each folder in
  :data:`LEDGER`. An existing file is replaced only when the ledger lists it with its current
  content; a file the user made, or one the tool wrote and the user edited since, is not.
- Folders the tool makes (a thumbnails folder, the installed package, the protocol's
  ``estimates/``) hold a marker file (:data:`THUMBNAILS_MARKER` or :data:`FOLDER_MARKER`);
  an existing folder is replaced, as a whole, only when it holds one.

A writer stages its files in a hidden folder beside their destinations (:func:`staging`) and
puts the whole set in place with :func:`commit_staged`: all of it, or none of it. Every
existing destination is first moved aside (the main file first, the one most likely to be
locked, e.g. open in Excel on Windows); if any cannot be, or a staged file cannot be moved in,
everything goes back as it was and the error names the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

from . import interrupts, ledger_lock
from .errors import OutputError
from .io_utils import atomic_write, makedirs_tracked, remove_empty_folders, sha256_file
from .made_folders import unknown_entry, write_marker

#: Per folder: the files the tool wrote there, name -> SHA-256 digests.
LEDGER = ".sgd_influence_written.json"
#: Marker file in every thumbnails folder the tool makes.
THUMBNAILS_MARKER = ".sgd_influence_thumbnails"
#: Marker file in every other folder the tool makes and may replace as a whole.
FOLDER_MARKER = ".sgd_influence_folder"
#: Either marker says "the tool made this folder".
FOLDER_MARKERS = (FOLDER_MARKER, THUMBNAILS_MARKER)


# ----------------------------------------------------------------------------------------
# Ownership
# ----------------------------------------------------------------------------------------


def _read(folder: str) -> Tuple[Dict[str, List[str]], Dict[str, str]]:
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
    return _read(folder)[0]


def output_set(path: str) -> Optional[str]:
    """The output set the ledger of its folder puts the file ``path`` in (e.g. ``run
    influence.csv``), or None (not listed, or written before sets were recorded).
    """
    return _read(os.path.dirname(os.path.abspath(path)))[1].get(os.path.basename(path))


def set_name(command: str, main: str) -> str:
    """The name of the output set whose main file is ``main``, written by ``command``."""
    return f"{command} {os.path.basename(main)}"


def _write_ledger(
    folder: str, files: Dict[str, List[str]], sets: Optional[Dict[str, str]] = None
) -> None:
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


# ----------------------------------------------------------------------------------------
# Staging and committing
# ----------------------------------------------------------------------------------------

#: errno values that mean "the disk (or the user's quota) is full".
_FULL = {28, 122}  # ENOSPC, EDQUOT


def write_failed(error: OSError, where: str, flag: str) -> OutputError:
    """A one-line :class:`OutputError` for an OSError while writing outputs."""
    import errno

    target = error.filename or where
    if error.errno == errno.ENAMETOOLONG:
        fix = f"Give a shorter {flag} (a shorter name, or a folder nearer the root)"
    elif error.errno in _FULL:
        fix = f"Free some space, or give another {flag}"
    elif error.errno == errno.EFBIG:
        fix = f"It passed this system's file-size limit (ulimit -f): raise it, or another {flag}"
    else:
        fix = f"Fix the permissions, or give another {flag}"
    why = " ".join(str(error.strerror or error).split())
    return OutputError(f"{target}: cannot write ({why}); nothing was written. {fix}")


def _aside(folder: str, final: str) -> str:
    """A hidden name in ``folder`` to move ``final`` to while a commit runs."""
    return os.path.join(folder, f".{os.path.basename(final)[:64]}.old-{uuid.uuid4().hex[:8]}")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def commit_staged(
    folder: str,
    moves: Sequence[Tuple[str, str]],
    remove: Sequence[str],
    flag: str,
    main: Optional[str] = None,
    owner: Optional[str] = None,
) -> None:
    """Put a staged set of files (and folders) in place: all of it, or nothing.

    The whole commit holds the folder's ledger lock (:mod:`.ledger_lock`), so writers into
    one folder take turns and none loses another's ledger entries.

    1. Every destination is checked again (:func:`check_replaceable`), and the ledger is
       written accepting both the old and the new content of each file.
    2. Every existing destination is moved aside to a hidden name, the main file first (by
       default the last entry of ``moves``). A destination that cannot be moved (open in
       another program on Windows, read-only, immutable) stops the commit here.
    3. The staged entries are moved in, companions first, the main file last.
    4. Only then are the moved-aside entries and the old views in ``remove`` deleted, and the
       ledger lists the new content, each file in the output set ``owner``.

    If step 2 or 3 fails (or an interrupt arrives), everything moved is moved back, the
    ledger is restored, and an :class:`OutputError` names the file: no destination changes.

    Args:
        folder: the destination folder (holds the ledger).
        moves: ``(staged path, final path)``; a staged folder replaces a whole folder.
        remove: final paths of old views to remove if the tool wrote them.
        flag: the output option, for messages.
        main: the final path of the main file (default: the last of ``moves``).
        owner: the output set of these files (default: ``flag`` and the main file's name).

    """
    interrupts.check()  # the last moment a stop leaves everything as it was
    main = main or (moves[-1][1] if moves else None)
    owner = owner or (set_name(flag, main) if main else None)
    with ledger_lock.held(folder, flag):
        for staged, final in moves:
            check_replaceable(final, flag, folder=os.path.isdir(staged), owner=owner)
        ledger_path = os.path.join(folder, LEDGER)
        old_ledger_bytes = None
        if os.path.isfile(ledger_path):
            with open(ledger_path, "rb") as f:
                old_ledger_bytes = f.read()
        ledger, sets = _read(folder)
        new = {
            os.path.basename(final): sha256_file(staged)
            for staged, final in moves
            if os.path.isfile(staged)
        }
        sets = {**sets, **{k: owner for k in new if owner}}
        try:
            accepted = {k: [h, *ledger.get(k, [])] for k, h in new.items()}
            _write_ledger(folder, {**ledger, **accepted}, sets)
        except OSError as e:
            raise write_failed(e, folder, flag) from e
        aside = _move_in(folder, moves, main, flag, ledger_path, old_ledger_bytes)
        for _, place in aside:
            _remove(place)
        for path in remove:
            if os.path.lexists(path) and written_by_tool(path):
                _remove(path)
        ledger = {**ledger, **{k: [h] for k, h in new.items()}}
        with contextlib.suppress(OSError):  # the files are in place; an old entry is harmless
            _write_ledger(
                folder,
                {k: v for k, v in ledger.items() if os.path.isfile(os.path.join(folder, k))},
                sets,
            )


def _move_in(folder, moves, main, flag, ledger_path, old_ledger_bytes) -> List[Tuple[str, str]]:
    """Steps 2 and 3 of :func:`commit_staged`: returns the (final, moved-aside) pairs; on
    failure everything goes back, the old ledger too, and an OutputError says so.
    """
    aside: List[Tuple[str, str]] = []  # (final, where it was moved)
    moved_in: List[Tuple[str, str]] = []  # (staged, final)
    order = sorted(moves, key=lambda m: m[1] != main)  # the main file is moved aside first
    current = None
    try:
        for _staged, final in order:
            if os.path.lexists(final):
                current = final
                place = _aside(folder, final)
                os.replace(final, place)
                aside.append((final, place))
        for staged, final in moves:
            current = final
            os.replace(staged, final)
            moved_in.append((staged, final))
    except BaseException as e:
        for staged, final in reversed(moved_in):
            with contextlib.suppress(OSError):
                os.replace(final, staged)
        for final, place in reversed(aside):
            with contextlib.suppress(OSError):
                os.replace(place, final)
        with contextlib.suppress(OSError):
            if old_ledger_bytes is None:
                os.unlink(ledger_path)
            else:
                with atomic_write(ledger_path, "wb") as f:
                    f.write(old_ledger_bytes)
        if not isinstance(e, OSError):
            raise
        raise OutputError(
            f"{e.filename or current}: cannot be replaced ({e.strerror or e}); is it open in "
            "another program, or read-only? Close it or make it writable, or give another "
            f"{flag}. Nothing was changed: every earlier output is as it was"
        ) from e
    return aside


@contextlib.contextmanager
def staging(folder: str, flag: str):
    """A hidden staging folder inside ``folder`` (created with its parents if needed).

    On any failure the staging folder and the folders created for it are removed, and an
    OSError (disk full, no permission) becomes a one-line :class:`OutputError`.
    """
    created: List[str] = []
    stage = None
    done = False
    try:
        created = makedirs_tracked(folder)
        stage = tempfile.mkdtemp(dir=folder, prefix=".sgd_influence_staging_")
        yield stage
        done = True
    except OSError as e:
        raise write_failed(e, folder, flag) from e
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        if not done:
            remove_empty_folders(created)
