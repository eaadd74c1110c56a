"""Every output file belongs to one output set, no command replaces a file of another set
(issue 34, cases 2 and 4), and a set is committed all or nothing (issue 18, case 3).

A run's influence CSV, summary, settings, trials, report, thumbnails and cleansed CSV form one
set; ``cleanse --output X.csv`` makes a set of its own (or rewrites the cleansed CSV of the
run whose influence CSV it reads). The ledger records each file's set; a command that would
replace a file of another set is refused before computing, with one line, and nothing
changes.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess

import pytest

from sgd_influence_plugin import cli, ownership, runner, staged_commit
from support.user_files import one_line_error, run_argv, tree


def _tree(root) -> dict:
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            p = os.path.join(folder, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def _one_line(capsys, pattern: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err, err
    assert re.search(pattern, err), err
    return err


@pytest.fixture
def no_compute(monkeypatch):
    """Refusals must come before the computation: computing fails the test."""

    def computed(*a, **k):
        raise AssertionError("the influence was computed before the refusal")

    monkeypatch.setattr(runner, "compute_influence", computed)


def _cleanse(w, output):
    return [
        "cleanse",
        "--influence",
        str(w["influence"]),
        "--train",
        w["train"],
        "--output",
        output,
    ]


@pytest.mark.parametrize("name", ["influence.csv", "influence_trials.csv"])
def test_cleanse_refuses_a_file_of_another_run(world_small, capsys, name):
    """``cleanse --output r1000/influence.csv`` (another run's influence CSV) or its trials
    CSV: refused, and the other run's set stays byte-identical."""
    w = world_small
    other = w["root"] / "r1000" / "influence.csv"
    assert cli.main(w["run"] + ["--output", str(other), "--seed", "3"]) == 0
    capsys.readouterr()
    before = _tree(other.parent)
    assert cli.main(_cleanse(w, str(other.parent / name))) == 2
    _one_line(capsys, r"belongs to another output set \(run influence\.csv\)")
    assert _tree(other.parent) == before


def test_cleanse_may_rewrite_the_cleansed_csv_of_its_own_run(world_small, capsys):
    """The cleansed CSV beside the influence CSV that cleanse reads is that run's: cleanse
    writes it again (after editing the actions), and it stays in the run's set."""
    w = world_small
    cleansed = w["influence"].parent / "influence_cleansed.csv"
    assert cli.main(_cleanse(w, str(cleansed))) == 0
    assert ownership.output_set(str(cleansed)) == "run influence.csv"
    assert cli.main(w["run"] + ["--output", str(w["influence"])]) == 0


def test_run_refuses_to_take_over_another_sets_cleansed_csv(world_small, capsys, no_compute):
    """``run --output base/influence_cleansed.csv``: that name is the cleansed CSV of the set
    ``base/influence.csv``; refused before computing, nothing changes."""
    w = world_small
    base = w["influence"].parent
    before = _tree(base)
    capsys.readouterr()
    assert cli.main(w["run"] + ["--output", str(base / "influence_cleansed.csv")]) == 2
    _one_line(capsys, r"influence_cleansed\.csv: belongs to another output set")
    assert _tree(base) == before


def test_run_refuses_to_replace_a_cleanse_output(world_small, capsys, no_compute):
    """A cleanse set at ``other/x_cleansed.csv`` is not replaced by a run whose companion has
    that name (``run --output other/x.csv``)."""
    w = world_small
    other = w["root"] / "other"
    assert cli.main(_cleanse(w, str(other / "x_cleansed.csv"))) == 0
    capsys.readouterr()
    before = _tree(other)
    assert cli.main(w["run"] + ["--output", str(other / "x.csv")]) == 2
    _one_line(capsys, r"belongs to another output set \(cleanse x_cleansed\.csv\)")
    assert _tree(other) == before


def test_a_user_file_at_the_cleansed_name_is_refused_before_computing(
    world_small, capsys, no_compute
):
    """A file of the user's at ``influence_cleansed.csv`` (no ``--remove-ratio``) is refused
    before computing, as one at the summary's name always was."""
    w = world_small
    out = w["root"] / "fresh" / "influence.csv"
    out.parent.mkdir()
    (out.parent / "influence_cleansed.csv").write_text("mine\n")
    capsys.readouterr()
    assert cli.main(w["run"] + ["--output", str(out)]) == 2
    _one_line(capsys, r"influence_cleansed\.csv: already exists and was not written")
    assert (out.parent / "influence_cleansed.csv").read_text() == "mine\n"
    assert sorted(os.listdir(out.parent)) == ["influence_cleansed.csv"]


# ----------------------------------------------------------------------------------------
# A set is committed all or nothing: one file that cannot be replaced changes nothing
# ----------------------------------------------------------------------------------------


def _chattr(flag, path) -> bool:
    try:
        proc = subprocess.run(["chattr", flag, str(path)], capture_output=True)
    except OSError:
        return False
    return proc.returncode == 0


@pytest.mark.parametrize("how", ["immutable", "cannot move aside", "cannot move in", "companion"])
def test_an_output_that_cannot_be_replaced_changes_nothing(world, capsys, monkeypatch, how):
    """A set is committed all or nothing (issue 18, case 3). The CSV cannot be replaced at
    commit time (a file open in Excel on Windows; here an
    immutable file, or os.replace failing for it, or for a companion): exit 2, and neither the
    CSV nor any companion changes."""
    out = world["root"] / "out" / "influence.csv"
    assert cli.main(run_argv(world, out)) == 0
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

        monkeypatch.setattr(staged_commit.os, "replace", replace)
    before = tree(world["root"])
    try:
        # Another seed: every file of the new set differs from the old one.
        assert cli.main(run_argv(world, out, "--seed", "1", "--report")) == 2
    finally:
        if how == "immutable":
            _chattr("-i", out)
        monkeypatch.undo()
    one_line_error(
        capsys, rf"{os.path.basename(failing)}: cannot be replaced .*Nothing was changed"
    )
    assert tree(world["root"]) == before
    # Once the file can be replaced, the same run goes through.
    assert cli.main(run_argv(world, out, "--seed", "1", "--report")) == 0
    assert (out.parent / "influence_report.html").is_file()
    assert not [p for p in os.listdir(out.parent) if p.startswith(".") and "old" in p]
