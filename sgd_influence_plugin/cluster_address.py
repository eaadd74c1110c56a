"""``--cluster ADDRESS``: the address checked and the peer heard before Dask connects.

Dask's client waits for its own timeouts, which a silent port (the dashboard's, say) or a
service that is not Dask can stretch to minutes, or turn into a ``MemoryError`` when the
peer's first bytes are read as a frame length. So the address is checked here first, within
bounded time, with a stop request (Ctrl-C, SIGTERM) honoured every :data:`POLL` seconds:

- it must be ``tcp://HOST:PORT`` (``HOST:PORT`` means that); another scheme (``tls://``,
  ``http://``, ``inproc://``, ...) is refused;
- a TCP connection must open within :data:`CONNECT_SECONDS`;
- the peer must send a Dask handshake (a Dask scheduler speaks first) within
  :data:`HANDSHAKE_SECONDS`: a frame of sane length holding Dask's handshake fields.

Every failure is one :class:`~.errors.ClusterError` line (exit status 2).
"""

from __future__ import annotations

import select
import socket
import struct
import time
from typing import Tuple

from . import interrupts
from .errors import ClusterError

#: Seconds to open the TCP connection.
CONNECT_SECONDS = 5.0
#: Seconds for the peer's Dask handshake to arrive.
HANDSHAKE_SECONDS = 5.0
#: Seconds between two looks at a stop request while waiting.
POLL = 0.2
#: A Dask handshake is a few hundred bytes; anything this large is not one.
_MAX_HANDSHAKE = 1 << 16

START = (
    "start a scheduler with 'dask scheduler' and workers with 'dask worker ADDRESS --nthreads 1' "
    "(docs/cluster.md), or leave out --cluster to run on this machine"
)


def parse(address: str) -> Tuple[str, str, int]:
    """``(address as tcp://HOST:PORT, host, port)``; refuses anything else."""
    text = address.strip()
    if not text:
        raise ClusterError(
            "--cluster is empty; give the scheduler's address, e.g. tcp://192.168.1.10:8786, "
            "or leave out --cluster to run on this machine"
        )
    if "://" not in text:
        text = "tcp://" + text
    scheme, _, location = text.partition("://")
    if scheme.lower() != "tcp":
        raise ClusterError(
            f"--cluster {address}: only tcp:// addresses are supported (e.g. tcp://HOST:8786), "
            f"not {scheme}://"
        )
    host, sep, port = location.rstrip("/").rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(
            f"--cluster {address}: not a scheduler address; give tcp://HOST:PORT, e.g. "
            "tcp://192.168.1.10:8786"
        )
    return f"tcp://{location.rstrip('/')}", host, int(port)


def _connect(address: str, host: str, port: int) -> socket.socket:
    deadline = time.monotonic() + CONNECT_SECONDS
    last = None
    while time.monotonic() < deadline:
        interrupts.check()
        try:
            return socket.create_connection((host, port), timeout=POLL)
        except socket.timeout as e:
            last = "timed out"
            del e
        except OSError as e:
            raise ClusterError(
                f"--cluster {address}: no Dask scheduler answers there ({e.strerror or e}); {START}"
            ) from None
    raise ClusterError(
        f"--cluster {address}: no Dask scheduler answers there ({last or 'timed out'} after "
        f"{CONNECT_SECONDS:g} s); {START}"
    )


def _read(sock: socket.socket, n: int, deadline: float) -> bytes:
    data = b""
    while len(data) < n:
        interrupts.check()
        if time.monotonic() > deadline:
            break
        ready, _, _ = select.select([sock], [], [], POLL)
        if ready:
            chunk = sock.recv(n - len(data))
            if not chunk:
                break
            data += chunk
    return data


def probe(address: str) -> str:
    """Check that a Dask scheduler answers at ``address``; returns it as ``tcp://HOST:PORT``.

    Raises:
        ClusterError: a malformed or non-tcp address, nothing listening, a silent peer, or a
            peer that is not Dask.
        KeyboardInterrupt: a stop was requested while waiting.

    """
    address, host, port = parse(address)
    sock = _connect(address, host, port)
    try:
        deadline = time.monotonic() + HANDSHAKE_SECONDS
        head = _read(sock, 8, deadline)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        body = _read(sock, size, deadline) if 16 <= size <= _MAX_HANDSHAKE else b""
    except OSError as e:
        raise ClusterError(
            f"--cluster {address}: the connection failed ({e.strerror or e}); {START}"
        ) from None
    finally:
        sock.close()
    if not head:
        raise ClusterError(
            f"--cluster {address}: something accepts connections there but sent nothing in "
            f"{HANDSHAKE_SECONDS:g} s, so it is not a Dask scheduler (the dashboard's port?); "
            "give the scheduler's address, usually port 8786"
        )
    if len(body) != size or b"compression" not in body:
        raise ClusterError(
            f"--cluster {address}: the service there is not a Dask scheduler; give the "
            "scheduler's address, usually port 8786"
        )
    return address
