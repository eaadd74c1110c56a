"""The second hostile probe (issue 18): no file of the user's or the console's is ever
replaced, and no wrong result exits 0.

Each test names the case of the issue it covers. The data-loss cases compare every file under
the user's folders byte for byte (and mode) before and after, as ``test_safety.py`` does;
refusals happen before computing, so most cases take a fraction of a second. Everything uses
the real nnabla and the small real fixtures of ``conftest.py``.
"""

from __future__ import annotations

import csv
import errno
import os
import subprocess

import pytest
import test_safety as first

from sgd_influence_plugin import cli, ownership

# Fixtures and helpers shared with the first probe (tests/test_safety.py).
world = first.world
_private_tmpdir = first._private_tmpdir
_tree = first._tree
_run_argv = first._run_argv
_one_line_error = first._one_line_error


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------
# Case 3: the output set is committed all or nothing
# ----------------------------------------------------------------------------------------


def _chattr(flag, path) -> bool:
    try:
        proc = subprocess.run(["chattr", flag, str(path)], capture_output=True)
    except OSError:
        return False
    return proc.returncode == 0


@pytest.mark.parametrize("how", ["immutable", "cannot move aside", "cannot move in", "companion"])
def test_case3_an_output_that_cannot_be_replaced_changes_nothing(world, capsys, monkeypatch, how):
    """The CSV cannot be replaced at commit time (a file open in Excel on Windows; here an
    immutable file, or os.replace failing for it, or for a companion): exit 2, and neither the
    CSV nor any companion changes."""
    out = world["root"] / "out" / "influence.csv"
    assert cli.main(_run_argv(world, out)) == 0
    capsys.readouterr()
    failing = str(out if how != "companion" else out.parent / "influence_summary.txt")
    if how == "immutable":
        if not _chattr("+i", out):
            pytest.skip("chattr +i is not available here")
    else:
        real = os.replace

        def replace(src, dst, *args, **kwargs):
            src, dst = str(src), str(dst)
            blocked = {
                "cannot move aside": src == failing,
                "cannot move in": dst == failing and ".sgd_influence_staging_" in src,
                "companion": dst == failing and ".sgd_influence_staging_" in src,
            }[how]
            if blocked:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), failing)
            return real(src, dst, *args, **kwargs)

        monkeypatch.setattr(ownership.os, "replace", replace)
    before = _tree(world["root"])
    try:
        # Another seed: every file of the new set differs from the old one.
        assert cli.main(_run_argv(world, out, "--seed", "1", "--report")) == 2
    finally:
        if how == "immutable":
            _chattr("-i", out)
        monkeypatch.undo()
    _one_line_error(
        capsys, rf"{os.path.basename(failing)}: cannot be replaced .*Nothing was changed"
    )
    assert _tree(world["root"]) == before
    # Once the file can be replaced, the same run goes through.
    assert cli.main(_run_argv(world, out, "--seed", "1", "--report")) == 0
    assert (out.parent / "influence_report.html").is_file()
    assert not [p for p in os.listdir(out.parent) if p.startswith(".") and "old" in p]
