"""Tiny inputs get one clear line, and never a recommendation (issue 34, case 11).

Before, a 2-row training CSV got "remove 1 of 2 rows", a 1-row one exited 0, and a training
set smaller than one batch got no word at all.
"""

from __future__ import annotations

import re

import pytest

from sgd_influence_plugin import cli, runner


def _head(src, dst, rows: int):
    with open(src) as f:
        lines = f.read().splitlines(keepends=True)
    with open(dst, "w") as f:
        f.writelines(lines[: rows + 1])
    return str(dst)


def _argv(w, train, out, *extra):
    return ["run", "--model", w["model"], "--train", train, "--val", w["val"], "--quiet"] + [
        "--output",
        str(out),
        *extra,
    ]


@pytest.fixture
def no_compute(monkeypatch):
    def computed(*a, **k):
        raise AssertionError("computed before the refusal")

    monkeypatch.setattr(runner, "compute_influence", computed)


@pytest.mark.parametrize(
    "rows, pattern",
    [
        (1, r"t\.csv: 1 training row; the influence ranks samples"),
        (2, r"t\.csv: 2 training rows, fewer than one batch of 16.*--batch-size 2 or less"),
        (10, r"t\.csv: 10 training rows, fewer than one batch of 16"),
    ],
)
def test_a_training_set_smaller_than_a_batch_is_refused(
    world_small, capsys, no_compute, rows, pattern
):
    w = world_small
    train = _head(w["train"], w["root"] / "data" / "t.csv", rows)
    out = w["root"] / "tiny" / "influence.csv"
    capsys.readouterr()
    assert cli.main(_argv(w, train, out)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert re.search(pattern, err), err
    assert not out.parent.exists()


def test_a_handful_of_rows_gets_scores_but_no_recommendation(world_small, capsys):
    """Two rows with ``--batch-size 2``: scores, and "no recommendation", never "remove 1 of
    2 rows"; the cleansed CSV is the training CSV."""
    w = world_small
    train = _head(w["train"], w["root"] / "data" / "t.csv", 2)
    out = w["root"] / "tiny" / "influence.csv"
    assert cli.main(_argv(w, train, out, "--batch-size", "2")) == 0
    summary = (out.parent / "influence_summary.txt").read_text()
    assert "keep 2, relabel 0, remove 0 of 2 rows" in summary
    assert "no recommendation: 2 training rows; at least 100" in summary
    with open(train) as f:
        rows = f.read().splitlines()[1:]
    cleansed = (out.parent / "influence_cleansed.csv").read_text().splitlines()[1:]
    assert len(cleansed) == len(rows)


def test_too_few_rows_for_a_recommendation_is_said_on_the_console(world_small, capsys):
    w = world_small
    out = w["root"] / "said" / "influence.csv"
    argv = [a for a in _argv(w, w["train"], out) if a != "--quiet"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert re.search(r"no recommendation: \d+ training rows; at least 100", err), err
