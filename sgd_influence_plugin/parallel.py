"""Run independent items (e.g. trials) in forked worker processes, results in item order.

Why fork: the workers start as copies of the parent, so the decoded datasets (numpy arrays)
and the loaded model are shared copy-on-write and never pickled or copied per item; only the
item's index goes to a worker and only its result comes back. nnabla's CPU kernels are
single-threaded and keep no thread pool, so a forked child can build and run graphs after the
parent already has (checked by ``tests/test_parallel.py`` on a real model). CUDA does not
survive a fork: :func:`workers_for` gives one worker to any context but a CPU one.

Guarantees of :func:`run_parallel`:

- the results are ``[fn(item, progress) for item in items]``, in item order, whatever order the
  workers finish in; with ``jobs == 1``, one item, or no ``fork`` start method (Windows, where
  the console runs), the same loop runs in this process;
- an exception in ``fn`` ends every worker and is re-raised in the parent with its type and
  message (the project's :class:`~sgd_influence_plugin.errors.SGDInfluenceError` types keep
  both); the worker's traceback is attached as the ``__cause__``;
- Ctrl-C (SIGINT) or SIGTERM turned into ``KeyboardInterrupt`` in the parent (directly, or as
  a stop request of :mod:`.interrupts`, looked at every 0.2 s), a worker killed by
  a signal, or a worker that dies without a result: every worker is terminated and reaped before
  the exception leaves, so no process is left behind. Workers ignore SIGINT (the parent
  decides), die on SIGTERM, and on Linux also when the parent dies;
- no worker is started once a stop was requested, and Ctrl-C and SIGTERM are held (blocked)
  while workers are forked and while they are reaped: a child starts with both blocked and
  first ignores SIGINT and takes SIGTERM's default action, so no handler of the parent ever
  runs in a child (e.g. inside threading's ``_after_fork``), and a second Ctrl-C cannot cut
  the reaping short; the parent sees a held signal as soon as the block ends.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import interrupts
from .errors import SGDInfluenceError

#: Progress callback handed to ``fn``: (stage name, steps done, steps in total).
ItemProgress = Callable[[str, int, int], None]

#: Seconds to wait for a terminated worker before killing it.
_TERMINATE_GRACE = 5.0
#: The signals that stop a run (see :mod:`.interrupts`).
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_held():
    """Hold Ctrl-C (SIGINT) and SIGTERM while inside; one that arrives meanwhile is delivered
    (raised again) when the block ends.

    Two layers: the signals are blocked in this thread (so a process forked inside starts
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


def fork_available() -> bool:
    """True where worker processes can be forked (Linux, macOS); False on Windows."""
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container's
    cpuset), else ``os.cpu_count()``; at least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_jobs(n_items: int) -> int:
    """The default number of workers for ``n_items`` items: the usable cores, at most
    ``n_items``, at least 1.
    """
    return max(1, min(usable_cores(), int(n_items)))


def cluster_resources(context: str) -> Optional[Dict[str, float]]:
    """The Dask worker resources a unit computing in nnabla ``context`` needs on a cluster
    (:meth:`.cluster.Cluster.map`): one GPU (``{"GPU": 1}``) unless the context is a CPU one.
    """
    return None if context.startswith("cpu") else {"GPU": 1}


def workers_for(
    context: str, requested: Optional[int] = None, n_items: Optional[int] = None
) -> int:
    """Worker processes to fork for work in ``context``.

    One with any context but a CPU one: CUDA does not survive ``fork()``. Otherwise
    ``requested``, or by default the usable cores (at most ``n_items`` when given).
    """
    if not context.startswith("cpu"):
        return 1
    if requested:
        return int(requested)
    return usable_cores() if n_items is None else default_jobs(n_items)


class WorkerError(SGDInfluenceError):
    """A worker process ended without a result (killed, crashed, or out of memory)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as text (attached as ``__cause__``)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def _serial(fn, items, on_result, on_progress) -> List[Any]:
    results = []
    for i, item in enumerate(items):
        progress = _item_progress(on_progress, i)
        results.append(fn(item, progress))
        if on_result is not None:
            on_result(i, results[-1])
    return results


def _item_progress(on_progress, index: int) -> ItemProgress:
    if on_progress is None:
        return lambda stage, done, total: None
    return lambda stage, done, total: on_progress(index, stage, done, total)


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


def _exception_payload(exc: BaseException) -> bytes:
    """The exception pickled with its traceback text; a stand-in if it does not pickle."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt
    except Exception:  # noqa: BLE001 - any pickling failure gets the stand-in
        blob = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
    return pickle.dumps((blob, text))


