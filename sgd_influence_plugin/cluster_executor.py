"""The Dask executor: independent units of work on an existing Dask distributed cluster
(``--cluster ADDRESS``; made by :func:`.cluster.connect`).

:class:`DaskExecutor` implements :class:`.executor.Executor` (the interface, and what a unit
is, are described there) on the workers of a `Dask distributed
<https://distributed.dask.org>`_ scheduler: the same units as :class:`.executor.LocalExecutor`
(trials, check epochs, re-runs, retrainings, the paper protocol's trainings), with the same
results. Dask is an optional dependency (``pip install sgd-influence-plugin[cluster]``);
nothing of it is imported without ``--cluster``. docs/cluster.md says how to start a cluster.

How :meth:`DaskExecutor.map` runs ``unit(item, progress, *shared)`` there
(:func:`.cluster_worker.run_unit`):

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
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import cluster_worker, interrupts
from .cluster_address import START as _START
from .errors import ClusterError
from .parallel import check_unit

#: Seconds a map waits while the scheduler has no worker at all before it gives up.
NO_WORKERS_GRACE = 60.0


def resources_for(context: str) -> Optional[Dict[str, float]]:
    """The Dask worker resources a unit computing in nnabla ``context`` needs: one GPU
    (``{"GPU": 1}``) unless the context is a CPU one.
    """
    return None if context.startswith("cpu") else {"GPU": 1}


class DaskExecutor:
    """A connection to a Dask scheduler whose workers run the units of :meth:`map` (see the
    module docstring and :class:`.executor.Executor`). Made by :func:`.cluster.connect`.
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
        found = self.client.run(cluster_worker.missing, paths)
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
        client = self.client
        run = f"sgdi-{name}-{uuid.uuid4().hex[:12]}"
        stop = Event(run + "-stop", client=client)
        queue = Queue(run + "-progress", client=client) if on_progress else None
        handles = [_share(client, obj, f"{run}-shared-{k}") for k, obj in enumerate(shared)]
        futures = self._submit(fn, list(items), run, handles, queue is not None, name)
        try:
            return self._gather(futures, name, queue, on_result, on_progress)
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
            self._end_run(run, futures, handles, stop, queue)

    def _end_run(self, run: str, futures: list, handles: list, stop, queue) -> None:
        """A map's clean-up: its shared inputs cancelled and dropped by the workers, its
        futures let go of, its stop event and progress queue closed.
        """
        with contextlib.suppress(Exception):
            self.client.cancel(handles)
            self.client.run(cluster_worker.forget, run)
        futures.clear()  # this map's references, wherever a traceback keeps its lists
        handles.clear()
        with contextlib.suppress(Exception):
            stop.clear()
            if queue is not None:
                queue.close()

    def _submit(self, fn, items: list, run: str, handles: list, report: bool, name: str) -> list:
        """One future per item: ``fn`` on it in a worker (:func:`.cluster_worker.run_unit`)."""
        return [
            self.client.submit(
                cluster_worker.run_unit,
                fn,
                i,
                item,
                run,
                report,
                *handles,
                key=f"{name}-{i}-{run}",
                pure=False,
                resources=self.resources,
            )
            for i, item in enumerate(items)
        ]

    def _gather(self, futures: list, name: str, queue, on_result, on_progress) -> List[Any]:
        """The units' results in item order, each handed to ``on_result`` as it comes; their
        progress passed on; the scheduler and its workers watched meanwhile.
        """
        results: List[Any] = [None] * len(futures)
        waiting = set(range(len(futures)))
        idle_since: Optional[float] = None
        while waiting:
            interrupts.check()
            _pass_progress(queue, on_progress)
            for i in sorted(waiting):
                status = futures[i].status
                if status in ("pending", "lost"):  # lost: Dask computes it again
                    continue
                if status not in ("finished", "error"):  # cancelled, not by us
                    raise ClusterError(
                        f"--cluster {self.address}: the scheduler dropped {name} {i} "
                        f"({status}); nothing was written. Check the scheduler's log"
                    )
                results[i] = self._result(futures[i], i, name)
                waiting.discard(i)
                if on_result is not None:
                    on_result(i, results[i])
            idle_since = self._check_workers(idle_since)
            if waiting:
                time.sleep(0.2)
        _pass_progress(queue, on_progress)  # the last messages: every stage is seen complete
        return results

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


def _pass_progress(queue, on_progress) -> None:
    """The units' progress messages so far, handed to ``on_progress`` (when there is a queue)."""
    if queue is not None:
        for i, stage, done, total in queue.get(batch=True):
            on_progress(i, stage, done, total)


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
    through a trial): each process unpickles its own copy (:func:`.cluster_worker.run_unit`).
    """
    import warnings

    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    with warnings.catch_warnings():  # "large object in task graph": that is the point here
        warnings.simplefilter("ignore", UserWarning)
        return client.submit(_bytes, blob, key=key, pure=False)


def _bytes(blob: bytes) -> bytes:
    return blob
