"""Units of work in worker processes on this machine, results in item order: the process pool
behind :class:`.executor.LocalExecutor`.

A unit is a module-level function called as ``unit(item, progress, *shared)`` (see
:mod:`.executor`): ``item`` is small and goes to the worker that runs it; ``shared`` are the
big inputs every unit reads (the model, the decoded arrays), sent to each worker once.

How the workers start, and how ``shared`` reaches them:

- ``spawn`` (everywhere; the only way on Windows and macOS, where the console and laptops
  run): each worker is a fresh Python that imports this package. ``shared`` is written once
  per :func:`run_parallel` into a temporary folder, its large arrays mapped by every worker
  (:mod:`.shared_inputs`); the adapter sets up nnabla in that process first
  (:func:`.nnabla_adapter.prepare_process`, the ``initializer``).
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
  message, the worker's traceback attached as the ``__cause__`` (:mod:`.child_processes`);
- Ctrl-C (SIGINT) or SIGTERM turned into ``KeyboardInterrupt`` in the parent (directly, or as
  a stop request of :mod:`.interrupts`, looked at every 0.2 s), a worker killed by
  a signal, or a worker that dies without a result: every worker is terminated and reaped before
  the exception leaves, so no process is left behind;
- no worker is started once a stop was requested, and Ctrl-C and SIGTERM are held while
  workers are started and while they are reaped (:func:`.child_processes.signals_held`).
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import tempfile
from typing import Any, Callable, List, Optional, Sequence

from . import interrupts
from .child_processes import (
    child_setup,
    exception_payload,
    raise_for_dead,
    raise_from_payload,
    signals_held,
    stop_processes,
)
from .shared_inputs import read_shared, write_shared

#: Progress callback handed to a unit: (stage name, steps done, steps in total).
ItemProgress = Callable[[str, int, int], None]


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


# ----------------------------------------------------------------------------- workers


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
                opened = shared if start == "fork" else read_shared(shared)
            out = unit(item, progress, *opened)
        except Exception as exc:  # noqa: BLE001 - every error goes to the parent
            results.send(("error", i, exception_payload(exc)))
            return
        results.send(("ok", i, out))


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
    code = pickle.dumps((initializer, unit))
    return _in_workers(code, items, shared, jobs, start or default_start(), on_result, on_progress)


def _in_workers(code, items, shared, jobs: int, start: str, on_result, on_progress) -> List[Any]:
    """:func:`run_parallel` in ``jobs`` workers started by ``start``; ``code`` is
    ``(initializer, unit)`` pickled. Every worker is ended and reaped, and the folder of the
    shared inputs removed, however this ends.
    """
    import multiprocessing

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
            write_shared(shared, folder)
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
