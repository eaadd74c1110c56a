"""The Dask executor: independent units of work on an existing Dask distributed cluster
(``--cluster ADDRESS``).

:class:`DaskExecutor` implements :class:`.executor.Executor` (the interface, and what a unit
is, are described there) on the workers of a `Dask distributed
<https://distributed.dask.org>`_ scheduler: the same units as :class:`.executor.LocalExecutor`
(trials, check epochs, re-runs, retrainings, the paper protocol's trainings), with the same
results. Dask is an optional dependency (``pip install sgd-influence-plugin[cluster]``);
nothing of it is imported without ``--cluster``. docs/cluster.md says how to start a cluster.

How :meth:`DaskExecutor.map` runs ``unit(item, progress, *shared)`` there:

- ``item`` is pickled per unit;
- ``shared`` is sent once per map, pickled, as a task whose result it is (:func:`_share`),
  and each worker process unpickles its own copy once, after the adapter has set nnabla up
  there (:func:`.nnabla_adapter.prepare_process`). The model travels as its definition and
  parameter values and is rebuilt by the adapter (``NnablaModel.__reduce__``). Datasets are
  sent as arrays: the workers need no access to the submitter's files, except where a unit
  runs ``nnabla_cli`` on CSV files (retraining from scratch), which
  :meth:`DaskExecutor.check_paths` checks first;
- ``progress(stage, done, total)`` reaches the submitter's ``on_progress`` (at most twice a
  second per unit) and ends the unit at its next step once the submitter stops the run;
- with a GPU context every unit asks for a worker resource ``GPU=1``.

Beyond :class:`.executor.Executor`'s guarantees: a worker lost while it runs a unit (it
crashed, was killed, its machine went away) has the unit run again elsewhere by Dask (up to
``distributed.scheduler.allowed-failures`` times, 3 by default); past that, or when the
scheduler goes away or no worker is left for :data:`NO_WORKERS_GRACE` seconds, the map stops
with :class:`~.errors.ClusterError`. Ctrl-C or SIGTERM (via :mod:`.interrupts`) cancels every
unit still queued and stops the running ones at their next step. One unit runs at a time in a
worker process (units share that process's copy of the model), so start workers with
``--nthreads 1``, one per core.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from . import interrupts
from .cluster_address import START as _START
from .cluster_address import probe
from .errors import ClusterError
from .nnabla_adapter import prepare_process
from .parallel import check_unit

#: Seconds Dask's client may take to connect once the scheduler has answered
#: (:mod:`.cluster_address`), and to wait for a first worker.
CONNECT_TIMEOUT = 10.0
#: Seconds a map waits while the scheduler has no worker at all before it gives up.
NO_WORKERS_GRACE = 60.0
#: Seconds between two progress messages of one unit.
PROGRESS_INTERVAL = 0.5

_INSTALL = "pip install 'sgd-influence-plugin[cluster]' (Dask distributed 2024.8.0)"
#: One unit at a time per worker process: units share that process's copy of the model.
_UNIT_LOCK = threading.Lock()


class UnitStopped(Exception):
    """Raised in a unit whose run the submitter stopped (Ctrl-C, or another unit failed)."""


def _versions() -> Dict[str, str]:
    """The versions that decide the numbers: this package, nnabla, numpy, Python."""
    import nnabla
    import numpy

    from . import __version__

    return {
        "sgd_influence_plugin": __version__,
        "nnabla": nnabla.__version__,
        "numpy": numpy.__version__,
        "python": "{}.{}".format(*sys.version_info[:2]),
    }


def _missing(paths: Sequence[str]) -> List[str]:
    """The paths of ``paths`` this process cannot read (run on each worker)."""
    return [p for p in paths if not os.access(p, os.R_OK)]


def resources_for(context: str) -> Optional[Dict[str, float]]:
    """The Dask worker resources a unit computing in nnabla ``context`` needs: one GPU
    (``{"GPU": 1}``) unless the context is a CPU one.
    """
    return None if context.startswith("cpu") else {"GPU": 1}


class DaskExecutor:
    """A connection to a Dask scheduler whose workers run the units of :meth:`map` (see the
    module docstring and :class:`.executor.Executor`). Made by :func:`connect`.
    """

    where = "cluster"
    same_machine = False

    def __init__(self, client, address: str, context: str = "cpu"):
        self.client = client
        self.address = address
        self.resources = resources_for(context)

    @property
    def slots(self) -> int:
        """Units that can run at once: the worker processes (one unit each at a time)."""
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def cores_per_unit(self, n_units: int) -> int:
        """One: a worker process runs one unit on its one thread (no co-worker)."""
        return 1

    def check_paths(self, paths: Sequence[str], why: str) -> None:
        """Raise :class:`ClusterError` unless every worker can read every path of ``paths``.

        Args:
            paths: absolute paths the units will open on the workers.
            why: what needs them, for the message (e.g. "retraining from scratch").

        """
        paths = [os.path.abspath(p) for p in paths]
        found = self.client.run(_missing, paths)
        lacking = {w: m for w, m in found.items() if m}
        if lacking:
            worker, missing = sorted(lacking.items())[0]
            raise ClusterError(
                f"--cluster {self.address}: {len(lacking)} worker(s), e.g. {worker}, cannot read "
                f"{missing[0]}, which {why} needs; put the data on storage every worker mounts at "
                "the same path (docs/cluster.md)"
            )

    def map(
        self,
        fn: Callable[..., Any],
        items: Sequence[Any],
        shared: Sequence[Any] = (),
        on_result: Optional[Callable[[int, Any], None]] = None,
        on_progress: Optional[Callable[[int, str, int, int], None]] = None,
        name: str = "unit",
    ) -> List[Any]:
        """``[fn(item, progress, *shared) for item in items]``, each call a unit on a worker.

        Args:
            fn: a module-level function (pickled by name: the workers import this package).
            items: one per unit, pickled per unit.
            shared: objects every unit gets, sent once (see the module docstring).
            on_result: called here as ``on_result(index, result)`` as units finish.
            on_progress: called here as ``on_progress(index, stage, done, total)``.
            name: names the units in Dask's dashboard (``name-INDEX-RUN``).

        Returns:
            The results, in the order of ``items``.

        Raises:
            Exception: the first exception of a unit, same type and message.
            ClusterError: a unit's worker was lost more often than Dask retries, the
                scheduler went away, or no worker was left.
            KeyboardInterrupt: Ctrl-C or SIGTERM; the units are cancelled first.

        """
        from distributed import Event, Queue

        check_unit(fn)
        items = list(items)
        client = self.client
        run = f"sgdi-{name}-{uuid.uuid4().hex[:12]}"
        stop = Event(run + "-stop", client=client)
        queue = Queue(run + "-progress", client=client) if on_progress else None
        handles = [_share(client, obj, f"{run}-shared-{k}") for k, obj in enumerate(shared)]
        futures = [
            client.submit(
                _unit,
                fn,
                i,
                item,
                run,
                queue is not None,
                *handles,
                key=f"{name}-{i}-{run}",
                pure=False,
                resources=self.resources,
            )
            for i, item in enumerate(items)
        ]
        results: List[Any] = [None] * len(items)
        waiting = set(range(len(items)))
        idle_since: Optional[float] = None
        try:
            while waiting:
                interrupts.check()
                if queue is not None:
                    for i, stage, done, total in queue.get(batch=True):
                        on_progress(i, stage, done, total)
                for i in sorted(waiting):
                    status = futures[i].status
                    if status in ("pending", "lost"):  # lost: Dask computes it again
                        continue
                    if status in ("finished", "error"):
                        results[i] = self._result(futures[i], i, name)
                        waiting.discard(i)
                        if on_result is not None:
                            on_result(i, results[i])
                    else:  # cancelled, not by us: the scheduler went away or dropped it
                        raise ClusterError(
                            f"--cluster {self.address}: the scheduler dropped {name} {i} "
                            f"({status}); nothing was written. Check the scheduler's log"
                        )
                idle_since = self._check_workers(idle_since)
                if waiting:
                    time.sleep(0.2)
            if queue is not None:  # the last messages, so every stage is seen complete
                for i, stage, done, total in queue.get(batch=True):
                    on_progress(i, stage, done, total)
            return results
        except BaseException as e:
            with contextlib.suppress(Exception):
                stop.set()
                client.cancel(futures, force=True)
            if _connection_lost(e):
                raise ClusterError(
                    f"--cluster {self.address}: the connection to the scheduler was lost "
                    f"({type(e).__name__}); nothing was written. Check that the scheduler runs, "
                    "then run again"
                ) from e
            raise
        finally:
            with contextlib.suppress(Exception):
                client.cancel(handles)
                client.run(_forget, run)
            del futures, handles
            with contextlib.suppress(Exception):
                stop.clear()
                if queue is not None:
                    queue.close()

    def _result(self, future, index: int, name: str):
        from distributed import KilledWorker

        try:
            return future.result()
        except KilledWorker as e:
            raise ClusterError(
                f"--cluster {self.address}: {name} {index} lost its worker more often than Dask "
                f"retries ({e}); nothing was written. Check the workers' memory and logs, then "
                "run again"
            ) from e

    def _check_workers(self, idle_since: Optional[float]) -> Optional[float]:
        if self.client.status not in ("running", "connecting"):
            raise ClusterError(
                f"--cluster {self.address}: the connection to the scheduler was lost; nothing "
                "was written"
            )
        if self.client.scheduler_info().get("workers"):
            return None
        now = time.monotonic()
        if idle_since is None:
            return now
        if now - idle_since > NO_WORKERS_GRACE:
            raise ClusterError(
                f"--cluster {self.address}: no worker left for {NO_WORKERS_GRACE:g} s; nothing "
                f"was written. {_START[0].upper() + _START[1:]}"
            )
        return idle_since

    def close(self) -> None:
        """Close the connection (the cluster keeps running)."""
        self.client.close()


def _connection_lost(error: BaseException) -> bool:
    """True for Dask's own errors of a lost scheduler (not an error a unit raised)."""
    import asyncio

    from distributed.comm import CommClosedError

    if isinstance(error, CommClosedError):
        return True
    where = type(error).__module__ or ""
    timeout = isinstance(error, (asyncio.TimeoutError, TimeoutError))
    return timeout or (isinstance(error, OSError) and where.startswith(("distributed", "tornado")))


