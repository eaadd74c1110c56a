"""What every child process of this package shares (:mod:`.parallel`'s workers, the
:mod:`.coworker`): how it starts, how its errors and its death reach the parent, and how the
parent stops it.

- Ctrl-C (SIGINT) and SIGTERM are held (blocked) while a child is started and while it is
  reaped (:func:`signals_held`): a child (forked, or spawned: the mask survives ``exec``)
  starts with both blocked and first ignores SIGINT and takes SIGTERM's default action
  (:func:`child_setup`), so no handler of the parent ever runs in a child (e.g. inside
  threading's ``_after_fork``), and a second Ctrl-C cannot cut the reaping short; the parent
  sees a held signal as soon as the block ends. Children ignore SIGINT (the parent decides),
  die on SIGTERM, and on Linux also when the parent dies.
- An exception in a child travels as :func:`exception_payload` and is raised again in the
  parent with its type and message (:func:`raise_from_payload`; the project's
  :class:`~sgd_influence_plugin.errors.SGDInfluenceError` types keep both), the child's
  traceback attached as the ``__cause__``.
- A child that ends without a result is reported as :class:`WorkerError`, or as
  ``KeyboardInterrupt`` when a signal ended it (:func:`raise_for_dead`).
- :func:`stop_processes` terminates, waits for, kills if need be, and reaps every child, so
  no process is left behind.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import traceback
from typing import List

from .errors import SGDInfluenceError

#: Seconds to wait for a terminated worker before killing it.
TERMINATE_GRACE = 5.0
#: The signals that stop a run (see :mod:`.interrupts`).
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class WorkerError(SGDInfluenceError):
    """A worker process ended without a result (killed, crashed, or out of memory)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as text (attached as ``__cause__``)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


@contextlib.contextmanager
def signals_held():
    """Hold Ctrl-C (SIGINT) and SIGTERM while inside; one that arrives meanwhile is delivered
    (raised again) when the block ends.

    Two layers: the signals are blocked in this thread (so a process started inside starts
    with both blocked), and, in the main thread, Python's handlers for them are replaced by
    one that only records them (a signal another thread receives still runs Python's handler
    in the main thread).
    """
    import threading

    held: List[int] = []

    def hold(signum, frame):
        held.append(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, hold) for s in _STOP_SIGNALS}
    mask = hasattr(signal, "pthread_sigmask")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS) if mask else None
    try:
        yield
    finally:
        if mask:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a pending one is recorded now
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)  # to the handler that was in place before


def _die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM to this process when its parent exits."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_setup(parent_pid: int) -> None:
    """First thing in a child: its own signal handling, then die with the parent."""
    # Started with both signals blocked (see signals_held): first the worker's own handling,
    # then unblock (a pending Ctrl-C is dropped, a pending SIGTERM ends the worker).
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C for everyone
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # terminate() ends a worker at once
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def exception_payload(exc: BaseException) -> bytes:
    """The exception pickled with its traceback text; a stand-in if it does not pickle."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt
    except Exception:  # noqa: BLE001 - any pickling failure gets the stand-in
        blob = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
    return pickle.dumps((blob, text))


def raise_from_payload(payload: bytes, index: int):
    """Raise the exception of :func:`exception_payload` (item ``index``), its traceback text
    as the ``__cause__``.
    """
    blob, text = pickle.loads(payload)
    try:
        exc = pickle.loads(blob)
    except Exception:  # noqa: BLE001 - pickled in the worker, so this is unlikely
        exc = RuntimeError(f"item {index} failed in a worker:\n{text}")
    raise exc from RemoteTraceback(text)


def raise_for_dead(proc) -> None:
    """Raise the error that fits a worker that ended before returning its result."""
    proc.join()
    code = proc.exitcode
    if code is not None and code < 0 and -code in (signal.SIGINT, signal.SIGTERM):
        raise KeyboardInterrupt(f"a worker was ended by signal {-code}")
    raise WorkerError(
        f"a worker process ended with exit code {code} before returning its result (out of "
        "memory? try fewer jobs, e.g. --jobs 1)"
    )


def stop_processes(workers) -> None:
    """Terminate every live worker, wait for it, kill it if it lingers, and reap it; with
    Ctrl-C and SIGTERM held, so a second Ctrl-C cannot leave a worker behind.
    """
    with signals_held():
        for proc, _, _ in workers:
            if proc.is_alive():
                proc.terminate()
        for proc, tasks, results in workers:
            proc.join(TERMINATE_GRACE)
            if proc.is_alive():
                proc.kill()
                proc.join()
            tasks.close()
            results.close()
