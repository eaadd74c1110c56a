"""One writer at a time per output folder: a lock file made with ``O_EXCL``.

Two commands that commit into the same folder at once (ten ``cleanse`` runs into one folder,
say) would each read the folder's ledger, add their own files and write it back, and the
last one would drop the others' entries. :func:`held` makes them take turns: it creates
:data:`LOCK` exclusively (``O_CREAT | O_EXCL`` works on every file system and on Windows),
waits for a bounded time while another writer holds it, and removes it when done. A lock
left behind by a process that was killed is taken over once it is :data:`STALE_SECONDS` old:
a commit holds the lock for a fraction of a second.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator

from . import interrupts
from .errors import OutputError

#: The lock file, in the folder whose ledger it guards.
LOCK = ".sgd_influence_ledger.lock"
#: Seconds to wait for another writer before giving up.
WAIT_SECONDS = 30.0
#: A lock file older than this was left by a process that died; it is taken over.
STALE_SECONDS = 60.0
_POLL = 0.05


def _take(path: str) -> bool:
    """Create ``path`` exclusively; False if it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    return True


def _stale(path: str) -> bool:
    try:
        return time.time() - os.stat(path).st_mtime > STALE_SECONDS
    except OSError:
        return False


@contextlib.contextmanager
def held(folder: str, flag: str) -> Iterator[None]:
    """Hold the ledger lock of ``folder`` inside the ``with`` block.

    Raises:
        OutputError: another writer held it for :data:`WAIT_SECONDS`, or the lock file
            cannot be made (the message names it and the fix).
        KeyboardInterrupt: a stop was requested while waiting.

    """
    path = os.path.join(folder, LOCK)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            if _take(path):
                break
        except OSError as e:
            raise OutputError(
                f"{path}: cannot make the lock that keeps writers to this folder apart "
                f"({e.strerror or e}); nothing was written. Fix the folder's permissions, or "
                f"give another {flag}"
            ) from e
        if _stale(path):
            with contextlib.suppress(OSError):
                os.unlink(path)
            continue
        if time.monotonic() > deadline:
            raise OutputError(
                f"{path}: another sgd-influence command is writing into this folder (waited "
                f"{WAIT_SECONDS:g} s); nothing was written. Run again when it is done, or "
                "delete that file if no other command runs"
            )
        interrupts.check()
        time.sleep(_POLL)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
