"""What a Dask worker process runs for :class:`.cluster_executor.DaskExecutor` (the workers
import this package): a unit, one at a time per process, with the run's shared inputs
unpickled once per run (:func:`run_unit`); and the checks :func:`.cluster.connect` and
:meth:`~.cluster_executor.DaskExecutor.check_paths` run there (:func:`versions`,
:func:`missing`).
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
from typing import Any, Dict, List, Sequence

from .nnabla_adapter import prepare_process

#: Seconds between two progress messages of one unit.
PROGRESS_INTERVAL = 0.5

#: One unit at a time per worker process: units share that process's copy of the model.
_UNIT_LOCK = threading.Lock()


class UnitStopped(Exception):
    """Raised in a unit whose run the submitter stopped (Ctrl-C, or another unit failed)."""


def versions() -> Dict[str, str]:
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


def missing(paths: Sequence[str]) -> List[str]:
    """The paths of ``paths`` this process cannot read (run on each worker)."""
    return [p for p in paths if not os.access(p, os.R_OK)]


#: Run -> its shared inputs unpickled in this worker process (the current run only).
_OPENED: Dict[str, List[Any]] = {}


def _opened(run: str, blobs: Sequence[bytes]) -> List[Any]:
    """The shared inputs of ``run`` as this process's own objects, unpickled once per run."""
    if run not in _OPENED:
        _OPENED.clear()
        prepare_process()
        _OPENED[run] = [pickle.loads(b) for b in blobs]
    return _OPENED[run]


def forget(run: str) -> None:
    """Drop a finished run's objects from this worker process."""
    _OPENED.pop(run, None)


def run_unit(fn, index: int, item, run: str, report: bool, *shared):
    """A unit on a worker: ``fn(item, progress, *shared)``, one at a time per process.

    ``shared`` are the run's pickled shared inputs; ``progress`` sends ``(index, stage, done,
    total)`` to the run's queue when ``report`` (at most every :data:`PROGRESS_INTERVAL`
    seconds, and the last step), and raises :class:`UnitStopped` once the submitter set the
    run's stop event.
    """
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
