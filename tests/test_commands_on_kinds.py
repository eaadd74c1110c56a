"""check, evaluate (both retrainings) and cleanse end to end on the console kinds that run
learned last (conftest ``KINDS``): recurrent networks, text, vector targets, two inputs, two
losses. Each command's figures are compared with an oracle: the result's own accuracy, the
same retraining run by hand, what the command itself measures on a classifier.
"""

import csv
import os

import numpy as np
import pytest

from sgd_influence_plugin import cli
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.evaluate import accuracy, accuracy_and_loss
from sgd_influence_plugin.nnabla_adapter import load_model


def _evaluate(data, result, out, retrain):
    nnp = os.path.join(result, "results.nnp")
    argv = ["evaluate", "--model", nnp, "--train", data["train"], "--val", data["val"],
            "--test", data["val"], "--output-dir", str(out), "--ratios", "0,0.1",
            "--seeds", "0", "--retrain", retrain, "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_scratch_retraining_reads_windows_style_file_cells(trained, tmp_path):
    """The rnn's CSV names its per-sample files ``.\\00\\0.csv`` as the console on Windows
    does: the retraining CSV kept them relative (``\\`` is no separator here), and nnabla_cli
    train, run beside it, stopped ("RecurrentInput[8] is deleted"). Without removal the
    retrained network is about as good as the result itself."""
    data, result = trained("rnn")
    with open(data["train"]) as f:
        assert "\\" in f.read()
    rows = _evaluate(data, result, tmp_path / "eval", "scratch")
    m = load_model(model=os.path.join(result, "results.nnp"))
    own, _ = accuracy_and_loss(m, load_dataset(data["val"], m.info.input_shapes))
    assert rows[0]["method"] == "none" and abs(float(rows[0]["test_accuracy"]) - own) <= 0.1


def test_the_retraining_csv_makes_backslash_cells_absolute(tmp_path):
    from sgd_influence_plugin.nnabla_adapter.training import write_kept_rows

    (tmp_path / "data" / "00").mkdir(parents=True)
    (tmp_path / "data" / "00" / "3.csv").write_text("1\n")
    rows = [[".\\00\\3.csv", "0"], ["4", "1"]]
    path = write_kept_rows(str(tmp_path / "data" / "train.csv"), ["x", "y"], rows, [0, 1], 0,
                           str(tmp_path))  # fmt: skip
    with open(path) as f:
        written = list(csv.reader(f))[1:]
    assert sorted(written) == sorted([["4", "1"], [str(tmp_path / "data" / "00" / "3.csv"), "0"]])


@pytest.mark.parametrize("kind", ["soft", "vector"])
def test_accuracy_is_nan_without_class_labels(trained, tmp_path, kind):
    """Probability (KL, soft rows) or regression vector targets have no class label: the first
    target value used to be compared with the arg-max (0.075 for one-hot targets of 3
    classes, which now have classes: test_one_hot_labels.py)."""
    data, result = trained(kind)
    rows = _evaluate(data, result, tmp_path / "eval", "last")
    assert all(np.isnan(float(r["test_accuracy"])) for r in rows)
    assert "the network has no class labels" in (tmp_path / "eval" / "summary.md").read_text()


@pytest.mark.parametrize("kind", ["two_inputs", "two_losses", "text_lstm"])
def test_accuracy_reads_the_class_label_column(trained, kind):
    """With two inputs (label ``t``) or two losses (regression column ``y2`` beside the class
    ``y``), the accuracy compares the arg-max with the class column, as counted by hand."""
    data, result = trained(kind)
    m = load_model(model=os.path.join(result, "results.nnp"))
    val = load_dataset(data["val"], m.info.input_shapes)
    (column,) = m.info.label_classes
    want = np.mean(m.predict(val.arrays).argmax(1) == val.arrays[column][:, 0].astype(int))
    assert accuracy(m, val) == pytest.approx(want) and want > 0.5


@pytest.mark.parametrize("kind", ["rnn", "text_lstm", "two_losses"])
def test_check_and_cleanse_run_on_the_kind(trained, tmp_path, kind):
    data, result = trained(kind)
    nnp = os.path.join(result, "results.nnp")
    common = ["--model", nnp, "--train", data["train"], "--val", data["val"], "--quiet"]
    check = tmp_path / "check" / "check.csv"
    assert cli.main(["check", *common, "--samples", "6", "--output", str(check)]) == 0
    with open(check) as f:
        assert len(list(csv.DictReader(f))) == 6
    infl = tmp_path / "run" / "influence.csv"
    assert cli.main(["run", *common, "--no-recommend", "--output", str(infl)]) == 0
    out = tmp_path / "c" / "cleansed.csv"
    argv = ["cleanse", "--influence", str(infl), "--train", data["train"], "--output", str(out)]
    assert cli.main(argv + ["--remove", "3"]) == 0
    with open(data["train"]) as f:
        n = sum(1 for _ in f) - 1
    with open(out) as f:
        kept = list(csv.reader(f))[1:]
    assert len(kept) == n - 3
    folder = os.path.dirname(str(out))
    for cell in (c for row in kept for c in row if c.endswith(".csv")):
        assert os.path.exists(os.path.join(folder, cell))


@pytest.mark.parametrize("kind", ["onehot", "onehot_softmax_bce"])
def test_scratch_accuracy_reads_one_hot_classes(trained, tmp_path, kind):
    """One-hot class labels (y__0..y__2) are classes once the datasets are found one-hot;
    the network ``--retrain scratch`` trains again was loaded afresh, without them, and every
    accuracy was NaN ("the network has no class labels", exit 0). The oracle: the arg-max of
    the retrained network's outputs against the place of each row's 1, counted by hand."""
    from sgd_influence_plugin.evaluate import _definition_text, scratch_unit
    from sgd_influence_plugin.label_values import check_labels

    data, result = trained(kind)
    rows = _evaluate(data, result, tmp_path / "eval", "scratch")
    assert all(np.isfinite(float(r["test_accuracy"])) for r in rows)
    assert "no class labels" not in (tmp_path / "eval" / "summary.md").read_text()
    nnp = os.path.join(result, "results.nnp")
    m = load_model(model=nnp)
    train = load_dataset(data["train"], m.info.input_shapes)
    val = load_dataset(data["val"], m.info.input_shapes)
    check_labels(m.info, (train, val))
    item = (_definition_text({"model": nnp}), data["train"], data["val"],
            np.arange(0, train.size, 2), 1, "cpu")  # fmt: skip
    made, acc, _, _ = scratch_unit(item, None, val, train.header, train.rows, m.info)
    (tmp_path / "retrained.nnp").write_bytes(made)
    retrained = load_model(model=str(tmp_path / "retrained.nnp"))
    want = np.mean(retrained.predict(val.arrays).argmax(1) == val.arrays["y"].argmax(1))
    assert acc == pytest.approx(want) and want > 0.5