def _share(client, obj, key: str):
    """``obj`` pickled, as the result of a task that returns those bytes: sent once, to one
    worker, fetched from there by the others, and made again by Dask if every copy is lost
    with its worker (data given to ``client.scatter`` would be lost for good). What workers
    pass to each other are these bytes, never an object a unit has changed (a model half-way
    through a trial): each process unpickles its own copy (:func:`_opened`).
    """
    import warnings

    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    with warnings.catch_warnings():  # "large object in task graph": that is the point here
        warnings.simplefilter("ignore", UserWarning)
        return client.submit(_bytes, blob, key=key, pure=False)


def _bytes(blob: bytes) -> bytes:
    return blob


#: Run -> its shared inputs unpickled in this worker process (the current run only).
_OPENED: Dict[str, List[Any]] = {}


def _opened(run: str, blobs: Sequence[bytes]) -> List[Any]:
    """The shared inputs of ``run`` as this process's own objects, unpickled once per run."""
    if run not in _OPENED:
        _OPENED.clear()
        prepare_process()
        _OPENED[run] = [pickle.loads(b) for b in blobs]
    return _OPENED[run]


def _forget(run: str) -> None:
    """Drop a finished run's objects from this worker process."""
    _OPENED.pop(run, None)


def _unit(fn, index: int, item, run: str, report: bool, *shared):
    """A unit on a worker: ``fn(item, progress, *shared)``, one at a time per process."""
    from distributed import Event, Queue

    stop = Event(run + "-stop")
    queue = Queue(run + "-progress") if report else None
    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < PROGRESS_INTERVAL and done < total:
            return
        last[0] = now
        if stop.is_set():
            raise UnitStopped(f"{run}: stopped by the submitter")
        if queue is not None:
            queue.put((index, stage, done, total))

    with _UNIT_LOCK:
        if stop.is_set():
            raise UnitStopped(f"{run}: stopped by the submitter")
        return fn(item, progress, *_opened(run, shared))


