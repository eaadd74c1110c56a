"""A run's cache folder (``--cache-dir``) while the run uses it: made with its marker, locked
against a second run, removed again when the run fails having made it, and an error writing
it said in one line. Where it may be is :mod:`.places`' to check, before.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from typing import Iterator, Optional

from . import places
from .errors import OutputError
from .io_utils import makedirs_tracked, try_lock


@contextlib.contextmanager
def cache_folder(path: Optional[str], where: str) -> Iterator[None]:
    """Hold the cache folder ``path`` (None: the run's temporary folders, nothing to hold) for
    the ``with`` body: made if new (:func:`prepare_cache_dir`) and locked
    (:func:`lock_cache_dir`); the lock released at the end. When the body fails, the folder
    is removed if this call made it, and an ``OSError`` (the cache's writes: the outputs
    convert their own) becomes one line (:func:`cache_failed`) naming ``where`` (the option
    that chooses the folder).
    """
    made: Optional[str] = None
    lock = None
    try:
        if path is not None:
            made = prepare_cache_dir(path)
            lock = lock_cache_dir(path, where)
        yield
    except BaseException as e:
        if lock is not None:
            lock.close()
            lock = None
        if made:
            shutil.rmtree(made, ignore_errors=True)
        if isinstance(e, OSError):
            # Writing the cache failed (the outputs convert their own errors): a full disk,
            # a file-size limit, or a folder made read-only while running.
            raise cache_failed(e, path, where) from e
        raise
    finally:
        if lock is not None:
            lock.close()


def lock_cache_dir(path: str, flag: str):
    """Lock the cache folder for this run (an open file; closing it releases the lock).

    Two runs writing one cache folder overwrite each other's parameters (and HDF5 refuses a
    file another process has open), so a second run is refused.

    Raises:
        OutputError: another run holds the lock.

    """
    f = open(os.path.join(path, places.CACHE_LOCK), "a+")
    if not try_lock(f):
        f.close()
        raise OutputError(places.cache_in_use(path, flag))
    return f


def prepare_cache_dir(path: str) -> Optional[str]:
    """Create the cache folder (if new) with its marker; the shallowest folder this call
    created (to remove on failure), or None.
    """
    created = makedirs_tracked(path)
    marker = os.path.join(path, places.CACHE_MARKER)
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("Cache of sgd-influence; the tool may write and replace files here.\n")
    return created[0] if created else None


def cache_failed(e: OSError, cache_dir: Optional[str], where: str) -> OutputError:
    """One line for an OSError while writing the cache (HDF5's text may span lines)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free some space or choose another {where}"
    elif e.errno == errno.EFBIG:
        fix = f"a file passed this system's size limit (ulimit -f); raise it, or another {where}"
    else:
        fix = f"check that folder's permissions, or choose another {where}"
    why = os.strerror(e.errno) if e.errno else " ".join(str(e.strerror or e).split())
    return OutputError(
        f"{e.filename or cache_dir or 'the temporary folder'}: cannot write the cache ({why}); "
        f"nothing was written. {fix[0].upper() + fix[1:]}"
    )
