"""Units of work in worker processes on this machine, results in item order: the process pool
behind :class:`.executor.LocalExecutor` (and the process plumbing :mod:`.coworker` shares).

A unit is a module-level function called as ``unit(item, progress, *shared)`` (see
:mod:`.executor`): ``item`` is small and goes to the worker that runs it; ``shared`` are the
big inputs every unit reads (the model, the decoded arrays), sent to each worker once.

How the workers start, and how ``shared`` reaches them:

- ``spawn`` (everywhere; the only way on Windows and macOS, where the console and laptops
  run): each worker is a fresh Python that imports this package. ``shared`` is pickled once
  per :func:`run_parallel` into a temporary folder, its large arrays as ``.npy`` files that
  every worker maps copy-on-write (:func:`_write_shared`), so the decoded datasets are on disk
  once, not once per worker. The model is pickled as its definition and parameter values and
  rebuilt by the adapter (``NnablaModel.__reduce__``) after the adapter has set up nnabla in
  that process (:func:`.nnabla_adapter.prepare_process`, the ``initializer``).
- ``fork`` (Linux only, the default there): the workers start as copies of this process and
  inherit ``shared`` as it is, copy-on-write, without pickling. The same worker body runs the
  same units on the same items, so the results are those of ``spawn`` (both are tested on
  Linux); only the start is faster. CUDA does not survive a fork: :func:`workers_for` gives
  one worker (this process) to any context but a CPU one.

Guarantees of :func:`run_parallel`:

- the results are ``[unit(item, progress, *shared) for item in items]``, in item order,
  whatever order the workers finish in; with ``jobs == 1`` or one item the same loop runs in
  this process, on the caller's own objects (a unit restores what it changes);
- an exception in a unit ends every worker and is re-raised in the parent with its type and
  message (the project's :class:`~sgd_influence_plugin.errors.SGDInfluenceError` types keep
  both); the worker's traceback is attached as the ``__cause__``;
- Ctrl-C (SIGINT) or SIGTERM turned into ``KeyboardInterrupt`` in the parent (directly, or as
  a stop request of :mod:`.interrupts`, looked at every 0.2 s), a worker killed by
  a signal, or a worker that dies without a result: every worker is terminated and reaped before
  the exception leaves, so no process is left behind. Workers ignore SIGINT (the parent
  decides), die on SIGTERM, and on Linux also when the parent dies;
- no worker is started once a stop was requested, and Ctrl-C and SIGTERM are held (blocked)
  while workers are started and while they are reaped: a child (forked, or spawned: the
  mask survives ``exec``) starts with both blocked and first ignores SIGINT and takes
  SIGTERM's default action, so no handler of the parent ever runs in a child (e.g. inside
  threading's ``_after_fork``), and a second Ctrl-C cannot cut the reaping short; the parent
  sees a held signal as soon as the block ends.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import sys
import tempfile
import traceback
from typing import Any, Callable, List, Optional, Sequence

from . import interrupts
from .errors import SGDInfluenceError

#: Progress callback handed to a unit: (stage name, steps done, steps in total).
ItemProgress = Callable[[str, int, int], None]

#: Seconds to wait for a terminated worker before killing it.
TERMINATE_GRACE = 5.0
#: The signals that stop a run (see :mod:`.interrupts`).
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Arrays of ``shared`` at least this large go to spawned workers as mapped ``.npy`` files.
_MAPPED_BYTES = 1 << 16


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


def fork_available() -> bool:
    """True where a process can be forked (Linux, macOS); False on Windows."""
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


#: The environment variable that chooses how workers start: ``spawn``, or ``fork`` where
#: there is one; anything else (or nothing) = :func:`default_start`'s choice.
START_VARIABLE = "SGD_INFLUENCE_START"


def default_start() -> str:
    """How :func:`run_parallel` starts workers by default: ``fork`` on Linux (the fast path),
    ``spawn`` elsewhere (Windows has no fork; on macOS system libraries do not survive one),
    unless :data:`START_VARIABLE` says otherwise.
    """
    asked = os.environ.get(START_VARIABLE, "").strip().lower()
    if asked == "spawn" or not fork_available():
        return "spawn"
    return "fork" if asked == "fork" or sys.platform.startswith("linux") else "spawn"


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


def workers_for(
    context: str, requested: Optional[int] = None, n_items: Optional[int] = None
) -> int:
    """Worker processes for work in ``context``.

    One with any context but a CPU one (one device, and CUDA does not survive ``fork()``).
    Otherwise ``requested``, or by default the usable cores (at most ``n_items`` when given).
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


