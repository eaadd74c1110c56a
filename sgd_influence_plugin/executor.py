"""One interface for the independent units of a long job, wherever they run: worker processes
on this machine (:class:`LocalExecutor`) or the workers of a Dask cluster
(:class:`.cluster_executor.DaskExecutor`, ``--cluster ADDRESS``). Callers get an executor from
:func:`open_executor` (or :func:`local_executor`) and call :meth:`Executor.map`; they never
ask where the units run.

A **unit** is a module-level function, written once, called as
``unit(item, progress, *shared)``:

- ``item`` is small (an index, a seed, a candidate change) and pickled per unit;
- ``shared`` are the big inputs every unit of a map reads (the model, the decoded arrays):
  sent to each worker process once, where the adapter rebuilds the model
  (``NnablaModel.__reduce__``) after setting nnabla up
  (:func:`.nnabla_adapter.prepare_process`). A unit may change its copy (a trial moves the
  model's parameters) but must restore it before it returns, since a unit may also run in
  the caller's own process, on the caller's objects (one job, or one item);
- ``progress(stage, done, total)`` reaches the caller's ``on_progress``; on a cluster it also
  ends the unit at its next step once the caller stopped the map;
- it returns something that pickles (arrays, numbers, dataclasses of them).

The units: :func:`.trials.trial_unit` (one trial), :func:`.heldout_check.check_epoch_unit`
(one epoch of the recommendation's check), :func:`.fidelity.rerun_unit` (one leave-one-out
re-run of ``check``), :func:`.evaluate.retrain_unit` and :func:`.evaluate.scratch_unit` (one
retraining). Decoding a dataset's rows (:mod:`.dataset`) uses the local process pool
(:func:`.parallel.run_parallel`) alone: the files are on this machine.

Every executor gives the same results for the same units and items (``tests/test_parallel.py``
and ``tests/test_cluster.py`` compare them with a loop in one process).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, List, Optional, Protocol, Sequence

from . import core, parallel
from .nnabla_adapter import prepare_process


class Executor(Protocol):
    """What every executor offers (a structural interface: :class:`LocalExecutor` and
    :class:`.cluster_executor.DaskExecutor` implement it without inheriting).

    Attributes:
        where: where the units run, for the record (``this machine`` or ``cluster``).
        slots: units that can run at once (worker processes).
        same_machine: True when the units run on this machine, so they can write files this
            process reads (a trial's cache); False: they return what must be kept.

    """

    where: str
    slots: int
    same_machine: bool

    def map(
        self,
        unit: Callable[..., Any],
        items: Sequence[Any],
        shared: Sequence[Any] = (),
        on_result: Optional[Callable[[int, Any], None]] = None,
        on_progress: Optional[Callable[[int, str, int, int], None]] = None,
        name: str = "unit",
    ) -> List[Any]:
        """``[unit(item, progress, *shared) for item in items]``, in item order.

        ``on_result(index, result)`` and ``on_progress(index, stage, done, total)`` are
        called in this process; ``name`` names the units where the executor shows them.
        The first exception of a unit arrives with its type and message and stops the map;
        Ctrl-C or SIGTERM (:mod:`.interrupts`) stop it too (``KeyboardInterrupt``).
        """

    def cores_per_unit(self, n_units: int) -> int:
        """Cores each of ``n_units`` units running at once may use: its own and, from a
        second one, a forked co-worker (the fd replay's minus pass, :func:`.coworker.helper`).
        """

    def check_paths(self, paths: Sequence[str], why: str) -> None:
        """Raise :class:`~.errors.ClusterError` unless the units can read every path (for
        units that run ``nnabla_cli`` on the CSV files); ``why`` says who needs them.
        """

    def close(self) -> None:
        """Let go of what the executor holds (the cluster keeps running)."""


class LocalExecutor:
    """Units in ``jobs`` worker processes on this machine (:func:`.parallel.run_parallel`), or
    in this process with one job. Workers are spawned (a fresh Python; the only way on
    Windows), or forked on Linux, where that is faster and gives the same results.
    """

    where = "this machine"
    same_machine = True

    def __init__(self, jobs: int = 1, start: Optional[str] = None):
        """``jobs`` worker processes (at least 1); ``start``: ``spawn``, ``fork`` or None
        (:func:`.parallel.default_start`).
        """
        if int(jobs) < 1:
            raise ValueError(f"jobs must be at least 1, not {jobs}")
        self.slots = int(jobs)
        self.start = start

    def map(self, unit, items, shared=(), on_result=None, on_progress=None, name="unit"):
        """See :meth:`Executor.map`."""
        return parallel.run_parallel(
            unit, items, shared, jobs=self.slots, on_result=on_result, on_progress=on_progress,
            start=self.start, initializer=prepare_process,
        )  # fmt: skip

    def cores_per_unit(self, n_units: int) -> int:
        """See :meth:`Executor.cores_per_unit`: the jobs shared by the units that run at once."""
        return self.slots // max(1, min(self.slots, int(n_units)))

    def check_paths(self, paths: Sequence[str], why: str) -> None:
        """Nothing to check: the units run where the paths were read."""

    def close(self) -> None:
        """Nothing to let go: each map ends its workers."""

    def __repr__(self) -> str:
        return f"LocalExecutor(jobs={self.slots}, start={self.start or parallel.default_start()})"


def local_executor(context: str = "cpu", jobs: Optional[int] = None) -> LocalExecutor:
    """The executor for ``--jobs`` on this machine: :func:`.parallel.workers_for` processes."""
    return LocalExecutor(parallel.workers_for(context, jobs))


@contextlib.contextmanager
def open_executor(
    address: Optional[str],
    context: str = "cpu",
    jobs: Optional[int] = None,
    log: Callable[[str], None] = lambda m: None,
) -> Iterator[Executor]:
    """The executor of a command, for the duration of a ``with`` block.

    ``address`` None (no ``--cluster``): :func:`local_executor` with ``jobs``. Otherwise
    :func:`.cluster.connect` to the Dask scheduler there (``jobs`` is not used; the workers
    decide), checked before anything is computed.

    Raises:
        ClusterError: the cluster cannot be used (see :func:`.cluster.connect`).

    """
    if address is None:  # "" is an address given empty: refused by the cluster's check
        yield local_executor(context, jobs)
        return
    from .cluster import connect

    with connect(address, log, context) as cluster:
        yield cluster


#: The last model's step graphs (:func:`unit_graphs`): one model at a time per process.
_GRAPHS: List[tuple] = []


def unit_graphs(model) -> core.GraphCache:
    """The model's (unfused) SGD step graphs, built once per process and model, so that the
    units a worker runs one after another (or this process, with one job) share them.
    """
    if not _GRAPHS or _GRAPHS[0][0] is not model:
        _GRAPHS[:] = [(model, core.GraphCache(model, fused=False))]
    return _GRAPHS[0][1]
