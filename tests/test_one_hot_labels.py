"""Class labels written one-hot: ``y__0..y__2`` into ``KLMultinomial(y, Softmax(z))`` or
``BinaryCrossEntropy(Softmax(z), y)``, each trained by ``nnabla_cli train`` (conftest
``KINDS``), and rows that are not one-hot.

These models used to get no class at all (no suggested label, plain scores, no
recommendation); nnabla refuses a one-hot target for SoftmaxCrossEntropy and
CategoricalCrossEntropy, and a definition that gives them one used to end in a traceback.

Oracles: the model's class and its probability are ``nnabla_cli forward``'s; the KL loss of a
one-hot row is -log of its class's probability in that forward; the class-centred scores are
the plain scores of the same trial centred by the class of the one-hot cells, counted here,
and follow exact leave-one-out re-runs of the epoch centred the same way.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from google.protobuf import text_format

from sgd_influence_plugin import cli, evaluate, influence, label_values
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.nnabla_adapter import load_model
from sgd_influence_plugin.settings import InfluenceSettings
from support import console_kinds as kinds
from support.oracles import centred_by_class, pearson_with_leave_one_out
from support.results import IMAGE_SCRIPT, TABLE_SCRIPT, console_outputs, load_trained


def _one_hot(path):
    """The one-hot cells y__0..y__2 of a CSV as float (N, 3), and each row's class."""
    table = kinds.read_rows(path)
    cols = [table["header"].index(f"y__{k}") for k in range(3)]
    values = np.array([[float(r[c]) for c in cols] for r in table["rows"]])
    return values, values.argmax(axis=1)


def _script_run(script, result, data, *extra):
    out = os.path.join(result, "sgd_influence")
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, script, "-t", data["train"], "-v", data["val"], "--report", *extra],
        cwd=result, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return out