def check_unit(unit: Callable) -> None:
    """Refuse a unit a spawned worker (or a cluster's worker) could not import by name: a
    lambda, a nested function, a bound method. Checked on every platform, so that what runs
    here with ``fork`` runs on Windows too.

    Raises:
        TypeError: ``unit`` is not a module-level function.

    """
    try:
        same = pickle.loads(pickle.dumps(unit)) is unit
    except Exception:  # noqa: BLE001 - whatever stops pickling it
        same = False
    if not same:
        raise TypeError(
            f"{unit!r} is not a module-level function; a unit must be one, so that a worker "
            "process can import it"
        )


def _serial(unit, items, shared, on_result, on_progress) -> List[Any]:
    results = []
    for i, item in enumerate(items):
        results.append(unit(item, _item_progress(on_progress, i), *shared))
        if on_result is not None:
            on_result(i, results[-1])
    return results


def _item_progress(on_progress, index: int) -> ItemProgress:
    if on_progress is None:
        return lambda stage, done, total: None
    return lambda stage, done, total: on_progress(index, stage, done, total)


# ----------------------------------------------------------------------------- shared inputs


class _ArrayFiles(pickle.Pickler):
    """Pickles an object with its large plain arrays written beside it as ``.npy`` files."""

    def __init__(self, file, folder: str):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.folder, self.count = folder, 0

    def persistent_id(self, obj):
        import numpy as np

        if type(obj) is not np.ndarray or obj.dtype.hasobject or obj.nbytes < _MAPPED_BYTES:
            return None
        name = f"a{self.count}.npy"
        self.count += 1
        np.save(os.path.join(self.folder, name), obj, allow_pickle=False)
        return name


class _MappedArrays(pickle.Unpickler):
    def __init__(self, file, folder: str):
        super().__init__(file)
        self.folder = folder

    def persistent_load(self, name):
        import numpy as np

        # Copy-on-write: a unit may change its copy (as a forked worker may), never the file.
        return np.load(os.path.join(self.folder, name), mmap_mode="c").view(np.ndarray)


def _write_shared(shared: Sequence[Any], folder: str) -> None:
    with open(os.path.join(folder, "shared.pkl"), "wb") as f:
        _ArrayFiles(f, folder).dump(tuple(shared))


def _read_shared(folder: str) -> tuple:
    with open(os.path.join(folder, "shared.pkl"), "rb") as f:
        return _MappedArrays(f, folder).load()


# ----------------------------------------------------------------------------- workers


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


