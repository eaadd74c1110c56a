"""The memory an ``sgd-influence`` command really takes, against the estimate its memory check
made (``sgd_influence_plugin.memory``), for the memory benchmark and its test. Linux only
(``/proc``).

:func:`measured_run` starts the command as a user does (``sgd-influence ARGS``), with
``memory.check_memory`` wrapped to record its estimate and the process's resident size at
the check, and polls the process tree until it ends:

- ``tree_pss``: the largest sum of the tree's proportional set sizes (``smaps_rollup``: a
  page shared by k processes counts 1/k in each), the memory the run takes from the machine;
- ``tree_rss``: the largest sum of their resident sizes (shared pages in every process);
- ``own_hwm`` / ``worker_hwm``: the command's own peak resident size and its largest child's
  (``VmHWM``, and ``RUSAGE_CHILDREN`` for children that ended between two samples);
- ``processes``: the most processes alive at once.

Sizes are in KiB; ``need`` is the estimate (bytes, each part and ``total``) and ``rss_kib``
the resident size when it was made (already taken from the memory it was compared with).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: ``python -c`` body: the CLI as a user starts it, ``memory.check_memory`` wrapped to add
#: its estimate and the resident size to ``$SGDI_MEMORY_NEED``, and ``peak-rss <own KiB>
#: <largest child's KiB>`` (``ru_maxrss``) last on stderr.
WRAPPER = """
import atexit, json, os, resource, sys
from sgd_influence_plugin import memory
_real = memory.check_memory
def _check(*args, **kwargs):
    need = _real(*args, **kwargs)
    with open('/proc/self/status') as f:
        rss = [int(l.split()[1]) for l in f if l.startswith('VmRSS:')][0]
    with open(os.environ['SGDI_MEMORY_NEED'], 'a') as f:
        f.write(json.dumps({**need.__dict__, 'total': need.total, 'rss_kib': rss}) + '\\n')
    return need
memory.check_memory = _check
def _rss():
    r = resource.getrusage
    sys.stderr.write('\\npeak-rss %d %d\\n' % (r(resource.RUSAGE_SELF).ru_maxrss,
                     r(resource.RUSAGE_CHILDREN).ru_maxrss))
atexit.register(_rss)
sys.argv[0] = 'sgd-influence'
from sgd_influence_plugin.launch import entry
entry()
"""


def tree_pids(root: int) -> list:
    """``root`` and every process below it (``/proc/*/stat``'s parent ids)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    found, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parents.items() if pp in frontier]
        found += frontier
    return found


def _kib(path: str, *keys: str) -> dict:
    out = {}
    with open(path) as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in keys:
                out[name] = int(value.split()[0])
    return out


def sample(root: int, peaks: dict) -> None:
    """One sample of the tree into ``peaks``: the sums of PSS and RSS, each VmHWM."""
    pss = rss = live = 0
    for pid in tree_pids(root):
        try:
            status = _kib(f"/proc/{pid}/status", "VmRSS", "VmHWM")
            rollup = _kib(f"/proc/{pid}/smaps_rollup", "Pss")
        except (OSError, IndexError, ValueError):
            continue
        if not status:  # a zombie
            continue
        pss += rollup.get("Pss", 0)
        rss += status.get("VmRSS", 0)
        key = "own_hwm" if pid == root else "worker_hwm"
        peaks[key] = max(peaks.get(key, 0), status.get("VmHWM", 0))
        live += 1
    peaks["processes"] = max(peaks.get("processes", 0), live)
    peaks["tree_pss"] = max(peaks.get("tree_pss", 0), pss)
    peaks["tree_rss"] = max(peaks.get("tree_rss", 0), rss)


def measured_run(argv: list, out_dir: str, env: dict = None, interval: float = 0.05) -> dict:
    """``sgd-influence *argv`` as a subprocess, its tree polled every ``interval`` seconds;
    ``out_dir`` is emptied first (the command's outputs go there). Raises RuntimeError when
    the command fails or made no estimate.
    """
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    need_file = os.path.join(out_dir, "need.jsonl")
    run_env = {**os.environ, **(env or {}), "SGDI_MEMORY_NEED": need_file}
    run_env["PYTHONPATH"] = ROOT + os.pathsep + run_env.get("PYTHONPATH", "")
    run_env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [sys.executable, "-c", WRAPPER, *argv]
    peaks: dict = {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env
    )
    while proc.poll() is None:
        sample(proc.pid, peaks)
        time.sleep(interval)
    _, err = proc.communicate()
    if proc.returncode != 0 or not os.path.exists(need_file):
        raise RuntimeError(f"sgd-influence {argv} failed ({proc.returncode}):\n{err[-3000:]}")
    own, child = (int(x) for x in err.strip().splitlines()[-1].split()[1:])
    with open(need_file) as f:
        need = json.loads(f.readline())
    peaks["own_hwm"] = max(peaks.get("own_hwm", 0), own)
    peaks["worker_hwm"] = max(peaks.get("worker_hwm", 0), child)
    return {"seconds": time.perf_counter() - t0, "need": need, **peaks}
