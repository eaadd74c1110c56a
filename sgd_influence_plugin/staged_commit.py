"""How a writer puts a set of files in place: all of it, or none of it (the rule of which
files it may replace is :mod:`.ownership`).

A writer stages its files in a hidden folder beside their destinations (:func:`staging`) and
puts the whole set in place with :func:`commit_staged`: all of it, or none of it. Every
existing destination is first moved aside (the main file first, the one most likely to be
locked, e.g. open in Excel on Windows); if any cannot be, or a staged file cannot be moved in,
everything goes back as it was and the error names the file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

from . import interrupts, ledger_lock
from .errors import OutputError
from .io_utils import atomic_write, makedirs_tracked, remove_empty_folders, sha256_file
from .ownership import (
    LEDGER,
    check_replaceable,
    read_ledger_sets,
    set_name,
    write_ledger,
    written_by_tool,
)

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
        old_ledger_bytes, ledger, sets, new = _accept_both(folder, moves, flag, owner)
        ledger_path = os.path.join(folder, LEDGER)
        aside = _move_in(folder, moves, main, flag, ledger_path, old_ledger_bytes)
        _finish(folder, aside, remove, {**ledger, **{k: [h] for k, h in new.items()}}, sets)


def _accept_both(folder: str, moves, flag: str, owner: Optional[str]):
    """Step 1 of :func:`commit_staged`: the ledger written accepting both the old and the
    new content of each file; ``(the old ledger's bytes or None, its entries, its sets, the
    new files' hashes)``.
    """
    ledger_path = os.path.join(folder, LEDGER)
    old_ledger_bytes = None
    if os.path.isfile(ledger_path):
        with open(ledger_path, "rb") as f:
            old_ledger_bytes = f.read()
    ledger, sets = read_ledger_sets(folder)
    new = {
        os.path.basename(final): sha256_file(staged)
        for staged, final in moves
        if os.path.isfile(staged)
    }
    sets = {**sets, **{k: owner for k in new if owner}}
    try:
        accepted = {k: [h, *ledger.get(k, [])] for k, h in new.items()}
        write_ledger(folder, {**ledger, **accepted}, sets)
    except OSError as e:
        raise write_failed(e, folder, flag) from e
    return old_ledger_bytes, ledger, sets, new


def _finish(folder: str, aside, remove: Sequence[str], ledger: Dict, sets: Dict) -> None:
    """Step 4 of :func:`commit_staged`: the moved-aside entries and the old views the tool
    wrote deleted, the ledger listing ``ledger``'s files that are there.
    """
    for _, place in aside:
        _remove(place)
    for path in remove:
        if os.path.lexists(path) and written_by_tool(path):
            _remove(path)
    with contextlib.suppress(OSError):  # the files are in place; an old entry is harmless
        write_ledger(
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
