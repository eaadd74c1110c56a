"""Labels read back from a user-edited influence CSV are checked like training labels
(issue 34, case 3): with ``action = relabel``, a ``suggested_label`` that is not a whole number
in 0..C-1 is refused with the row named, and no cleansed CSV is written.
"""

from __future__ import annotations

import csv

import pytest

from sgd_influence_plugin import cli
from support.user_files import one_line_error


def _edit(src, dst, label):
    with open(src, newline="") as f:
        rows = list(csv.reader(f))
    col_a, col_s = rows[0].index("action"), rows[0].index("suggested_label")
    rows[2][col_a], rows[2][col_s] = "relabel", label
    with open(dst, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


@pytest.mark.parametrize("label", ["abc", "99", "-1", "3.5", "1e39", "nan", "10"])
@pytest.mark.parametrize("settings", ["recorded", "missing"])
def test_a_bad_relabel_is_refused_with_its_row(world_small, capsys, label, settings):
    """The run recorded 10 classes (or, without its settings file, the training labels go up
    to 9): each bad label is refused naming row 2, and nothing is written."""
    w = world_small
    edited = w["influence"].parent / "edited.csv"
    _edit(w["influence"], edited, label)
    if settings == "recorded":
        src = w["influence"].parent / "influence_settings.yaml"
        (edited.parent / "edited_settings.yaml").write_bytes(src.read_bytes())
    out = w["root"] / "cleansed" / "c.csv"
    capsys.readouterr()
    argv = ["cleanse", "--influence", str(edited), "--train", w["train"], "--output", str(out)]
    assert cli.main(argv) == 2
    one_line_error(capsys, r"edited\.csv row 2: suggested_label '.*' is not a class")
    assert not out.parent.exists()


def test_a_good_relabel_is_written(world_small, capsys):
    w = world_small
    edited = w["influence"].parent / "edited.csv"
    _edit(w["influence"], edited, "7")
    out = w["root"] / "cleansed" / "c.csv"
    argv = ["cleanse", "--influence", str(edited), "--train", w["train"], "--output", str(out)]
    assert cli.main(argv) == 0
    with open(edited, newline="") as f:
        row = list(csv.DictReader(f))[1]
    with open(out, newline="") as f:
        written = list(csv.DictReader(f))[int(row["datasource_index"])]
    assert written["y:label"] == "7"


@pytest.mark.parametrize("text", ["label_classes: [unclosed", "just a string", "\xff\xfe"])
def test_a_damaged_settings_file_is_named_not_ignored(world_small, capsys, text):
    """A damaged STEM_settings.yaml beside the edited CSV is refused in one line naming it:
    falling back to the training labels without a word would check against other classes."""
    w = world_small
    edited = w["influence"].parent / "edited_bad.csv"
    _edit(w["influence"], edited, "7")
    (edited.parent / "edited_bad_settings.yaml").write_bytes(text.encode("latin-1"))
    out = w["root"] / "cleansed_bad" / "c.csv"
    capsys.readouterr()
    argv = ["cleanse", "--influence", str(edited), "--train", w["train"], "--output", str(out)]
    assert cli.main(argv) == 2
    one_line_error(capsys, r"edited_bad_settings\.yaml: the run's settings are damaged.*move it")
    assert not out.parent.exists()
