"""Every refusal is one line that says what is wrong and how to fix it (issue 34, case 10).

A file-size limit (``ulimit -f``) names the limit, not "permissions" or "another program";
HDF5's multi-line text never splits the line; a dangling or looping symbolic link is called
that, not "a file"; an immutable plugins folder is named, not an internal probe file; a CSV
with hundreds of columns gets a short line. Bad options and inputs of ``run`` (absurd rates,
contexts, labels, functions nnabla lacks, names too long, options that pointed the wrong way;
issue 18) are refused with one line before computing, by the CLI and the console script
alike, and nothing changes.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import re
import resource
import subprocess
import sys

import pytest

from sgd_influence_plugin import cli, staged_commit
from support.user_files import (
    argv_for,
    label_edit,
    load_plugin,
    one_line_error,
    plugin_error,
    rewrite_cell,
    tree,
)

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
    message = str(staged_commit.write_failed(e, "out", "--output"))
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


@contextlib.contextmanager
def _unwritable(folder):
    """``folder``, made, immutable (``chattr +i``) or else read-only while the block runs;
    the test is skipped where neither stops this user."""
    folder.mkdir()
    immutable = _chattr("+i", folder)
    if not immutable:
        os.chmod(folder, 0o500)
    try:
        if os.access(folder, os.W_OK) and not immutable:
            pytest.skip("neither chattr +i nor a read-only folder stops this user")
        yield folder
    finally:
        if immutable:
            _chattr("-i", folder)
        os.chmod(folder, 0o700)


def test_an_unwritable_plugins_folder_is_named_not_a_probe_file(tmp_path, capsys):
    """An immutable (or, for a normal user, read-only) plugins folder: the message names the
    folder, not the internal probe file the check tried to make."""
    folder = tmp_path / "plugins"
    with _unwritable(folder):
        assert cli.main(["install-plugin", str(folder)]) == 2
    err = _one_line(capsys.readouterr().err, r"plugins: cannot install there")
    assert ".sgd_influence_probe_" not in err


def test_an_unwritable_cache_folder_is_named_not_a_probe_file(world_small, capsys):
    """``--cache-dir`` an immutable (or read-only) folder: the message named '.../probe'."""
    w = world_small
    folder = w["root"] / "cache"
    with _unwritable(folder):
        capsys.readouterr()
        argv = w["run"] + ["--output", str(w["root"] / "c" / "i.csv"), "--cache-dir", str(folder)]
        assert cli.main(argv) == 2
    err = _one_line(capsys.readouterr().err, r"--cache-dir .*cache: cannot write in .*cache")
    assert "probe" not in err


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


def test_a_data_file_nnabla_cannot_read_gets_our_line_only(world_small):
    """A ragged per-sample CSV: nnabla's loader logs a line of its own before it raises; the
    user sees only the one that names the row and the fix (a subprocess: pytest catches
    what the logger writes)."""
    w = world_small
    data = os.path.dirname(w["train"])
    with open(os.path.join(data, "ragged.csv"), "w") as f:
        f.write("1,2\n3\n")
    rewrite_cell(w["train"], 0, 0, "ragged.csv")
    argv = [CLI, *w["run"], "--output", str(w["root"] / "rg" / "i.csv")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    _one_line(proc.stderr, r"train\.csv row 1, column 'x:image': cannot read 'ragged\.csv'")


# ----------------------------------------------------------------------------------------
# Run: refused with one line before computing, nothing changes (issue 18)
# ----------------------------------------------------------------------------------------


def _unknown_function(w):
    text = (w["result"] / "net.nntxt").read_text()
    assert 'type: "Affine"' in text
    bad = w["root"] / "foo.nntxt"
    bad.write_text(text.replace('type: "Affine"', 'type: "FooBarFunc"'))
    params = str(w["result"] / "parameters.h5")
    return ["--model", None, "--config", str(bad), "--params", params]


def _long_name(w):
    return ["--output", str(w["root"] / "out" / ("a" * 300 + ".csv"))]


def _long_path(w):
    deep = os.path.join(str(w["root"]), *(["d" * 200] * 21))
    return ["--output", os.path.join(deep, "influence.csv")]


RUN_REFUSED = {
    # issue 18, case 6: absurd rates, refused before computing (auto: once the curvature has
    # chosen it)
    "lr 1e-46": (
        lambda w: ["--lr", "1e-46"],
        r"learning rate 1e-46: too small to change float32 parameters",
    ),
    "weight decay 1e300 at lr 0.1": (
        lambda w: ["--lr", "0.1", "--weight-decay", "1e300"],
        r"learning rate 0\.1 with weight decay 1e\+300: each step would multiply every weight",
    ),
    "weight decay 1e300 at lr auto": (
        lambda w: ["--weight-decay", "1e300"],
        r"learning rate [\d.e+-]+ \(--lr auto chose it: .*\): at most 1e-12, too small .*"
        r"give a smaller --weight-decay",
    ),
    "weight decay 1e30 at lr auto": (
        lambda w: ["--weight-decay", "1e30"],
        r"\(--lr auto chose it: .*\): at most 1e-12, .*give a smaller --weight-decay",
    ),
    "weight decay that collapses the model in an epoch": (
        lambda w: ["--lr", "0.1", "--weight-decay", "6"],
        r"weight decay 6: the decay alone would shrink every weight to 0\.0256 of its size in "
        r"the 4 steps",
    ),
    # issue 18, case 8: half precision was recorded and ignored
    "context cpu:half": (
        lambda w: ["--context", "cpu:half"],
        r"--context cpu:half: use cpu, or cudnn\[:DEVICE\] .*half precision is not supported",
    ),
    "context cudnn:gpu": (lambda w: ["--context", "cudnn:gpu"], r"--context cudnn:gpu: "),
    # issue 18, case 10: OverflowError in validation.py
    "label 1e400": (
        label_edit("1e400"),
        r"train\.csv row 4, column 'y:label': '1e400' is not a finite number",
    ),
    "label 1e39": (
        label_edit("1e39"),
        r"row 4, column 'y:label': '1e39' is beyond the range of the network's 32-bit numbers",
    ),
    # issue 18, case 11: ValueError: Function "FooBarFunc" is not supported
    "unknown function type": (
        _unknown_function,
        r"foo\.nntxt \+ .*: function '.*Affine' of network '\w+' has type 'FooBarFunc', "
        r"which nnabla "
        r"1\.39\.0 does not have",
    ),
    # issue 18, case 14: refused only after computing, blaming the staging folder and free space
    "a file name of 304 bytes": (
        _long_name,
        r"--output a{28}\.\.\.a{24}\.csv: a name of 304 bytes, but this file system takes at "
        r"most 255; give a shorter --output",
    ),
    "a 4 KB path": (
        _long_path,
        r"--output: the path is \d+ bytes long, .*at most 4096; give a shorter --output",
    ),
    # issue 18, case 16: --trials blamed --seed, or free space
    "trials 1e12": (
        lambda w: ["--trials", "1000000000000"],
        r"^sgd-influence: error: --trials 1000000000000: give at most 1000 trials",
    ),
    "trials 1e6": (
        lambda w: ["--trials", "1000000"],
        r"--trials 1000000: give at most 1000 trials",
    ),
    # issue 18, case 17: messages that pointed the wrong way
    "label names /dev/null": (
        lambda w: ["--label-names", "/dev/null"],
        r"/dev/null: is not a regular file",
    ),
    # fuzz: a ValueError from the executor, before the settings were checked
    # fuzz: one file as both datasets ran, the held-out check not held out
    "val is the training CSV": (
        lambda w: ["--val", w["train"]],
        r"train\.csv: --val is the same file as --train; .*give --val a CSV of other rows",
    ),
    "jobs -1": (lambda w: ["--jobs", "-1"], r"error: --jobs -1: must be >= 1"),
    "params without config": (
        lambda w: ["--model", None, "--params", str(w["result"] / "parameters.h5")],
        r"--params .*parameters\.h5 needs --config",
    ),
}


@pytest.mark.parametrize("case", sorted(RUN_REFUSED))
def test_run_refuses_with_one_line_and_changes_nothing(world, case, capsys):
    edit, pattern = RUN_REFUSED[case]
    argv = argv_for(world, edit)
    before = tree(world["root"])
    assert cli.main(argv) == 2
    one_line_error(capsys, pattern)
    assert tree(world["root"]) == before
    assert os.listdir(world["tmp"]) == []  # no cache left behind


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["-p", "x.h5"], r"^--params x\.h5 needs --config"),  # said "both --model and"
        (["-l", "1e-46"], r"learning rate 1e-46: too small"),  # said "completed successfully"
        (["--context", "cpu:half"], r"--context cpu:half: "),  # was recorded and ignored
        (["-j", "-1"], r"--jobs -1: must be >= 1"),  # was a ValueError's traceback
    ],
)
def test_the_plugin_refuses_with_one_line_too(world, monkeypatch, caplog, argv, pattern):
    monkeypatch.chdir(world["result"])
    before = tree(world["root"])
    extra = ["-t", world["train"], "-v", world["val"]]
    assert load_plugin().main(argv + extra) == 2
    said = plugin_error(caplog, pattern)
    assert not any("completed successfully" in m or "both" in m for m in said)
    assert tree(world["root"]) == before


@pytest.mark.parametrize(
    "argv, pattern",
    [
        ([CLI, "run", "-m", "r.nnp", "-o", "o.csv", "--epochs", "1e9"],
         r"^sgd-influence run: error: argument --epochs: invalid int value: '1e9' "
         r"\(see sgd-influence run --help\)$"),
        ([CLI, "check", "--samples", "many"], r"^sgd-influence check: error: .*--samples"),
        ([CLI, "nonsense"], r"^sgd-influence: error: argument command: invalid choice"),
        ([sys.executable, os.path.join(os.path.dirname(os.path.dirname(__file__)), "plugins",
          "_Post_Process", "_XAI", "_Image", "SGD_Influence_Cleansing.py"), "--trials", "nan"],
         r"^SGD_Influence_Cleansing\.py: error: argument -n/--trials: invalid int value"),
    ],
)  # fmt: skip
def test_an_option_argparse_cannot_read_is_one_line_without_the_usage_block(argv, pattern):
    """argparse prints its usage block before the error; here the error alone, one line,
    exit 2, pointing to --help, from the CLI and the console script alike."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    _one_line(proc.stderr, pattern)
    assert "usage:" not in proc.stderr and proc.stdout == ""