def exception_payload(exc: BaseException) -> bytes:
    """The exception pickled with its traceback text; a stand-in if it does not pickle."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt
    except Exception:  # noqa: BLE001 - any pickling failure gets the stand-in
        blob = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
    return pickle.dumps((blob, text))


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


def _worker(code: bytes, shared, start: str, tasks, results, parent_pid: int) -> None:
    """Body of a worker: take ``(index, item)`` from ``tasks`` until None, send back
    ``("ok", i, result)``, ``("progress", i, (stage, done, total))`` or ``("error", i, payload)``.

    ``code`` is ``(initializer, unit)`` pickled, loaded only after the initializer's module
    (the adapter) could set up the process; ``shared`` the objects (``fork``) or the folder
    they were written to (``spawn``), opened with the first item.
    """
    child_setup(parent_pid)
    opened = None
    while True:
        task = tasks.recv()
        if task is None:
            return
        i, item = task

        def progress(stage, done, total, _i=i):
            results.send(("progress", _i, (stage, done, total)))

        try:
            if opened is None:
                initializer, unit = pickle.loads(code)
                if initializer is not None:
                    initializer()
                opened = shared if start == "fork" else _read_shared(shared)
            out = unit(item, progress, *opened)
        except Exception as exc:  # noqa: BLE001 - every error goes to the parent
            results.send(("error", i, exception_payload(exc)))
            return
        results.send(("ok", i, out))


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


def _start_workers(ctx, jobs: int, args: tuple) -> list:
    """``jobs`` started workers as ``(process, task sender, result receiver)``."""
    workers = []
    with signals_held():
        for _ in range(jobs):
            task_recv, task_send = ctx.Pipe(duplex=False)
            result_recv, result_send = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_worker, args=(*args, task_recv, result_send, os.getpid()), daemon=True
            )
            proc.start()
            task_recv.close()  # the child's ends: close the parent's copies
            result_send.close()
            workers.append((proc, task_send, result_recv))
    return workers


def run_parallel(
    unit: Callable[..., Any],
    items: Sequence[Any],
    shared: Sequence[Any] = (),
    jobs: Optional[int] = None,
    on_result: Optional[Callable[[int, Any], None]] = None,
    on_progress: Optional[Callable[[int, str, int, int], None]] = None,
    start: Optional[str] = None,
    initializer: Optional[Callable[[], None]] = None,
) -> List[Any]:
    """``[unit(item, progress, *shared) for item in items]``, computed by up to ``jobs``
    worker processes.

    Args:
        unit: a module-level function (:func:`check_unit`), called in a worker;
            ``progress(stage, done, total)`` forwards to ``on_progress`` in the parent (pass
            it to the core as its progress callback). Its return value must pickle (arrays,
            numbers, dataclasses of them). Changes it makes to ``shared`` (e.g. the model's
            parameters) stay in the worker: each item must set up the state it needs.
        items: the work, one pickled item per unit.
        shared: objects every unit gets, sent to each worker once (see the module docstring).
        jobs: number of worker processes; None = :func:`default_jobs`; 1 (or a single item)
            runs everything in this process.
        on_result: called in the parent as ``on_result(index, result)`` when an item is done
            (in completion order).
        on_progress: called in the parent as ``on_progress(index, stage, done, total)``.
        start: ``fork`` or ``spawn``; None = :func:`default_start`.
        initializer: a module-level function each worker calls before it opens ``shared``
            (e.g. :func:`.nnabla_adapter.prepare_process`).

    Returns:
        The results, in the order of ``items``.

    Raises:
        Exception: the first exception of any unit, same type and message.
        TypeError: ``unit`` is not a module-level function.
        WorkerError: a worker died without a result (e.g. killed by the out-of-memory killer).
        KeyboardInterrupt: Ctrl-C or SIGTERM (as the CLI maps it), or a worker ended by
            SIGINT/SIGTERM. In every case the workers are ended and reaped first.

    """
    check_unit(unit)
    items = list(items)
    n = len(items)
    jobs = default_jobs(n) if jobs is None else int(jobs)
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    jobs = min(jobs, n)
    if jobs <= 1:
        return _serial(unit, items, tuple(shared), on_result, on_progress)
    import multiprocessing

    start = start or default_start()
    ctx = multiprocessing.get_context(start)
    sys.stdout.flush()
    sys.stderr.flush()
    interrupts.check()  # a stop requested before (e.g. while the curvature was measured)
    folder = None
    workers: list = []
    try:
        if start == "fork":
            handle = tuple(shared)
        else:
            handle = folder = tempfile.mkdtemp(prefix="sgd_influence_shared_")
            _write_shared(shared, folder)
        code = pickle.dumps((initializer, unit))
        workers = _start_workers(ctx, jobs, (code, handle, start))
        return _collect(workers, items, on_result, on_progress)
    finally:
        try:
            stop_processes(workers)  # may raise a Ctrl-C it held while reaping
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)


def _collect(workers, items, on_result, on_progress) -> List[Any]:
    """Hand ``items`` to the started workers one at a time; their results in item order."""
    from multiprocessing.connection import wait

    n = len(items)
    results: List[Any] = [None] * n
    done = [False] * n
    next_item = 0
    for _, tasks, _ in workers:
        tasks.send((next_item, items[next_item]))
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
                raise_for_dead(proc)
            if kind == "progress":
                if on_progress is not None:
                    on_progress(i, *value)
                continue
            if kind == "error":
                raise_from_payload(value, i)
            results[i], done[i] = value, True
            if on_result is not None:
                on_result(i, value)
            try:
                tasks.send((next_item, items[next_item]) if next_item < n else None)
            except OSError:  # BrokenPipeError: the worker died after its result
                raise_for_dead(proc)
            if next_item < n:
                next_item += 1
            else:
                del busy[id(r)]
    for proc, _, _ in workers:
        proc.join()
    return results
