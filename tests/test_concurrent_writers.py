"""Writers into one folder at the same time keep every ledger entry (issue 34, case 8), and a
cache folder another run holds is refused (issue 18, case 17).

Each commit holds the folder's ledger lock (``ledger_lock``), so no writer drops another's
entry and every file stays replaceable by the command that wrote it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from sgd_influence_plugin import cli, ledger_lock, ownership, places, staged_commit
from support.user_files import one_line_error, run_argv, tree

CLI = os.path.join(os.path.dirname(sys.executable), "sgd-influence")


def _commit(folder: str, name: str, barrier: threading.Barrier, errors: list) -> None:
    try:
        with staged_commit.staging(folder, "--output") as stage:
            staged = os.path.join(stage, name)
            with open(staged, "w") as f:
                f.write(name)
            barrier.wait(timeout=30)
            staged_commit.commit_staged(
                folder, [(staged, os.path.join(folder, name))], [], "--output"
            )
    except BaseException as e:  # noqa: BLE001 - reported by the test
        errors.append(e)


def test_concurrent_commits_keep_every_ledger_entry(tmp_path):
    """Twelve writers commit into one folder at once, five times over: the ledger lists
    every file each time, and the lock file is gone afterwards."""
    for round_ in range(5):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        names = [f"a{i}.csv" for i in range(12)]
        barrier = threading.Barrier(len(names))
        errors: list = []
        threads = [
            threading.Thread(target=_commit, args=(str(folder), n, barrier, errors)) for n in names
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        assert sorted(ownership.read_ledger(str(folder))) == sorted(names)
        assert all(ownership.written_by_tool(str(folder / n)) for n in names)
        assert not (folder / ledger_lock.LOCK).exists()


def test_a_lock_left_by_a_killed_writer_is_taken_over(tmp_path, monkeypatch):
    """A lock file older than STALE_SECONDS (its writer was killed) does not block writers."""
    lock = tmp_path / ledger_lock.LOCK
    lock.write_text("12345\n")
    old = os.stat(lock).st_mtime - ledger_lock.STALE_SECONDS - 5
    os.utime(lock, (old, old))
    with ledger_lock.held(str(tmp_path), "--output"):
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock.exists()


def test_a_held_lock_gives_up_with_one_line(tmp_path, monkeypatch):
    """Another writer that holds the lock for longer than WAIT_SECONDS: one OutputError
    naming the lock file and the fix, nothing written."""
    import pytest

    from sgd_influence_plugin.errors import OutputError

    monkeypatch.setattr(ledger_lock, "WAIT_SECONDS", 0.3)
    (tmp_path / ledger_lock.LOCK).write_text("1\n")
    with pytest.raises(OutputError, match="another sgd-influence command") as e:
        with ledger_lock.held(str(tmp_path), "--output"):
            raise AssertionError("must not get the lock")
    assert "\n" not in str(e.value) and ledger_lock.LOCK in str(e.value)


def test_concurrent_cleanse_processes_all_stay_replaceable(world_small):
    """Six ``cleanse`` processes into one folder at once: each output is listed in the
    ledger, so running each one again replaces it (before the lock, a lost entry made the
    rerun refuse the file as "not written by sgd-influence")."""
    w = world_small
    out = w["root"] / "lg"
    argv = [CLI, "cleanse", "--influence", str(w["influence"]), "--train", w["train"]]
    procs = [
        subprocess.Popen(argv + ["--output", str(out / f"a{i}.csv")], stderr=subprocess.PIPE)
        for i in range(6)
    ]
    for p in procs:
        p.communicate(timeout=120)
        assert p.returncode == 0
    ledger = json.loads((out / ownership.LEDGER).read_text())
    assert sorted(ledger["files"]) == [f"a{i}.csv" for i in range(6)]
    rerun = subprocess.run(argv + ["--output", str(out / "a3.csv")], timeout=120)
    assert rerun.returncode == 0


def test_a_cache_dir_in_use_by_another_run_is_refused(world, capsys):
    from sgd_influence_plugin import io_utils

    out = world["root"] / "out" / "influence.csv"
    cache = world["root"] / "cache"
    assert cli.main(run_argv(world, out, "--cache-dir", str(cache))) == 0
    with open(cache / places.CACHE_LOCK, "a+") as held:  # another run holds it
        assert io_utils.try_lock(held)
        before = tree(world["root"])
        assert cli.main(run_argv(world, out, "--cache-dir", str(cache), "--seed", "1")) == 2
        one_line_error(capsys, r"--cache-dir .*cache: is in use by another sgd-influence run")
        assert tree(world["root"]) == before
    assert cli.main(run_argv(world, out, "--cache-dir", str(cache), "--seed", "1")) == 0