def _connect(address: str, log: Callable[[str], None], context: str = "cpu") -> DaskExecutor:
    import asyncio
    import logging

    try:
        from distributed import Client
    except ImportError:
        raise ClusterError(
            f"--cluster needs Dask distributed, which is not installed: {_INSTALL}"
        ) from None
    address = probe(address)  # bounded, interruptible: a Dask scheduler answers there
    for name in ["distributed", *logging.root.manager.loggerDict]:  # our one line says it all
        if name.split(".")[0] == "distributed":
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, asyncio.TimeoutError) as e:
        raise ClusterError(f"--cluster {address}: cannot connect ({e}); {_START}") from e
    cluster = DaskExecutor(client, address, context)
    try:
        _check_ready(cluster, log)
    except BaseException as e:
        with contextlib.suppress(Exception):
            client.close()
        if isinstance(e, (OSError, TimeoutError, asyncio.TimeoutError)):
            raise ClusterError(
                f"--cluster {address}: the scheduler stopped answering ({type(e).__name__}); "
                f"{_START}"
            ) from e
        raise
    return cluster


def _wait_for_a_worker(cluster: DaskExecutor) -> None:
    """Wait up to CONNECT_TIMEOUT for a first worker, looking at a stop request meanwhile."""
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while not cluster.client.scheduler_info().get("workers"):
        interrupts.check()
        if time.monotonic() > deadline:
            raise ClusterError(
                f"--cluster {cluster.address}: the scheduler has no workers (waited "
                f"{CONNECT_TIMEOUT:g} s); start some with 'dask worker {cluster.address} "
                "--nthreads 1' (docs/cluster.md)"
            )
        time.sleep(0.2)


