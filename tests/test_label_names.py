"""Class names (--label-names / --label_names): checked before any work, shown where people read."""

import csv
import os
import subprocess
import sys

import pytest

from sgd_influence_plugin import cli
from sgd_influence_plugin.errors import InputError
from sgd_influence_plugin.labels import check_label_names, class_pairs, read_label_names
from sgd_influence_plugin.runner import RunRequest, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(
    ROOT, "plugins", "_Post_Process", "_XAI", "_Image", "SGD_Influence_Cleansing.py"
)
SAMPLE_NAMES = os.path.join(ROOT, "samples", "fashion_mnist", "label_names.txt")
#: Fashion-MNIST's classes in label order (Xiao et al. 2017, the dataset's README).
FASHION = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _names(tmp_path, text, mode="w"):
    path = tmp_path / "names.txt"
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def test_the_sample_ships_fashion_mnist_names_in_label_order():
    assert read_label_names(SAMPLE_NAMES) == FASHION


def test_reading_tolerates_bom_crlf_spaces_and_a_trailing_blank_line(tmp_path):
    path = _names(tmp_path, "\ufeff cat \r\ndog\r\n\r\n".encode(), mode="wb")
    assert read_label_names(path) == ["cat", "dog"]


@pytest.mark.parametrize(
    "text,message",
    [
        ("", r"names\.txt: the label-names file is empty; write one class name per line"),
        ("\n \n", r"names\.txt: the label-names file is empty"),
        ("cat\n\ndog\n", r"names\.txt line 2: blank class name; .*shift every later name"),
        ("cat\ndog\ncat\n", r"names\.txt line 3: 'cat' is already the name of label 0 \(line 1\)"),
    ],
)
def test_bad_names_files(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        read_label_names(_names(tmp_path, text))


def test_missing_names_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.txt: label-names file not found"):
        read_label_names(str(tmp_path / "nope.txt"))


def test_every_label_needs_a_name():
    check_label_names(["a", "b", "c"], ["0", "2", " 1", "2.0"], "n.txt", "t.csv")
    with pytest.raises(InputError, match=r"n\.txt: 3 names but t\.csv row 2 has label 3; "):
        check_label_names(["a", "b", "c"], ["0", "3", "1"], "n.txt", "t.csv")
    with pytest.raises(InputError, match=r"t\.csv row 3: label '1\.5' is not a class number"):
        check_label_names(["a", "b"], ["0", "1", "1.5"], "n.txt", "t.csv")
    with pytest.raises(InputError, match=r"t\.csv row 1: label '-1' is not a class number"):
        check_label_names(["a", "b"], ["-1"], "n.txt", "t.csv")
    with pytest.raises(InputError, match=r"t\.csv: no label column .* leave out the label names"):
        check_label_names(["a"], None, "n.txt", "t.csv")
    # As many names as the network's classes, even when a class has no training row; more is
    # another problem's file (its names would go to the wrong labels).
    check_label_names(["a", "b", "c"], ["0", "1"], "n.txt", "t.csv", classes={"y": 3})
    with pytest.raises(InputError, match=r"n\.txt: 4 names but the network has 3 classes"):
        check_label_names(list("abcd"), ["0", "1"], "n.txt", "t.csv", classes={"y": 3})


def _label_counts(influence_csv):
    """{label: (harmful, total)} counted from the influence CSV itself."""
    counts = {}
    with open(influence_csv, newline="") as f:
        for row in csv.DictReader(f):
            h, t = counts.get(row["y:label"], (0, 0))
            counts[row["y:label"]] = (h + (float(row["influence"]) < 0), t + 1)
    return counts


def test_summary_and_report_show_the_names(results, data28, tmp_path):
    out = tmp_path / "out" / "influence.csv"
    paths, _ = run(
        RunRequest(
            output=str(out),
            model=os.path.join(results("mlp"), "results.nnp"),
            train=data28["train"],
            val=data28["val"],
            report=True,
            label_names=SAMPLE_NAMES,
        )
    )
    counts = _label_counts(str(out))
    assert len(counts) >= 5
    summary = open(paths.summary).read()
    for label, (harmful, total) in counts.items():
        k = int(label)
        assert f"  {FASHION[k]} ({k}): {harmful} / {total} " in summary
    with open(out, newline="") as f:
        first = next(csv.DictReader(f))
    top = f"  {first['datasource_index']}, {FASHION[int(first['y:label'])]} ({first['y:label']}), "
    assert top in summary  # the top-10 list names the class too
    report = open(paths.report, encoding="utf-8").read()
    assert f"{FASHION[int(first['y:label'])]} ({first['y:label']})" in report
    # The CSV the console reads keeps the numbers.
    assert all(label.isdigit() for label in counts)


@pytest.mark.parametrize("count", [2, 11])
def test_cli_rejects_too_few_or_too_many_names_before_any_work(results, data28, tmp_path, count):
    names = _names(tmp_path, "".join(f"class {k}\n" for k in range(count)))
    out = tmp_path / "out" / "influence.csv"
    argv = [
        "run",
        "--model",
        os.path.join(results("mlp"), "results.nnp"),
        "--train",
        data28["train"],
        "--val",
        data28["val"],
        "--output",
        str(out),
        "--label-names",
        names,
        "--quiet",
    ]
    assert cli.main(argv) == 2
    assert not (tmp_path / "out").exists()


def test_plugin_passes_label_names_through(results, tmp_path):
    names = _names(tmp_path, "only\n")
    folder = results("mlp")
    before = sorted(os.listdir(folder))
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--label_names", names, "-o", str(tmp_path / "o" / "i.csv")],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{names}: 1 names but " in proc.stderr and "has label" in proc.stderr
    assert sorted(os.listdir(folder)) == before and not (tmp_path / "o").exists()


def test_class_pairs_count_both_directions_and_rank_by_rows():
    """T-shirt (0) given as Shirt (6) and Shirt given as T-shirt are one pair; a row the model
    agrees with counts as (same); most rows first, then label order; only the changed rows."""
    given = ["6", "0", "0", "5", "7", "3", "3.0", "9"]
    model = ["0", "6", "6", "7", "5", "3", "", "1"]
    names = [f"c{k}" for k in range(10)]
    got = class_pairs(given, model, rows=[0, 1, 2, 3, 4, 5, 6], names=names)
    assert got == [
        "c0 (0) <-> c6 (6): 3 rows",
        "c3 (3) <-> (same): 2 rows",
        "c5 (5) <-> c7 (7): 2 rows",
    ]
    assert class_pairs(given, model, rows=[7], top=1) == ["1 <-> 9: 1 row"]
    assert class_pairs(given, model, rows=[]) == []
