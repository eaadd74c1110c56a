"""A folder the tool made is its own only down to the files it wrote (issue 34, case 1).

A thumbnails folder and the installed package hold a marker that lists what the tool wrote
there. A file of the user's inside (``notes.txt``), or an installed file the user edited, stops
the command before computing, with the file named, and nothing changes.
"""

from __future__ import annotations

import os
import re

import pytest

from sgd_influence_plugin import cli, runner


def _one_line(capsys, pattern: str) -> None:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err, err
    assert re.search(pattern, err), err


@pytest.fixture
def thumbs_run(results, data28, tmp_path):
    """A run on 28x28 images with 16 px thumbnails, so it made ``influence_thumbnails/``."""
    out = tmp_path / "out" / "influence.csv"
    argv = [
        "run",
        "--model",
        os.path.join(results("mlp"), "results.nnp"),
        "--train",
        data28["train"],
        "--val",
        data28["val"],
        "--quiet",
        "--no-recommend",
        "--output",
        str(out),
    ]
    assert cli.main(argv + ["--thumb-size", "16"]) == 0
    assert (out.parent / "influence_thumbnails" / "000000.png").exists()
    return argv, out.parent / "influence_thumbnails"


@pytest.mark.parametrize("thumbs", [["--thumb-size", "16"], []], ids=["replaced", "stale"])
def test_a_user_file_in_the_thumbnails_folder_stops_the_run(
    thumbs_run, capsys, monkeypatch, thumbs
):
    """``notes.txt`` in the thumbnails folder: a run that would replace the folder (same
    thumbnails) or drop it as stale (64 px: no thumbnails needed) is refused before
    computing, and the file stays."""
    argv, folder = thumbs_run
    (folder / "notes.txt").write_text("my notes\n")
    capsys.readouterr()

    def computed(*a, **k):
        raise AssertionError("computed before the refusal")

    monkeypatch.setattr(runner, "compute_influence", computed)
    assert cli.main(argv + thumbs) == 2
    _one_line(capsys, r"influence_thumbnails[/\\]notes\.txt: sgd-influence did not write")
    assert (folder / "notes.txt").read_text() == "my notes\n"


def test_the_thumbnails_folder_is_replaced_when_it_holds_only_thumbnails(thumbs_run):
    argv, folder = thumbs_run
    assert cli.main(argv) == 0  # 64 px: the folder is stale, and the tool's own: removed
    assert not folder.exists()


def _package(target):
    return target / "_Post_Process" / "_XAI" / "_Image" / "sgd_influence_plugin"


@pytest.mark.parametrize("how", ["added", "edited"])
def test_install_plugin_keeps_the_users_files_in_the_installed_package(tmp_path, capsys, how):
    """A user's ``my_notes.txt`` in the installed package, or an edited ``cli.py``: the
    reinstall is refused, naming the file, and both stay as the user left them."""
    target = tmp_path / "plugins"
    target.mkdir()
    assert cli.main(["install-plugin", str(target)]) == 0
    pkg = _package(target)
    (pkg / "__pycache__").mkdir(exist_ok=True)
    (pkg / "__pycache__" / "cli.cpython-39.pyc").write_bytes(b"python's own cache")
    victim = pkg / ("my_notes.txt" if how == "added" else "cli.py")
    with open(victim, "a") as f:
        f.write("# the user's line\n")
    mine = victim.read_bytes()
    capsys.readouterr()
    assert cli.main(["install-plugin", str(target)]) == 2
    _one_line(capsys, re.escape(victim.name) + ": sgd-influence did not write this file")
    assert victim.read_bytes() == mine


def test_install_plugin_replaces_its_own_package_and_pythons_cache(tmp_path):
    target = tmp_path / "plugins"
    target.mkdir()
    assert cli.main(["install-plugin", str(target)]) == 0
    pkg = _package(target)
    (pkg / "__pycache__").mkdir(exist_ok=True)
    (pkg / "__pycache__" / "cli.cpython-39.pyc").write_bytes(b"python's own cache")
    assert cli.main(["install-plugin", str(target)]) == 0
    assert not (pkg / "__pycache__").exists()


def test_a_damaged_marker_makes_nothing_in_the_folder_the_tools(tmp_path, capsys):
    """A marker whose list cannot be read no longer falls back to "replace anything": the
    reinstall is refused, naming the marker."""
    target = tmp_path / "plugins"
    target.mkdir()
    assert cli.main(["install-plugin", str(target)]) == 0
    marker = _package(target) / ".sgd_influence_folder"
    with open(marker, "a") as f:
        f.write("# edited\n")
    capsys.readouterr()
    assert cli.main(["install-plugin", str(target)]) == 2
    _one_line(capsys, r"\.sgd_influence_folder: sgd-influence did not write this file")
