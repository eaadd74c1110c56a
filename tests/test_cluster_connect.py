"""``--cluster`` connects within bounded time, refuses what is not a Dask scheduler with one
line (exit 2), and a first Ctrl-C stops it at any time (issue 34, cases 5, 6, 7).

The peers are real: a socket that accepts and stays silent (like Dask's dashboard port), one
that sends another protocol's greeting, and a real Dask scheduler on the loopback address,
started here, with no workers or with one worker that is killed mid-run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("distributed")

CLI = os.path.join(os.path.dirname(sys.executable), "sgd-influence")
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="signals and process groups (Linux)"
)


class _Peer:
    """A TCP server on 127.0.0.1 that accepts connections and sends ``greeting`` (or
    nothing), keeping them open until closed."""

    def __init__(self, greeting: bytes = b""):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.address = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.greeting, self.accepted, self.done = greeting, [], threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)
            if self.greeting:
                conn.sendall(self.greeting)

    def close(self):
        self.done.set()
        for c in self.accepted:
            c.close()
        self.sock.close()


def _argv(w, address, *extra):
    out = str(w["root"] / "cl" / "influence.csv")
    return [CLI, *w["run"], "--output", out, "--cluster", address, *extra]


def _refused(argv, pattern: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert "Traceback" not in err and "\n" not in err, err
    assert pattern in err, err
    return err


@pytest.mark.parametrize(
    "greeting, pattern",
    [(b"", "sent nothing in 5 s"), (b"SSH-2.0-OpenSSH_9.2\r\n" * 4, "not a Dask scheduler")],
    ids=["silent port", "another service"],
)
def test_a_peer_that_is_not_dask_is_refused_within_seconds(world_small, greeting, pattern):
    """A silent port (before: waited over 11 minutes) or a service that is not Dask (before:
    a MemoryError traceback): one line, exit 2."""
    peer = _Peer(greeting)
    try:
        _refused(_argv(world_small, peer.address), pattern)
    finally:
        peer.close()
    assert not (world_small["root"] / "cl").exists()


@pytest.mark.parametrize("scheme", ["http", "tls", "inproc", "ucx"])
def test_an_address_that_is_not_tcp_is_refused_at_once(world_small, scheme):
    _refused(_argv(world_small, f"{scheme}://127.0.0.1:8786"), "only tcp:// addresses")


@pytest.mark.parametrize("address", ["", " "])
def test_an_empty_address_is_refused_not_ignored(world_small, address):
    """``--cluster ""`` used to run on this machine without a word."""
    _refused(_argv(world_small, address), "--cluster is empty")


def test_a_first_ctrl_c_stops_the_wait_for_a_silent_peer(world_small):
    """Ctrl-C while the tool waits for a silent peer: exit 130 and one line (before: the
    first Ctrl-C was ignored)."""
    peer = _Peer()
    try:
        proc = subprocess.Popen(_argv(world_small, peer.address), stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not peer.accepted:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        peer.close()
    assert proc.returncode == 130, err
    assert err.strip().count("\n") == 0 and "interrupted" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_scheduler(tmp_path):
    """Start ``dask scheduler`` (and, on request, workers) on 127.0.0.1; stop them after."""
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    procs = []
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.path.dirname(here))

    def start(workers: int = 0) -> str:
        address = f"tcp://127.0.0.1:{_free_port()}"
        cmd = [dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1]]
        procs.append(subprocess.Popen(cmd + ["--no-dashboard"], env=env, **_quiet(tmp_path)))
        if workers:
            cmd = [dask, "worker", address, "--nworkers", str(workers), "--nthreads", "1"]
            procs.append(subprocess.Popen(cmd + ["--no-dashboard"], env=env, **_quiet(tmp_path)))
        import distributed

        with distributed.Client(address, timeout=30) as client:
            if workers:
                client.wait_for_workers(workers, timeout=60)
        return address

    start.procs = procs
    yield start
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _quiet(tmp_path):
    log = open(tmp_path / f"dask-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 - child's
    return {"stdout": log, "stderr": log}


def test_a_scheduler_without_workers_is_refused_with_one_line(world_small, dask_scheduler):
    """Before: ``TimeoutError: Only 0/1 workers arrived`` as a traceback, exit 1."""
    _refused(_argv(world_small, dask_scheduler()), "the scheduler has no workers")


def test_a_scheduler_killed_mid_run_says_so(world_small, dask_scheduler):
    """The scheduler dies while the trials run: exit 2, one line that names the lost
    connection (before: "cannot write the cache ... choose another --cache-dir", and a second
    line from distributed.client); nothing written."""
    address = dask_scheduler(workers=1)
    argv = [a for a in _argv(world_small, address, "--trials", "3", "--epochs", "40")]
    argv.remove("--quiet")
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    seen = ""
    while "trial" not in seen:  # the trials were sent
        assert time.monotonic() < deadline and proc.poll() is None, seen
        seen += proc.stderr.readline()
    dask_scheduler.procs[0].kill()
    _, err = proc.communicate(timeout=180)
    last = [line for line in err.strip().splitlines() if "error" in line]
    assert proc.returncode == 2, err
    assert len(last) == 1 and "connection to the scheduler was lost" in last[0], err
    assert "distributed" not in err and "Traceback" not in err, err
    assert not (world_small["root"] / "cl" / "influence.csv").exists()
