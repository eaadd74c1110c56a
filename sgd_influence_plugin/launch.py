"""The ``sgd-influence`` command's first code: Ctrl-C is handled before anything is imported.

Importing the package and its dependencies (numpy, nnabla, ...) takes a few tenths of a
second, and Python's default Ctrl-C there prints a traceback of the import. Until the command
installs its own stop handling (:func:`.interrupts.stop_requests`), nothing has been written,
so a Ctrl-C or SIGTERM in that time ends the process at once, with the usual one line and exit
status 130. Messages Python prints while objects of a C extension are torn down after an
error (``Exception ignored in: 'h5py...'``) are not shown either: the command's own line has
said what happened.
"""

from __future__ import annotations

import os
import signal
import sys

_PREFIX = "sgd-influence: "


def _stop_now(signum, frame) -> None:
    try:
        os.write(2, (_PREFIX + "interrupted; no partial output was written\n").encode())
    finally:
        os._exit(130)


def _from_h5py(tb) -> bool:
    while tb is not None:
        if "h5py" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _quiet_unraisable(hook):
    def unraisable(info) -> None:
        if "h5py" in repr(getattr(info, "object", "")) or _from_h5py(info.exc_traceback):
            return
        hook(info)

    return unraisable


def _quiet_excepthook(hook):
    # Cython prints an error in a __dealloc__ through sys.excepthook, not the unraisable hook.
    def excepthook(kind, value, tb) -> None:
        if _from_h5py(tb) and "__dealloc__" in "".join(_names(tb)):
            return
        hook(kind, value, tb)

    return excepthook


def _names(tb):
    while tb is not None:
        yield tb.tb_frame.f_code.co_name
        tb = tb.tb_next


def early_stop_handling() -> None:
    """Until the run installs its own stop handling, a Ctrl-C or SIGTERM ends the process at
    once with one line and exit status 130 (the console entry scripts call this first, before
    they import the rest of the package).
    """
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _stop_now)


def entry() -> None:
    """Run the command: early stop handling, then :func:`.cli.main` and its exit status."""
    early_stop_handling()
    sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
    sys.excepthook = _quiet_excepthook(sys.excepthook)
    from . import interrupts
    from .cli import main

    status = main()
    for s in (signal.SIGINT, signal.SIGTERM):  # done: a late signal changes nothing now
        signal.signal(s, signal.SIG_IGN)
    interrupts.exit_process(status)