def _check_ready(cluster: DaskExecutor, log: Callable[[str], None]) -> None:
    """At least one worker, every worker with this machine's versions; a note when workers
    run several threads (units take turns in a process).
    """
    client, address = cluster.client, cluster.address
    _wait_for_a_worker(cluster)
    theirs = {}
    machines = {"scheduler": "the scheduler's machine", "workers": "every worker's machine"}
    for where, call in (("scheduler", client.run_on_scheduler), ("workers", client.run)):
        try:  # the scheduler unpacks the units too: it needs the package as well
            found = call(_versions)
        except Exception as e:  # noqa: BLE001 - e.g. the package does not import there
            raise ClusterError(
                f"--cluster {address}: the {where} cannot run this package "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); install the "
                f"same sgd-influence-plugin and nnabla on {machines[where]} (docs/cluster.md)"
            ) from e
        if where == "scheduler":
            theirs["the scheduler"] = found
        else:
            theirs.update((f"worker {w}", v) for w, v in found.items())
    mine = _versions()
    for worker, versions in theirs.items():
        if versions != mine:
            diff = ", ".join(
                f"{k} {versions.get(k)} (here {v})" for k, v in mine.items() if versions.get(k) != v
            )
            raise ClusterError(
                f"--cluster {address}: {worker} has {diff}; the scores depend on them: "
                "install the same versions on the scheduler and every worker"
            )
    threads = client.nthreads()
    crowded = [w for w, n in threads.items() if n > 1]
    if crowded:
        log(
            f"note: {len(crowded)} of {len(threads)} workers run several threads; units take "
            "turns in a worker process, so start workers with --nthreads 1 and one worker per "
            "core (--nworkers)"
        )
    log(f"cluster {address}: {len(threads)} workers")


@contextlib.contextmanager
def connect(
    address: Optional[str], log: Callable[[str], None] = lambda m: None, context: str = "cpu"
) -> Iterator[Optional[DaskExecutor]]:
    """A :class:`DaskExecutor` on the scheduler at ``address`` for the duration of a ``with``
    block; its units compute in nnabla ``context`` (:func:`resources_for`).

    ``None`` (no ``--cluster``) yields None (:func:`.executor.open_executor` gives a local
    executor instead). The connection is checked before anything is computed: the scheduler
    answers, it has at least one worker, and every worker has this machine's versions of this
    package, nnabla, numpy and Python (the scores depend on them).

    Raises:
        ClusterError: Dask is not installed, the address is malformed or nothing answers
            there, the scheduler has no workers, or a worker has other versions.

    """
    if address is None:  # "" is an address given empty: refused by the check
        yield None
        return
    cluster = _connect(address, log, context)
    try:
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.close()
