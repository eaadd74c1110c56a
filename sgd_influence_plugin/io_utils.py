"""Atomic file output: write to a temporary file in the same folder, then rename.

Files and folders made here get the permissions of any file the user creates
(0666 / 0777 masked by the umask), not the owner-only 0600 / 0700 of :mod:`tempfile`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from typing import Iterator


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permission bits of a new ordinary file: 0666 & ~umask (0644 with the usual umask)."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    """Permission bits of a new folder: 0777 & ~umask (0755 with the usual umask)."""
    return 0o777 & ~current_umask()


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **kwargs) -> Iterator:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path``
    is left as it was. Parent folders are created. The file ends with :func:`file_mode`.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # A short hidden name: a temporary file must fit wherever ``path`` fits (issue 34).
    prefix = "." + os.path.basename(path)[:64] + "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def nearest_existing(path: str) -> str:
    """``path`` itself if it exists, else its closest existing ancestor (absolute)."""
    p = os.path.abspath(path)
    while not os.path.lexists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def makedirs_tracked(folder: str) -> list:
    """Create ``folder`` and missing parents; return the folders created, deepest last.

    If creating one fails (a name too long, no permission, a full disk), the folders this
    call already made are removed again before the error is raised.
    """
    missing = []
    p = os.path.abspath(folder)
    while not os.path.lexists(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        remove_empty_folders(list(reversed(missing)))
        raise
    return list(reversed(missing))


def remove_empty_folders(folders: list) -> None:
    """Remove those of ``folders`` (deepest last, as :func:`makedirs_tracked` returns them)
    that are empty; anything that holds a file stays.
    """
    for f in reversed(folders):
        with contextlib.suppress(OSError):
            os.rmdir(f)


def try_lock(f) -> bool:
    """Take an exclusive lock on the open file ``f`` without waiting; False if another process
    holds it. The lock goes when ``f`` is closed (or the process ends).
    """
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def locked_by_another(path: str) -> bool:
    """True if another process holds the lock of :func:`try_lock` on the file ``path`` (an
    absent file is not locked; nothing is created).
    """
    if not os.path.isfile(path):
        return False
    with open(path, "a+") as f:
        return not try_lock(f)


def what_is(path: str) -> str:
    """How to name ``path`` (which exists, as a name) where a folder was wanted: "a file", or
    the kind of symbolic link that leads to no folder.
    """
    import errno

    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return "a symbolic link that loops (it leads back to itself)"
            return f"a symbolic link to {os.readlink(path)}, which does not exist"
        return f"a symbolic link to {os.readlink(path)}, which is a file"
    return "a file"


def cell_path(cell: str) -> str:
    r"""A file cell as a path of this system: the console on Windows writes relative paths
    with backslashes (``.\0\12.csv``), which nnabla's own loader also accepts; where ``\``
    is no separator they become ``/``.
    """
    text = cell.strip()
    return text.replace("\\", "/") if os.sep == "/" and "\\" in text else text


def data_path(folder: str, cell: str) -> str:
    """The file a cell of a CSV in ``folder`` names, as nnabla's loader opens it: relative
    paths start at ``folder``, and ``..`` steps are taken in the text (``os.path.abspath``),
    so ``link/../a.png`` is ``a.png`` beside the link, not beside the linked folder.
    """
    return os.path.abspath(os.path.join(folder, cell_path(cell)))