def _child_setup(parent_pid: int) -> None:
    """First thing in a forked child: its own signal handling, then die with the parent."""
    # Forked with both signals blocked (see signals_held): first the worker's own handling,
    # then unblock (a pending Ctrl-C is dropped, a pending SIGTERM ends the worker).
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C for everyone
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # terminate() ends a worker at once
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _worker(fn, items, tasks, results, parent_pid: int) -> None:
    """Body of a worker: take item indices from ``tasks`` until None, send back
    ``("ok", i, result)``, ``("progress", i, (stage, done, total))`` or ``("error", i, payload)``.
    """
    _child_setup(parent_pid)
    while True:
        i = tasks.recv()
        if i is None:
            return

        def progress(stage, done, total, _i=i):
            results.send(("progress", _i, (stage, done, total)))

        try:
            out = fn(items[i], progress)
        except Exception as exc:  # noqa: BLE001 - every error goes to the parent
            results.send(("error", i, _exception_payload(exc)))
            return
        results.send(("ok", i, out))


def _raise_from_payload(payload: bytes, index: int):
    blob, text = pickle.loads(payload)
    try:
        exc = pickle.loads(blob)
    except Exception:  # noqa: BLE001 - pickled in the worker, so this is unlikely
        exc = RuntimeError(f"item {index} failed in a worker:\n{text}")
    raise exc from RemoteTraceback(text)


def _raise_for_dead(proc) -> None:
    """Raise the error that fits a worker that ended before returning its result."""
    proc.join()
    code = proc.exitcode
    if code is not None and code < 0 and -code in (signal.SIGINT, signal.SIGTERM):
        raise KeyboardInterrupt(f"a worker was ended by signal {-code}")
    raise WorkerError(
        f"a worker process ended with exit code {code} before returning its result (out of "
        "memory? try fewer jobs, e.g. --jobs 1)"
    )


def _stop(workers) -> None:
    """Terminate every live worker, wait for it, kill it if it lingers, and reap it; with
    Ctrl-C and SIGTERM held, so a second Ctrl-C cannot leave a worker behind.
    """
    with signals_held():
        for proc, _, _ in workers:
            if proc.is_alive():
                proc.terminate()
        for proc, tasks, results in workers:
            proc.join(_TERMINATE_GRACE)
            if proc.is_alive():
                proc.kill()
                proc.join()
            tasks.close()
            results.close()


