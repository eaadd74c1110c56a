"""``--cluster ADDRESS``: the connection to an existing Dask distributed scheduler, checked
before anything is computed, as a :class:`.cluster_executor.DaskExecutor` (:func:`connect`).

The checks, each in bounded time and each a :class:`~.errors.ClusterError` that says what to
do: Dask is installed here; a Dask scheduler answers at the address
(:mod:`.cluster_address`); it has at least one worker; the scheduler and every worker run
this machine's versions of this package, nnabla, numpy and Python (the scores depend on
them). Dask is an optional dependency (``pip install sgd-influence-plugin[cluster]``);
nothing of it is imported without ``--cluster``. docs/cluster.md says how to start a cluster.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Dict, Iterator, Optional

from . import interrupts
from .cluster_address import START as _START
from .cluster_address import probe
from .cluster_executor import DaskExecutor
from .cluster_worker import versions
from .errors import ClusterError

#: Seconds Dask's client may take to connect once the scheduler has answered
#: (:mod:`.cluster_address`), and to wait for a first worker.
CONNECT_TIMEOUT = 10.0

_INSTALL = "pip install 'sgd-influence-plugin[cluster]' (Dask distributed 2024.8.0)"


@contextlib.contextmanager
def connect(
    address: Optional[str], log: Callable[[str], None] = lambda m: None, context: str = "cpu"
) -> Iterator[Optional[DaskExecutor]]:
    """A :class:`.cluster_executor.DaskExecutor` on the scheduler at ``address`` for the
    duration of a ``with`` block; its units compute in nnabla ``context``
    (:func:`.cluster_executor.resources_for`).

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
    found = _their_versions(cluster)
    mine = versions()
    for worker, theirs in found.items():
        if theirs != mine:
            diff = ", ".join(
                f"{k} {theirs.get(k)} (here {v})" for k, v in mine.items() if theirs.get(k) != v
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


def _their_versions(cluster: DaskExecutor) -> Dict[str, Dict[str, str]]:
    """The scheduler's and every worker's :func:`.cluster_worker.versions`, by who has them."""
    client, address = cluster.client, cluster.address
    theirs = {}
    machines = {"scheduler": "the scheduler's machine", "workers": "every worker's machine"}
    for where, call in (("scheduler", client.run_on_scheduler), ("workers", client.run)):
        try:  # the scheduler unpacks the units too: it needs the package as well
            found = call(versions)
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
    return theirs
