"""A first Ctrl-C stops the command at any time, with one line and exit 130 (issue 34, case 9).

Before, a Ctrl-C during the imports (0.15-0.3 s after the start) printed 12-38 lines of
``KeyboardInterrupt`` traceback: the command's own handling was not installed yet. Now the
command's first code (``sgd_influence_plugin.launch``) handles it before importing anything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from sgd_influence_plugin import interrupts
from support.user_files import run_argv

CLI = os.path.join(os.path.dirname(sys.executable), "sgd-influence")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
@pytest.mark.parametrize("delay", [0.1, 0.2, 0.3, 0.5, 0.8])
def test_an_early_stop_prints_one_line(world_small, delay, signum):
    w = world_small
    out = w["root"] / "early" / "influence.csv"
    # --epochs 5000: the run outlasts the longest delay, so the signal lands on every case
    # (a run of the defaults on this small world ended within 0.8 s, and the case was skipped)
    proc = subprocess.Popen(
        [CLI, *w["run"], "--epochs", "5000", "--output", str(out)], stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    time.sleep(delay)
    if proc.poll() is not None:
        _, err = proc.communicate(timeout=60)
        pytest.skip("the run ended before the signal: " + err[-300:])
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run ended before the signal arrived")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert "interrupted" in err
    assert not out.exists()


@pytest.mark.parametrize("delay", [0.1, 0.2, 0.4])
def test_an_early_stop_of_an_entry_script_prints_one_line(world_small, delay):
    """The console's entry scripts install the same handling before importing the package's
    heavy modules (numpy, nnabla)."""
    from support.results import TABLE_SCRIPT

    w = world_small
    out = w["root"] / "early_script" / "influence.csv"
    # -e 5000: the run outlasts the longest delay. With the venv's bytecode a run of the
    # defaults on this world ended within 0.4 s, and the signal then came after the last
    # line: the process died of it with the outputs written (returncode -2, a race).
    argv = ["-m", w["model"], "-t", w["train"], "-v", w["val"], "-o", str(out), "-e", "5000"]
    proc = subprocess.Popen(
        [sys.executable, TABLE_SCRIPT, *argv], stderr=subprocess.PIPE, text=True
    )
    time.sleep(delay)
    if proc.poll() is not None:
        proc.communicate(timeout=60)
        pytest.skip("the run ended before the signal")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run ended before the signal arrived")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err, err
    assert not out.exists()


def test_cli_two_ctrl_c_from_the_terminal_one_line_and_fast(world):
    """Ctrl-C twice, sent to the whole process group as a terminal does, while the trials run
    in workers: exit 130, the one line, no traceback, within a few seconds."""
    import signal

    out = world["root"] / "out" / "influence.csv"
    env = dict(os.environ, TMPDIR=str(world["tmp"]))
    argv = run_argv(world, out, "--epochs", "5000", "--trials", "3", "--jobs", "2")
    proc = subprocess.Popen(
        [CLI] + argv, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.time() + 120
    while not any(p.name.startswith("sgd_influence_cache_") for p in world["tmp"].iterdir()):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.02)
    time.sleep(0.3)  # the workers are training
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == "sgd-influence: " + interrupts.MESSAGE, err
    assert time.monotonic() - t0 < 4.0
    assert list(world["tmp"].iterdir()) == []
    assert not (world["root"] / "out").exists()