def run_parallel(
    fn: Callable[[Any, ItemProgress], Any],
    items: Sequence[Any],
    jobs: Optional[int] = None,
    on_result: Optional[Callable[[int, Any], None]] = None,
    on_progress: Optional[Callable[[int, str, int, int], None]] = None,
) -> List[Any]:
    """``[fn(item, progress) for item in items]``, computed by up to ``jobs`` forked workers.

    Args:
        fn: called as ``fn(item, progress)`` in a worker; ``progress(stage, done, total)``
            forwards to ``on_progress`` in the parent (pass it to the core as its progress
            callback). Its return value must pickle (arrays, numbers, dataclasses of them).
            Changes ``fn`` makes to objects it inherited (e.g. the model's parameters) stay in
            the worker: each item must set up the state it needs.
        items: the work, inherited by the workers (never pickled); only indices and results
            cross process boundaries.
        jobs: number of worker processes; None = :func:`default_jobs`; 1 (or a single item,
            or no ``fork`` on this platform) runs everything in this process.
        on_result: called in the parent as ``on_result(index, result)`` when an item is done
            (in completion order).
        on_progress: called in the parent as ``on_progress(index, stage, done, total)``.

    Returns:
        The results, in the order of ``items``.

    Raises:
        Exception: the first exception of any ``fn`` call, same type and message.
        WorkerError: a worker died without a result (e.g. killed by the out-of-memory killer).
        KeyboardInterrupt: Ctrl-C or SIGTERM (as the CLI maps it), or a worker ended by
            SIGINT/SIGTERM. In every case the workers are ended and reaped first.

    """
    items = list(items)
    n = len(items)
    jobs = default_jobs(n) if jobs is None else int(jobs)
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    jobs = min(jobs, n)
    if jobs <= 1 or not fork_available():
        return _serial(fn, items, on_result, on_progress)

    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("fork")
    sys.stdout.flush()
    sys.stderr.flush()
    interrupts.check()  # a stop requested before (e.g. while the curvature was measured)
    workers = []  # (process, parent's task sender, parent's result receiver)
    results: List[Any] = [None] * n
    done = [False] * n
    next_item = 0
    try:
        with signals_held():
            for _ in range(jobs):
                task_recv, task_send = ctx.Pipe(duplex=False)
                result_recv, result_send = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=_worker,
                    args=(fn, items, task_recv, result_send, os.getpid()),
                    daemon=True,
                )
                proc.start()
                task_recv.close()  # the child's ends: close the parent's copies
                result_send.close()
                workers.append((proc, task_send, result_recv))
                task_send.send(next_item)
                next_item += 1
        busy = {id(r): (proc, tasks, r) for proc, tasks, r in workers}
        while not all(done):
            conns = [r for _, _, r in busy.values()]
            # A stop requested by Ctrl-C or SIGTERM (see interrupts) only sets a flag: look at
            # it a few times a second even while no worker says anything.
            interrupts.check()
            ready = wait(conns + [p.sentinel for p, _, _ in busy.values()], timeout=0.2)
            for r in ready:
                if isinstance(r, int) or id(r) not in busy:
                    continue  # a sentinel: the worker's pipe is at EOF too and says more
                proc, tasks, _ = busy[id(r)]
                try:
                    kind, i, value = r.recv()
                except EOFError:  # the worker ended while it had an item
                    _raise_for_dead(proc)
                if kind == "progress":
                    if on_progress is not None:
                        on_progress(i, *value)
                    continue
                if kind == "error":
                    _raise_from_payload(value, i)
                results[i], done[i] = value, True
                if on_result is not None:
                    on_result(i, value)
                try:
                    tasks.send(next_item if next_item < n else None)
                except OSError:  # BrokenPipeError: the worker died after its result
                    _raise_for_dead(proc)
                if next_item < n:
                    next_item += 1
                else:
                    del busy[id(r)]
        for proc, _, _ in workers:
            proc.join()
        return results
    finally:
        _stop(workers)


# ----------------------------------------------------------------------------- one helper


def _helper_loop(fn, tasks, results, parent_pid: int) -> None:
    """Body of a helper: ``fn(*args)`` for each ``args`` tuple from ``tasks`` until None; sends
    ``("ok", result)`` or ``("error", payload)`` (and ends after an error).
    """
    _child_setup(parent_pid)
    while True:
        args = tasks.recv()
        if args is None:
            return
        try:
            out = fn(*args)
        except Exception as exc:  # noqa: BLE001 - every error goes to the parent
            results.send(("error", _exception_payload(exc)))
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
            _raise_for_dead(self._proc)

    def result(self) -> Any:
        """The result of the last :meth:`submit`, same guarantees as :func:`run_parallel`.

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
                    _raise_for_dead(self._proc)
                if kind == "error":
                    _raise_from_payload(value, 0)
                return value
            _raise_for_dead(self._proc)


@contextlib.contextmanager
def helper(fn: Callable[..., Any]):
    """A :class:`Helper` running ``fn`` in one forked process, ended and reaped on leaving
    (also on an exception or Ctrl-C). The child is a copy of this process at the moment of
    entering: what ``fn`` uses (a model, arrays) is inherited, not sent. Yields None where
    there is no ``fork`` (the caller then computes ``fn`` itself).
    """
    if not fork_available():
        yield None
        return
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    sys.stdout.flush()
    sys.stderr.flush()
    interrupts.check()
    entry = []
    try:
        with signals_held():
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
        proc.join(_TERMINATE_GRACE)
    finally:
        _stop(entry)
