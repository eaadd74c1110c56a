"""Enough memory for the decoded datasets, checked before any row is decoded.

Every command that decodes dataset CSVs (``run``, ``check``, ``evaluate``, the console
dialogs) keeps each row as float32 arrays in memory (:mod:`.dataset`). A set too large for
the machine used to end in the kernel's out-of-memory killer (exit 137, nothing said) or a
MemoryError traceback, after minutes of reading. Now, once the CSVs' text is read and before
any image is opened, :func:`check_memory` compares :func:`estimate_memory` (bytes) with
:func:`available_memory` (bytes: Linux ``MemAvailable`` and the cgroup's limit, macOS
``sysctl``, Windows ``GlobalMemoryStatusEx``) and refuses in one line when the need is
larger. What cannot be read is not guessed: the check is then skipped.

A MemoryError that still happens later (the estimate is an estimate) becomes one line
naming the stage (:func:`memory_error_line`, used by :func:`.cli.report_errors`).

Standard library only (no psutil: the console's bundled Python does not have it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

from .errors import DatasetError

#: Bytes of one decoded value (float32).
VALUE_BYTES = 4
#: Bytes a row of every CSV is allowed beyond its decoded values: the per-row float64
#: arrays (losses, class probabilities, orders, the recommendation's columns) and the
#: row's cells kept as text.
ROW_BYTES = 1024
#: Bytes each process (the command's own and each worker) is allowed for Python, nnabla
#: and one batch's graph buffers.
PROCESS_BYTES = 128 * 2**20
#: Bytes per trainable parameter in each process: the parameters, their gradients and the
#: replay's graph buffers (float32), the query vectors and the curvature's Lanczos basis
#: (float64, six vectors). Measured (docs/measurements.md, "The memory check's estimate"):
#: about 150 in the command's own process and 90 in each worker; 16 before, which let a
#: network of 3 million parameters take 1.6 times the estimate.
PARAM_BYTES = 160
#: A cgroup limit at least this large means "no limit" (cgroup v1 writes 2**63 - 4096).
_NO_LIMIT = 2**60
#: Bytes in a GB, as messages count them.
GB = 1e9


@dataclass(frozen=True)
class MemoryNeed:
    """What :func:`estimate_memory` expects the decoded data and the work on it to take.

    Attributes:
        arrays: bytes of the decoded float32 arrays of every CSV.
        copies: bytes of the largest copy of a CSV's arrays: a CSV decoded in worker
            processes is joined from their parts into new arrays (both are held at the
            end), and a recommending run copies the validation rows into two halves; with
            spawned workers, also the arrays' files they map (:mod:`.shared_inputs`).
        rows: bytes of the per-row arrays (:data:`ROW_BYTES` a row, 8 a training row and
            trial for the trials' scores).
        processes: bytes of the processes (:data:`PROCESS_BYTES` and :data:`PARAM_BYTES`
            per parameter each).
        features: bytes of the network's features of every row and their distances, for
            the recommendation's neighbour signal (:func:`.neighbours.memory_need`).

    """

    arrays: int
    copies: int
    rows: int
    processes: int
    features: int = 0

    @property
    def total(self) -> int:
        """Bytes in all."""
        return self.arrays + self.copies + self.rows + self.processes + self.features


def estimate_memory(
    sets: Sequence[Tuple[int, int, bool]],
    n_params: int,
    processes: int,
    trials: int = 1,
    features: int = 0,
    spawned: bool = False,
) -> MemoryNeed:
    """The memory a command needs for its decoded datasets, in bytes.

    Args:
        sets: ``(rows, values per row, decoded in workers)`` of each CSV, the training CSV
            first and the validation CSV second.
        n_params: the model's trainable scalars.
        processes: processes that hold a model (the command's own and its workers).
        trials: the influence's trials (each keeps a float64 score per training row).
        features: bytes of the network's features the recommendation compares
            (:func:`.neighbours.memory_need`; 0: none are computed).
        spawned: the workers are spawned (Windows, macOS), not forked: the arrays they
            read are written to files they map, one more copy in the page cache.

    """
    sizes = [int(rows) * int(values) * VALUE_BYTES for rows, values, _ in sets]
    joined = [size for size, (_, _, workers) in zip(sizes, sets) if workers]
    n_rows = sum(int(rows) for rows, _, _ in sets)
    n_train = int(sets[0][0]) if sets else 0
    return MemoryNeed(
        arrays=sum(sizes),
        copies=max(joined + sizes[1:2], default=0) + (sum(sizes) if spawned else 0),
        rows=ROW_BYTES * n_rows + 8 * n_train * max(1, int(trials)),
        processes=max(1, int(processes)) * (PROCESS_BYTES + PARAM_BYTES * int(n_params)),
        features=int(features),
    )


def check_memory(
    csvs: Sequence[Tuple[str, int, int, bool]],
    n_params: int,
    processes: int,
    trials: int = 1,
    features: int = 0,
    spawned: bool = False,
) -> MemoryNeed:
    """Refuse, before any row is decoded, datasets whose arrays would not fit this
    machine's memory (:func:`estimate_memory` against :func:`available_memory`); nothing
    is refused when the available memory cannot be read.

    Args:
        csvs: ``(path, rows, values per row, decoded in workers)`` of each CSV, the training
            CSV first and the validation CSV second.
        n_params / processes / trials / features / spawned: as :func:`estimate_memory`.

    Returns:
        The estimate.

    Raises:
        DatasetError: the estimate is larger than the available memory, naming the CSVs,
            both sizes in GB and what to do.

    """
    sets = [c[1:] for c in csvs]
    need = estimate_memory(sets, n_params, processes, trials, features, spawned)
    free = available_memory()
    if free is None or need.total <= free:
        return need
    named = " and ".join(f"{path} ({rows:,} rows)" for path, rows, _, _ in csvs)
    fewer = ""
    if processes > 2:  # every worker holds the network: one worker may fit where many do not
        one = estimate_memory(sets, n_params, 2, trials, features, spawned).total
        fewer = f", one worker process (--jobs 1: about {one / GB:.1f} GB)" if one <= free else ""
    raise DatasetError(
        f"{named}: decoding them needs about {need.total / GB:.1f} GB of memory "
        f"({need.arrays / GB:.1f} GB of float32 arrays, the rest for copies, per-row scores, "
        f"features and {processes} process(es)) but only {free / GB:.1f} GB are available; use a "
        f"subset of the training CSV, smaller images{fewer}, or a machine with more memory"
    )


# ----------------------------------------------------------------------------------------
# Available memory
# ----------------------------------------------------------------------------------------


def available_memory() -> Optional[int]:
    """Bytes of memory this process can still take without swapping, or None when this
    platform's figure cannot be read.
    """
    try:
        if sys.platform.startswith("linux"):
            return linux_available()
        if sys.platform == "win32":
            return windows_available()
        if sys.platform == "darwin":
            return macos_available()
    except (OSError, ValueError, AttributeError):
        return None
    return None


def linux_available(
    meminfo: str = "/proc/meminfo",
    cgroup_root: str = "/sys/fs/cgroup",
    self_cgroup: str = "/proc/self/cgroup",
) -> Optional[int]:
    """Linux: ``MemAvailable`` of ``meminfo``, lowered to what the process's memory cgroup
    (and each cgroup above it) still allows (:func:`cgroup_available`); bytes, or None.
    """
    total = meminfo_available(_read(meminfo))
    limit = cgroup_available(cgroup_root, _read(self_cgroup))
    known = [b for b in (total, limit) if b is not None]
    return min(known) if known else None


def meminfo_available(text: Optional[str]) -> Optional[int]:
    """Bytes of the ``MemAvailable:  N kB`` line of ``/proc/meminfo`` text; None without one
    (kernels before 3.14).
    """
    for line in (text or "").splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "MemAvailable":
            parts = value.split()
            if parts and parts[0].isdigit():
                return int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return None


def cgroup_available(root: str, self_cgroup: Optional[str]) -> Optional[int]:
    """Bytes the tightest memory limit among the process's cgroup and those above it still
    allows: the limit less the usage, the usage without inactive file pages (the kernel
    reclaims them). cgroup v2 (``memory.max``, ``memory.current``) and v1
    (``memory/memory.limit_in_bytes``, ``memory.usage_in_bytes``); None without a limit.

    Args:
        root: where the cgroup file systems are mounted (``/sys/fs/cgroup``).
        self_cgroup: the text of ``/proc/self/cgroup`` (None: the root's own files only).

    """
    best = None
    for folder, v2 in _cgroup_folders(root, self_cgroup or ""):
        files = ("memory.max", "memory.current") if v2 else _V1_FILES
        limit = _number(_read(os.path.join(folder, files[0])))
        used = _number(_read(os.path.join(folder, files[1])))
        if limit is None or limit >= _NO_LIMIT or used is None:
            continue
        stat = _read(os.path.join(folder, "memory.stat")) or ""
        inactive = _stat_value(stat, "inactive_file" if v2 else "total_inactive_file")
        left = max(0, limit - max(0, used - inactive))
        best = left if best is None else min(best, left)
    return best


_V1_FILES = ("memory.limit_in_bytes", "memory.usage_in_bytes")


def _cgroup_folders(root: str, self_cgroup: str):
    """``(folder, is v2)`` of the process's cgroup and each one above it, up to the mount
    point, for v2 (``0::/path``) and the v1 memory controller (``N:memory,...:/path``).
    """
    found = []
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            found.append((root, parts[2], True))
        elif "memory" in parts[1].split(","):
            found.append((os.path.join(root, "memory"), parts[2], False))
    if not found:  # no /proc/self/cgroup: the mount points' own files
        found = [(root, "/", True), (os.path.join(root, "memory"), "/", False)]
    folders = []
    for mount, path, v2 in found:
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            folders.append((os.path.join(mount, *parts[:depth]), v2))
    return folders


def _stat_value(text: str, name: str) -> int:
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name and value.strip().isdigit():
            return int(value)
    return 0


def _number(text: Optional[str]) -> Optional[int]:
    text = (text or "").strip()
    return int(text) if text.isdigit() else None


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def windows_available(fill: Optional[Callable] = None) -> Optional[int]:
    """Windows: ``ullAvailPhys`` of ``GlobalMemoryStatusEx`` (the smaller of it and the
    address space left to this process, ``ullAvailVirtual``), in bytes; None when the call
    fails.

    Args:
        fill: the function that fills the ``MEMORYSTATUSEX`` structure given by reference
            (default: ``kernel32.GlobalMemoryStatusEx``); it returns nonzero on success.

    """
    import ctypes

    class MemoryStatusEx(ctypes.Structure):
        _fields_ = [
            ("dwLength", ctypes.c_uint32),  # DWORD: 32 bits on every OS
            ("dwMemoryLoad", ctypes.c_uint32),
            ("ullTotalPhys", ctypes.c_ulonglong),
            ("ullAvailPhys", ctypes.c_ulonglong),
            ("ullTotalPageFile", ctypes.c_ulonglong),
            ("ullAvailPageFile", ctypes.c_ulonglong),
            ("ullTotalVirtual", ctypes.c_ulonglong),
            ("ullAvailVirtual", ctypes.c_ulonglong),
            ("ullAvailExtendedVirtual", ctypes.c_ulonglong),
        ]

    status = MemoryStatusEx()
    status.dwLength = ctypes.sizeof(MemoryStatusEx)
    if fill is None:
        fill = ctypes.windll.kernel32.GlobalMemoryStatusEx  # type: ignore[attr-defined]
    if not fill(ctypes.byref(status)):
        return None
    return int(min(status.ullAvailPhys, status.ullAvailVirtual)) or None


#: The ``sysctl`` values read on macOS: the page size, then pages free, speculative,
#: purgeable and file-backed (reclaimable).
MACOS_SYSCTLS = (
    "hw.pagesize",
    "vm.page_free_count",
    "vm.page_speculative_count",
    "vm.page_purgeable_count",
    "vm.page_pageable_external_count",
)


def macos_available(run: Optional[Callable[[Sequence[str]], str]] = None) -> Optional[int]:
    """macOS: free, speculative, purgeable and file-backed pages (``sysctl``) times the page
    size, in bytes; None unless ``sysctl`` gives every value.

    Args:
        run: ``argv -> standard output`` (default: runs ``sysctl``, 10 s at most).

    """
    if run is None:

        def run(argv):
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout

    try:
        values = [v.strip() for v in run(["sysctl", "-n", *MACOS_SYSCTLS]).splitlines()]
    except (OSError, subprocess.SubprocessError):
        return None
    if len(values) != len(MACOS_SYSCTLS) or not all(v.isdigit() for v in values):
        return None
    page, *counts = (int(v) for v in values)
    return page * sum(counts) or None


# ----------------------------------------------------------------------------------------
# A MemoryError after the check
# ----------------------------------------------------------------------------------------

#: Module of the package -> the stage a MemoryError there is reported in (the innermost
#: module of the traceback that is listed names it).
STAGES = {
    "inputs": "reading the inputs",
    "evaluate_inputs": "reading the inputs",
    "dataset": "decoding the dataset CSVs",
    "cells": "decoding the dataset CSVs",
    "influence": "computing the influence",
    "trials": "computing the influence",
    "phases": "computing the influence",
    "recommend": "checking the recommendation",
    "heldout_check": "checking the recommendation",
    "pooled_check": "checking the recommendation",
    "neighbours": "checking the recommendation",
    "fidelity": "re-running the epoch without each checked sample",
    "evaluate": "running the experiment",
    "output": "writing the outputs",
    "output_set": "writing the outputs",
    "check": "running the check",
}


def memory_error_line(error: BaseException) -> str:
    """One line for a MemoryError: the stage it happened in (:data:`STAGES`, from its
    traceback), numpy's own words (the array it could not allocate) and what to do.
    """
    stage = None
    tb = error.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        prefix, _, name = module.rpartition(".")
        if prefix.split(".")[0] == __name__.split(".")[0] and name in STAGES:
            stage = STAGES[name]
        tb = tb.tb_next
    words = " ".join(str(error).split())
    return (
        f"out of memory while {stage or 'running'}"
        + (f" ({words})" if words else "")
        + "; the data and the work on it do not fit this machine's memory: use a subset "
        "of the training CSV, smaller images, fewer worker processes, or a machine with "
        "more memory"
    )