def _rows(folder, stem="influence"):
    with open(os.path.join(folder, f"{stem}.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "kind, script", [("onehot", IMAGE_SCRIPT), ("onehot_softmax_bce", TABLE_SCRIPT)]
)
def test_one_hot_labels_get_the_models_class(trained, tmp_path, kind, script):
    """The model's class and confidence are nnabla_cli forward's; the one-hot cells are kept
    as written; the summary counts harmful rows per class, the scores are centred by class
    (each class's sum is 0) and the recommendation is checked."""
    data, result = trained(kind)
    out = _script_run(script, result, data)
    rows = _rows(out)
    probs = console_outputs(result, data["train"], str(tmp_path / "forward"), prefix="y'__")
    onehot, cls = _one_hot(data["train"])
    header = kinds.read_rows(data["train"])["header"]
    assert list(rows[0])[: len(header)] == header
    for r in rows:
        j = int(r["datasource_index"])
        assert int(r["suggested_label"]) == int(np.argmax(probs[j]))
        assert float(r["confidence"]) == pytest.approx(float(np.max(probs[j])), abs=2e-3)
        assert [float(r[f"y__{k}"]) for k in range(3)] == onehot[j].tolist()
        if kind == "onehot":  # KL of a one-hot row = -log p(class)
            assert float(r["loss"]) == pytest.approx(-np.log(probs[j][cls[j]]), rel=2e-3)
    scores = np.array([float(r["influence"]) for r in rows])
    given = cls[[int(r["datasource_index"]) for r in rows]]
    for c in range(3):
        assert abs(scores[given == c].sum()) <= 1e-9 * np.abs(scores).sum()
    summary = open(os.path.join(out, "influence_summary.txt")).read()
    for c in range(3):
        assert f"  {c}: " in summary and f"/ {int(np.sum(cls == c))} (" in summary
    assert "minus the same for an average sample of its class" in summary
    assert "it needs a classifier" not in summary and "RECOMMENDATION" in summary
    facts = yaml.safe_load(open(os.path.join(out, "influence_settings.yaml")))
    assert facts["used"]["target"] == "class-centred" and facts["label_classes"] == {"y": 3}
    assert os.path.exists(os.path.join(out, "influence_report.html"))


def test_class_centred_scores_centre_the_plain_ones_by_the_one_hot_class(trained, tmp_path):
    data, result = trained("onehot")
    model = load_model(model=os.path.join(result, "results.nnp"))
    assert model.info.label_classes == {} and model.info.one_hot == {"y": 3}
    train = load_dataset(data["train"], model.info.input_shapes)
    val = load_dataset(data["val"], model.info.input_shapes)
    label_values.check_labels(model.info, (train, val))
    assert model.info.label_classes == {"y": 3} and model.info.task == "classification"
    scores = {}
    for target in ("plain", "class-centred"):
        settings = InfluenceSettings(seed=4, trials=1, target=target)
        cache = str(tmp_path / target)
        scores[target] = influence.compute_influence(
            model, train.arrays, val.arrays, settings, cache_dir=cache
        ).scores
    _, cls = _one_hot(data["train"])
    want = centred_by_class(scores["plain"], cls)
    np.testing.assert_allclose(scores["class-centred"], want, rtol=1e-9, atol=1e-12)
    assert np.std(scores["plain"] - scores["class-centred"]) > 0
    probs = console_outputs(result, data["val"], str(tmp_path / "forward"), prefix="y'__")
    right = probs.argmax(axis=1) == _one_hot(data["val"])[1]
    assert evaluate.accuracy(model, val) == pytest.approx(float(np.mean(right)))


def test_one_hot_class_centred_scores_follow_exact_leave_one_out(trained, tmp_path):
    """Against N + 1 exact re-runs of the trial's epoch, centred by the one-hot class."""
    data, result = trained("onehot")
    model, train, val = load_trained(result, data)
    datasets = [load_dataset(data[k], model.info.input_shapes) for k in ("train", "val")]
    label_values.check_labels(model.info, datasets)
    runs = [("all", "exact"), ("final", "fd")]
    r = pearson_with_leave_one_out(model, train, val, tmp_path, runs, lr=0.02, batch_size=16)
    assert min(r.values()) > 0.99, r


def _copy_data(data, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    out = dict(data)
    for part in ("train", "val"):
        out[part] = str(folder / os.path.basename(data[part]))
        shutil.copy(data[part], out[part])
    return out


def _set_cells(path, row, values):
    table = kinds.read_rows(path)
    cols = [table["header"].index(f"y__{k}") for k in range(3)]
    for c, v in zip(cols, values):
        table["rows"][row][c] = v
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([table["header"]] + table["rows"])


@pytest.mark.parametrize(
    "part, cells", [("train", ("1", "1", "0")), ("train", ("0.5", "0.5", "0")),
                    ("val", ("0", "0", "0"))],
)  # fmt: skip
def test_a_row_that_is_not_one_hot_leaves_the_model_without_classes(
    trained, tmp_path, capsys, part, cells
):
    """Two 1s, a soft row or none: no class is claimed (no suggested label, plain scores), and
    the summary and the log name the row that decided it."""
    data, result = trained("onehot")
    data = _copy_data(data, tmp_path)
    _set_cells(data[part], 4, cells)
    out = tmp_path / "run" / "influence.csv"
    argv = ["run", "--model", os.path.join(result, "results.nnp"), "--train", data["train"],
            "--val", data["val"], "--output", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    rows = _rows(str(out.parent))
    assert all(r["suggested_label"] == "" and r["action"] == "keep" for r in rows)
    where = f"{data[part]} row 5: y__0..y__2 = {','.join(cells)} is not one-hot"
    summary = (out.parent / "influence_summary.txt").read_text()
    assert where in summary and "not centred by class" in summary
    assert where in capsys.readouterr().err


@pytest.mark.parametrize("written", ["{}", "{}.0 "])
def test_cleanse_writes_a_relabel_back_one_hot(trained, tmp_path, capsys, written):
    """A row set to relabel gets the one-hot vector of its suggested label in y__0..y__2,
    every other cell and row as it was; a training CSV whose one-hot label changed since the
    run is refused. Cells written ``1.0 `` are one-hot as nnabla's loader reads them (cleanse
    used to find no label column in them)."""
    data, result = trained("onehot")
    data = _copy_data(data, tmp_path)
    for j in range(len(kinds.read_rows(data["train"])["rows"])):
        cells = _one_hot(data["train"])[0][j]
        _set_cells(data["train"], j, [written.format(int(v)) for v in cells])
    out = tmp_path / "run" / "influence.csv"
    argv = ["run", "--model", os.path.join(result, "results.nnp"), "--train", data["train"],
            "--val", data["val"], "--no-recommend", "--output", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    _, cls = _one_hot(data["train"])
    with open(out, newline="") as f:
        table = list(csv.reader(f))
    h = table[0]
    moved = {}
    for row in table[1:]:
        j, sug = int(row[h.index("datasource_index")]), int(row[h.index("suggested_label")])
        if sug != cls[j] and len(moved) < 2:
            row[h.index("action")] = "relabel"
            moved[j] = sug
    assert len(moved) == 2
    with open(out, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(table)
    cleansed = tmp_path / "c" / "cleansed.csv"
    argv = ["cleanse", "--influence", str(out), "--train", data["train"], "--output",
            str(cleansed)]  # fmt: skip
    assert cli.main(argv) == 0
    before, after = kinds.read_rows(data["train"]), kinds.read_rows(str(cleansed))
    assert after["header"] == before["header"] and len(after["rows"]) == len(before["rows"])
    cols = [before["header"].index(f"y__{k}") for k in range(3)]
    for j, (a, b) in enumerate(zip(after["rows"], before["rows"])):
        want = list(b)
        if j in moved:
            for k, c in enumerate(cols):
                want[c] = "1" if k == moved[j] else "0"
        assert a == want, j
    j = next(iter(moved))
    _set_cells(data["train"], j, ["1" if k == moved[j] else "0" for k in range(3)])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"datasource_index {j} differs from" in err and "the labels changed" in err


def test_label_names_name_one_hot_classes(trained, tmp_path, capsys):
    data, result = trained("onehot")
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nbird\n")
    out = tmp_path / "run" / "influence.csv"
    argv = ["run", "--model", os.path.join(result, "results.nnp"), "--train", data["train"],
            "--val", data["val"], "--no-recommend", "--output", str(out), "--quiet",
            "--label-names", str(names)]  # fmt: skip
    assert cli.main(argv) == 0
    summary = (out.parent / "influence_summary.txt").read_text()
    assert "  cat (0): " in summary and "  bird (2): " in summary
    names.write_text("cat\ndog\nbird\nfish\n")
    assert cli.main(argv[:-4] + [str(tmp_path / "run2.csv"), "--quiet", "--label-names",
                                 str(names)]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert "4 names but the network has 3 classes" in err[-1]


@pytest.mark.parametrize("loss", ["SoftmaxCrossEntropy", "CategoricalCrossEntropy"])
def test_a_one_hot_target_into_a_class_index_loss_is_refused_in_one_line(
    trained, tmp_path, capsys, loss
):
    """nnabla takes a class index only (``label_shape[axis] == 1``); such a definition used to
    stop with nnabla's traceback when the network was first built."""
    from nnabla.utils import nnabla_pb2

    data, result = trained("onehot")
    proto = nnabla_pb2.NNablaProtoBuf()
    text_format.Merge(open(os.path.join(result, "net.nntxt")).read(), proto)
    for net in proto.network:
        for f in net.function:
            if f.type == "KLMultinomial":  # (y, Softmax) -> loss(Softmax, y)
                f.type = loss
                f.input[0], f.input[1] = f.input[1], f.input[0]
                f.ClearField("kl_multinomial_param")
    nntxt = tmp_path / "net.nntxt"
    nntxt.write_text(text_format.MessageToString(proto))
    argv = ["run", "--config", str(nntxt), "--params", os.path.join(result, "parameters.h5"),
            "--train", data["train"], "--val", data["val"], "--output",
            str(tmp_path / "out" / "influence.csv")]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{loss} '" in err[0] and "target 'y' has 3 values" in err[0]
    assert not (tmp_path / "out").exists()
