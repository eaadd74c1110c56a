"""Ctrl-C and SIGTERM as a request to stop at the next safe point.

Python runs a signal handler between any two bytecodes, including inside a Python callback
that nnabla's C++ code is calling. A handler that raises there (Python's default for Ctrl-C)
leaves nnabla's Cython wrapper returning a value with an exception set, which surfaces as
``SystemError: ... returned a result with an error set`` instead of a clean stop. So the
handlers of :func:`stop_requests` only record the request; :func:`check`, called between
steps (training and replay steps, dataset rows, thumbnails, before the outputs are moved into
place), raises :class:`KeyboardInterrupt` from plain Python. A second signal stops at once,
and from then on further signals are ignored, so the cleanup on the way out (temporary caches,
staged outputs, worker processes) cannot be cut short. :func:`exit_process` ends an
interrupted process without Python's exit work (everything was cleaned up already), so a
late Ctrl-C cannot print a traceback from an ``atexit`` handler.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Iterator

_requested = False

#: What the entry points print on an interrupt (the CLI prefixes its name).
MESSAGE = "interrupted; no partial output was written"


def _handler(signum, frame):
    global _requested
    if _requested:  # asked twice: stop now, wherever we are; a third time changes nothing
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt
    _requested = True


@contextlib.contextmanager
def stop_requests() -> Iterator[None]:
    """While inside, Ctrl-C (SIGINT) and SIGTERM request a stop (main thread only); the
    previous handlers come back on exit.
    """
    global _requested
    _requested = False
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _requested = False


def requested() -> bool:
    """Whether a stop was requested inside :func:`stop_requests`."""
    return _requested


def check() -> None:
    """Raise :class:`KeyboardInterrupt` if a stop was requested."""
    if _requested:
        raise KeyboardInterrupt


def checked_progress(progress):
    """Wrap a ``progress(stage, done, total)`` callback (or None) so that it calls
    :func:`check` first: the computation stops at the next step after a signal.
    """

    def call(stage: str, done: int, total: int) -> None:
        check()
        if progress is not None:
            progress(stage, done, total)

    return call


def is_interrupt(error: BaseException) -> bool:
    """True for a KeyboardInterrupt, or an error raised while one was being handled (e.g. the
    ``SystemError`` nnabla's C++ code turns an interrupt in a callback into).
    """
    seen = set()
    e = error
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def exit_process(status: int) -> None:
    """End the process with ``status`` (the entry points' last call).

    After an interrupt (status 130) or an error (any other status but 0) the process ends
    without Python's exit work (``atexit`` handlers, e.g. multiprocessing's, and the teardown
    of every object): everything was cleaned up before the status was returned, a Ctrl-C
    during that work would print a traceback after the one line, and objects h5py left
    behind by a failed write (a full disk, ``ulimit -f``) can crash that teardown.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if status != 0:
        os._exit(status)
    sys.exit(status)
