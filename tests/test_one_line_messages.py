"""Every refusal is one line that says what is wrong and how to fix it (issue 34, case 10).

A file-size limit (``ulimit -f``) names the limit, not "permissions" or "another program";
HDF5's multi-line text never splits the line; a dangling or looping symbolic link is called
that, not "a file"; an immutable plugins folder is named, not an internal probe file; a CSV
with hundreds of columns gets a short line.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import resource
import subprocess
import sys

import pytest

from sgd_influence_plugin import cli, ownership

CLI = os.path.join(os.path.dirname(sys.executable), "sgd-influence")


def _one_line(text: str, pattern: str) -> str:
    err = text.strip()
    assert "Traceback" not in err and "\n" not in err, err
    assert re.search(pattern, err), err
    return err


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (20 * 1024, 20 * 1024))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ulimit -f (Linux)")
def test_a_file_size_limit_is_named_in_one_line(world_small, results, data28, tmp_path):
    """``ulimit -f 20``: the cache of a 28x28 MLP passes it. One line that names the limit,
    exit 2, no traceback of h5py's teardown, no crash, nothing written."""
    out, cache = tmp_path / "uf" / "influence.csv", tmp_path / "uf_cache"
    argv = [CLI, "run", "--model", os.path.join(results("mlp"), "results.nnp")]
    argv += ["--train", data28["train"], "--val", data28["val"], "--quiet"]
    argv += ["--output", str(out), "--cache-dir", str(cache)]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size
    )
    assert proc.returncode == 2, proc.stderr
    _one_line(proc.stderr, r"cannot write the cache \(File too large\).*ulimit -f")
    assert not out.exists()


def test_a_write_past_the_size_limit_does_not_blame_permissions():
    e = OSError(errno.EFBIG, "File too large\nsecond line of a library's text", "out/c.csv")
    message = str(ownership.write_failed(e, "out", "--output"))
    _one_line(message, r"out/c\.csv: cannot write .*ulimit -f")
    assert "permission" not in message


@pytest.mark.parametrize("kind", ["dangling", "looping"])
def test_a_link_that_leads_nowhere_is_called_so(world_small, capsys, kind):
    w = world_small
    link = w["root"] / "link"
    if kind == "dangling":
        os.symlink(w["root"] / "nowhere", link)
        pattern = r"is a symbolic link to .*nowhere, which does not exist"
    else:
        os.symlink(w["root"] / "link2", link)
        os.symlink(link, w["root"] / "link2")
        pattern = r"is a symbolic link that loops"
    for argv in (
        w["run"] + ["--output", str(link / "i.csv")],
        w["run"] + ["--output", str(w["root"] / "o" / "i.csv"), "--cache-dir", str(link)],
        ["install-plugin", str(link)],
    ):
        capsys.readouterr()
        assert cli.main(argv) == 2
        err = _one_line(capsys.readouterr().err, pattern)
        assert "is a file" not in err


def _chattr(flag: str, path) -> bool:
    try:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0
    except OSError:
        return False


def test_an_unwritable_plugins_folder_is_named_not_a_probe_file(tmp_path, capsys):
    """An immutable (or, for a normal user, read-only) plugins folder: the message names the
    folder, not the internal probe file the check tried to make."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    immutable = _chattr("+i", folder)
    if not immutable:
        os.chmod(folder, 0o500)
    try:
        if os.access(folder, os.W_OK) and not immutable:
            pytest.skip("neither chattr +i nor a read-only folder stops this user")
        assert cli.main(["install-plugin", str(folder)]) == 2
    finally:
        if immutable:
            _chattr("-i", folder)
        os.chmod(folder, 0o700)
    err = _one_line(capsys.readouterr().err, r"plugins: cannot install there")
    assert ".sgd_influence_probe_" not in err


def test_a_csv_with_hundreds_of_columns_gets_a_short_line(world_small, capsys):
    w = world_small
    wide = w["root"] / "wide.csv"
    with open(wide, "w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow([f"x__{i}" for i in range(783)])
        out.writerows([[0.5] * 783 for _ in range(50)])
    argv = ["run", "--model", w["model"], "--train", str(wide), "--val", w["val"], "--quiet"]
    capsys.readouterr()
    assert cli.main(argv + ["--output", str(w["root"] / "w" / "i.csv")]) == 2
    err = _one_line(capsys.readouterr().err, r"and 775 more \(783 columns\)")
    assert len(err) < 400


def test_a_cell_with_a_line_break_stays_on_one_line(world_small, capsys):
    """A quoted image cell holding a line break: the message shows it as ``\\n``."""
    w = world_small
    with open(w["train"]) as f:
        lines = f.read().splitlines(keepends=True)
    bad = os.path.join(os.path.dirname(w["train"]), "nl.csv")
    with open(bad, "w") as f:
        f.writelines([lines[0], '"train/00\n0000.png",1\n', *lines[2:]])
    argv = ["run", "--model", w["model"], "--train", bad, "--val", w["val"], "--quiet"]
    capsys.readouterr()
    assert cli.main(argv + ["--output", str(w["root"] / "nl" / "i.csv")]) == 2
    _one_line(capsys.readouterr().err, r"nl\.csv row 1, column 'x:image': file 'train/00\\n")
