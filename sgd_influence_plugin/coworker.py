"""The fd replay's co-worker: one forked process that computes the minus pass of every
replay step (or :mod:`.runner`'s early work) while this process does the rest.

Unlike a unit of :mod:`.executor`, the co-worker needs the state of this process at the
moment it starts (the model half-way through a replay, a closure over it), so it is forked:
only ``fork`` can hand that over without sending it. Where there is no ``fork`` (Windows)
:func:`helper` yields None and the caller computes the same thing itself, with the same
results. A forked co-worker works inside a spawned worker of :mod:`.parallel` too (Linux), and
has the same guarantees on errors, deaths and Ctrl-C as the workers there
(:mod:`.child_processes`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable

from . import child_processes, interrupts, parallel


def _helper_loop(fn, tasks, results, parent_pid: int) -> None:
    """Body of a helper: ``fn(*args)`` for each ``args`` tuple from ``tasks`` until None; sends
    ``("ok", result)`` or ``("error", payload)`` (and ends after an error).
    """
    child_processes.child_setup(parent_pid)
    while True:
        args = tasks.recv()
        if args is None:
            return
        try:
            out = fn(*args)
        except Exception as exc:  # noqa: BLE001 - every error goes to the parent
            results.send(("error", child_processes.exception_payload(exc)))
            return
        results.send(("ok", out))


class Helper:
    """A forked process that computes ``fn(*args)`` while the parent does something else.

    :meth:`submit` hands it the arguments (pickled: keep them small, e.g. indices and one
    vector); :meth:`result` waits for the answer. One call at a time. Made by :func:`helper`.
    """

    def __init__(self, proc, tasks, results):
        self._proc, self._tasks, self._results = proc, tasks, results

    def submit(self, *args) -> None:
        """Start ``fn(*args)`` in the helper."""
        try:
            self._tasks.send(args)
        except OSError:  # BrokenPipeError: the helper died
            child_processes.raise_for_dead(self._proc)

    def result(self) -> Any:
        """The result of the last :meth:`submit`, with the guarantees of
        :func:`.parallel.run_parallel`.

        Raises:
            Exception: the helper's exception, same type and message.
            WorkerError: the helper died without an answer.
            KeyboardInterrupt: a stop was requested (see :mod:`.interrupts`).

        """
        from multiprocessing.connection import wait

        while True:
            interrupts.check()
            ready = wait([self._results, self._proc.sentinel], timeout=0.2)
            if not ready:
                continue
            if self._results in ready or self._results.poll():
                try:
                    kind, value = self._results.recv()
                except EOFError:
                    child_processes.raise_for_dead(self._proc)
                if kind == "error":
                    child_processes.raise_from_payload(value, 0)
                return value
            child_processes.raise_for_dead(self._proc)


@contextlib.contextmanager
def helper(fn: Callable[..., Any]):
    """A :class:`Helper` running ``fn`` in one forked process, ended and reaped on leaving
    (also on an exception or Ctrl-C). The child is a copy of this process at the moment of
    entering: what ``fn`` uses (a model, arrays, its state half-way through a replay) is
    inherited, not sent, which only a fork can do; ``fn`` may be a closure. Yields None where
    there is no ``fork`` (Windows): the caller then computes ``fn`` itself, with the same
    results.
    """
    if not parallel.fork_available():
        yield None
        return
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    sys.stdout.flush()
    sys.stderr.flush()
    interrupts.check()
    entry = []
    try:
        with child_processes.signals_held():
            task_recv, task_send = ctx.Pipe(duplex=False)
            result_recv, result_send = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_helper_loop, args=(fn, task_recv, result_send, os.getpid()), daemon=True
            )
            proc.start()
            task_recv.close()
            result_send.close()
            entry.append((proc, task_send, result_recv))
        yield Helper(proc, task_send, result_recv)
        with contextlib.suppress(OSError):
            task_send.send(None)  # done: the helper returns (then _stop only reaps it)
        proc.join(child_processes.TERMINATE_GRACE)
    finally:
        child_processes.stop_processes(entry)
