"""Every kind of result the console trains runs end to end through the entry scripts.

Each fixture is a real training result made here by ``nnabla_cli train`` from a console-style
definition (``support/netdef.py``, data from ``support/console_kinds.py``): a table with raw
features and the label column first, a binary classifier (Sigmoid + BinaryCrossEntropy), a
regression (SquaredError, bare ``x,y`` header), per-sample CSV inputs named with Windows
backslash paths, colour images through a DepthwiseConvolution (no double backward in nnabla),
an Elman RNN (the console's RecurrentInput, Delay and RecurrentOutput layers), a text
classifier (word indices through Embed and an LSTM),
and weights saved by nnabla as ``.protobuf`` or in the oldest nnp layout
(``network.prototxt`` + ``parameter.protobuf``). Each runs with ``--report`` through an entry
script; the outputs are checked against the training CSV itself and, for the model's class,
against ``nnabla_cli forward`` (the console's own evaluation).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import yaml

from support import console_kinds as kinds
from support.results import IMAGE_SCRIPT, TABLE_SCRIPT, console_outputs
from support.user_files import one_line_error


def _plugin(script, cwd, *args):
    proc = subprocess.run(
        [sys.executable, script, *args, "--report"], cwd=cwd, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return os.path.join(cwd, "sgd_influence")


def _model_outputs(result, csv_path, tmp):
    """``nnabla_cli forward`` over ``csv_path``: the model's outputs, float (N, K)."""
    return console_outputs(result, csv_path, os.path.join(tmp, "forward"))


def _check_influence_csv(out, train_csv):
    """One row per training row, each repeating that row's own cells; finite scores."""
    got = kinds.read_rows(os.path.join(out, "influence.csv"))
    train = kinds.read_rows(train_csv)
    header = got["header"]
    kept = [h for h in train["header"] if h in header]
    rows = [dict(zip(header, r)) for r in got["rows"]]
    index = [int(r["datasource_index"]) for r in rows]
    assert sorted(index) == list(range(len(train["rows"])))
    for r in rows:
        own = dict(zip(train["header"], train["rows"][int(r["datasource_index"])]))
        assert all(r[h] == own[h] for h in kept if h != "x:image")
    scores = np.array([float(r["influence"]) for r in rows])
    assert np.all(np.isfinite(scores)) and np.all(np.diff(scores) >= 0)  # most harmful first
    assert os.path.isfile(os.path.join(out, "influence_report.html"))
    return header, rows, kept


def test_table_keeps_its_own_header_and_every_feature(trained):
    data, result = trained("table")
    out = _plugin(TABLE_SCRIPT, result, "-t", data["train"], "-v", data["val"])
    header, rows, kept = _check_influence_csv(out, data["train"])
    train_header = kinds.read_rows(data["train"])["header"]
    assert kept == train_header  # y:Survived and x__0:Pclass ... under their own names
    assert "x:image" not in header and "original" not in header
    report = open(os.path.join(out, "influence_report.html"), encoding="utf-8").read()
    assert "Pclass=" in report and "Fare=" in report  # a row's values where there is no image
    summary = open(os.path.join(out, "influence_summary.txt")).read()
    assert "harmful share per class" in summary
    # raw features (Fare in pounds beside Sex in 0/1): the user is told the scores follow Fare
    assert "the features of x differ" in summary and "(x__3: standard deviation" in summary
    top = summary.split("top 10 harmful (datasource_index, label, influence, values):")[1]
    first = top.strip().splitlines()[0]  # the most harmful row, read without the training CSV
    row = rows[0]
    assert first.startswith(f"{row['datasource_index']}, ") and f"Fare={row['x__3:Fare']}" in first


def test_binary_sigmoid_classifier_gets_the_models_class(trained, tmp_path):
    data, result = trained("binary")
    out = _plugin(TABLE_SCRIPT, result, "-t", data["train"], "-v", data["val"])
    _, rows, _ = _check_influence_csv(out, data["train"])
    p1 = _model_outputs(result, data["train"], str(tmp_path))[:, 0]  # the sigmoid's output
    for r in rows:
        j = int(r["datasource_index"])
        want = int(p1[j] > 0.5)
        if abs(p1[j] - 0.5) > 1e-3:  # the console's own forward pass decides the class
            assert int(r["suggested_label"]) == want, (j, p1[j], r)
            assert float(r["confidence"]) == pytest.approx(max(p1[j], 1 - p1[j]), abs=2e-3)
    summary = open(os.path.join(out, "influence_summary.txt")).read()
    assert "no recommendation" not in summary  # 200 validation rows: the check ran


def test_regression_runs_and_summarises_residuals(trained):
    data, result = trained("regression")
    out = _plugin(TABLE_SCRIPT, result, "-t", data["train"], "-v", data["val"])
    header, rows, kept = _check_influence_csv(out, data["train"])
    assert header[:2] == ["y", "x"]  # the target first, under its bare name
    assert all(r["suggested_label"] == "" and r["confidence"] == "" for r in rows)
    assert {r["action"] for r in rows} == {"keep"}  # 200 validation rows, still no advice:
    summary = open(os.path.join(out, "influence_summary.txt")).read()  # (recommend.py)
    assert "residual" in summary and "per class" not in summary
    assert "no recommendation: it needs a classifier" in summary
    # A regression has no class to centre by: the scores are plain, and every record says so
    # (they said "minus the same for an average sample of its class", the default's words).
    assert "average sample of its class" not in summary and "not centred by class" in summary
    report = open(os.path.join(out, "influence_report.html"), encoding="utf-8").read()
    assert "average sample of its class" not in report and "not centred by class" in report
    facts = yaml.safe_load(open(os.path.join(out, "influence_settings.yaml")))
    assert facts["used"]["target"] == "plain" and "average sample" not in facts["sign"]


def test_a_validation_target_beyond_the_loss_range_is_named_by_row(trained, tmp_path, capsys):
    """y = 1e30 squares past float32: the refusal named the parameters, not the row."""
    from sgd_influence_plugin import cli

    data, result = trained("regression")
    lines = open(data["val"]).read().splitlines()
    lines[3] = lines[3].split(",")[0] + ",1e30"
    val = tmp_path / "val.csv"
    val.write_text("\n".join(lines) + "\n")
    argv = ["run", "--model", os.path.join(result, "results.nnp"), "--train", data["train"]]
    argv += ["--val", str(val), "--output", str(tmp_path / "o" / "i.csv"), "--quiet"]
    assert cli.main(argv) == 2
    one_line_error(capsys, r"val\.csv row 3: the loss at the trained parameters is inf")
    assert not (tmp_path / "o").exists()


def test_per_sample_csv_inputs_with_backslash_paths(trained):
    data, result = trained("series")
    assert "\\" in open(data["train"]).read()  # the console's Windows paths
    out = _plugin(TABLE_SCRIPT, result, "-t", data["train"], "-v", data["val"])
    _, rows, _ = _check_influence_csv(out, data["train"])
    for r in rows[:5]:  # the data file is shown where it is, and opens from the output
        assert os.path.isfile(os.path.join(out, r["x:image"]))
    cleansed = kinds.read_rows(os.path.join(out, "influence_cleansed.csv"))
    assert all(os.path.isfile(os.path.join(out, row[0])) for row in cleansed["rows"])


def test_colour_images_through_a_depthwise_convolution(trained):
    data, result = trained("colour")
    out = _plugin(IMAGE_SCRIPT, result, "-t", data["train"], "-v", data["val"])
    _check_influence_csv(out, data["train"])
    settings = open(os.path.join(out, "influence_settings.yaml")).read()
    assert "DepthwiseConvolution" in open(os.path.join(result, "net.nntxt")).read()
    assert "lambda_max" in settings  # the curvature was measured, with first derivatives


def test_a_recurrent_network_through_the_table_script(trained, tmp_path):
    """An Elman RNN (RecurrentInput, Delay, RecurrentOutput; Sigmoid + BinaryCrossEntropy) over
    per-sample CSVs: it used to be refused ("generator inputs ... random per step"); the
    model's class now comes from the unrolled network, as nnabla_cli forward computes it."""
    data, result = trained("rnn_binary")
    assert "RecurrentInput" in open(os.path.join(result, "net.nntxt")).read()
    out = _plugin(TABLE_SCRIPT, result, "-t", data["train"], "-v", data["val"])
    _, rows, _ = _check_influence_csv(out, data["train"])
    p1 = _model_outputs(result, data["train"], str(tmp_path))[:, 0]
    for r in rows:
        j = int(r["datasource_index"])
        if abs(p1[j] - 0.5) > 1e-3:
            assert int(r["suggested_label"]) == int(p1[j] > 0.5), (j, p1[j], r)
    settings = open(os.path.join(out, "influence_settings.yaml")).read()
    assert "Main: loops unrolled by nnabla (RecurrentInput x 12)" in settings
    assert "Affine/affine/W: taken by 12 functions" in settings


def test_a_text_classifier_through_the_table_script(trained, tmp_path):
    """Word indices (``x__0..x__11``; the text itself in a ``# x:text`` column) through an Embed
    layer and an LSTM built in a RecurrentInput loop: the rows repeat their indices, the
    model's class is the unrolled network's, as nnabla_cli forward computes it, and the
    indices are checked against the Embed's dictionary and never called unscaled features.
    The text column, which feeds no variable, is repeated so a row reads as words."""
    import yaml

    data, result = trained("text_lstm")
    out = _plugin(TABLE_SCRIPT, result, "-t", data["train"], "-v", data["val"])
    _, rows, kept = _check_influence_csv(out, data["train"])
    assert kept == ["# x:text", "y:label"] + [f"x__{k}" for k in range(12)]
    probs = _model_outputs(result, data["train"], str(tmp_path))
    for r in rows:
        p = np.sort(probs[int(r["datasource_index"])])
        if p[-1] - p[-2] > 1e-3:
            assert int(r["suggested_label"]) == int(np.argmax(probs[int(r["datasource_index"])]))
    settings = yaml.safe_load(open(os.path.join(out, "influence_settings.yaml")))
    assert settings["word_indices"] == {"x": {"layer": "Embed", "words": 50}}
    assert "Main: loops unrolled by nnabla (RecurrentInput x 12)" in settings["network_changes"]
    assert not any("differ" in w for w in settings["warnings"])
    summary = open(os.path.join(out, "influence_summary.txt")).read()
    assert "harmful share per class" in summary and "x__0=" in summary
    words = rows[0]["# x:text"]
    assert words.startswith("w") and words in summary  # the most harmful row, as words


def _save_protobuf(result, path):
    """nnabla's own save writes the result's weights as ``.protobuf`` (in a child process:
    it fills nnabla's global parameter scope)."""
    code = (
        "import sys, nnabla as nn; nn.load_parameters(sys.argv[1]); nn.save_parameters(sys.argv[2])"
    )
    subprocess.run(
        [sys.executable, "-c", code, os.path.join(result, "results.nnp"), path],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def test_weights_as_protobuf_and_the_oldest_nnp_layout(trained, tmp_path):
    data, result = trained("table")
    reference = _plugin(TABLE_SCRIPT, result, "-t", data["train"], "-v", data["val"], "-o",
                        "sgd_influence/ref.csv")  # fmt: skip
    pb = str(tmp_path / "parameter.protobuf")
    _save_protobuf(result, pb)
    legacy = str(tmp_path / "result.nnp")  # NNC cloud, 2018: network.prototxt + .protobuf
    with zipfile.ZipFile(legacy, "w") as zf:
        zf.writestr("nnp_version.txt", "0.1\n")
        zf.write(os.path.join(result, "net.nntxt"), "network.prototxt")
        zf.write(pb, "parameter.protobuf")
    runs = {
        "params": ("-c", os.path.join(result, "net.nntxt"), "-p", pb),
        "legacy": ("-m", legacy),
    }
    want = kinds.read_rows(os.path.join(reference, "ref.csv"))
    for name, model in runs.items():
        out = _plugin(TABLE_SCRIPT, result, *model, "-t", data["train"], "-v", data["val"],
                      "-o", f"sgd_influence/{name}.csv")  # fmt: skip
        got = kinds.read_rows(os.path.join(out, f"{name}.csv"))
        assert got == want, name  # the same weights, whatever file held them


def test_a_project_file_is_named_as_one(trained, tmp_path):
    data, result = trained("table")
    project = tmp_path / "titanic.sdcproj"
    project.write_text("[Project]\n")
    proc = subprocess.run(
        [sys.executable, TABLE_SCRIPT, "-m", str(project), "-t", data["train"], "-v",
         data["val"]], cwd=str(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is a console project file" in proc.stderr and "titanic.files" in proc.stderr


def test_exact_replay_without_second_derivatives_is_refused_in_one_line(trained):
    data, result = trained("colour")
    proc = subprocess.run(
        [sys.executable, IMAGE_SCRIPT, "-t", data["train"], "-v", data["val"], "--replay_step",
         "exact", "-o", "sgd_influence/exact.csv"], cwd=result, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "depthwise_convolution" in last and "--replay_step fd" in last
    assert re.search(r"layer '[^']+' \(DepthwiseConvolution\) has no second derivative", last)
    assert not os.path.exists(os.path.join(result, "sgd_influence", "exact.csv"))


def test_the_same_refusal_names_the_command_lines_spelling(trained, tmp_path, capsys):
    """The message names the option as the interface that called spells it: the console's
    dialog ``--replay_step`` (above), the command line ``--replay-step``."""
    from sgd_influence_plugin import cli

    data, result = trained("colour")
    out = str(tmp_path / "o" / "exact.csv")
    argv = ["run", "--model", os.path.join(result, "results.nnp"), "--train", data["train"],
            "--val", data["val"], "--replay-step", "exact", "--output", out, "--quiet"]  # fmt: skip
    assert cli.main(argv) == 2
    line = one_line_error(capsys, r"depthwise_convolution")
    assert "--replay-step fd" in line and "--replay_step" not in line


def test_a_huge_training_feature_is_blamed_not_the_rate(trained, tmp_path, capsys):
    """A training row with Fare = 1e30: the replay cannot be stable at any rate, and the
    refusal used to ask for a smaller --lr; it now names the feature whose spread is the
    cause, in the same one line."""
    from sgd_influence_plugin import cli

    data, result = trained("table")
    lines = open(data["train"]).read().splitlines()
    header = lines[0].split(",")
    cells = lines[5].split(",")
    cells[header.index("x__3:Fare")] = "1e30"
    lines[5] = ",".join(cells)
    train = str(tmp_path / "train_huge.csv")  # a table: no file cells to resolve
    with open(train, "w") as f:
        f.write("\n".join(lines) + "\n")
    argv = ["run", "--model", os.path.join(result, "results.nnp"), "--train", train]
    argv += ["--val", data["val"], "--output", str(tmp_path / "o" / "i.csv"), "--quiet"]
    assert cli.main(argv) == 2
    one_line_error(capsys, r"is unstable at lr=.* More likely: the features of x differ .*"
                   r"\(x__3: standard deviation")  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_one_validation_row_carrying_most_of_the_loss_is_named(trained, tmp_path):
    """A regression validation row far off (y = 1000 where the others are near 0): its
    squared error is most of the validation loss, so the scores measure the influence on it.
    The run goes on, and the log, the summary and settings.yaml name the row."""
    import yaml

    from sgd_influence_plugin.runner import RunRequest, run

    data, result = trained("regression")
    lines = open(data["val"]).read().splitlines()
    lines[3] = lines[3].split(",")[0] + ",1000"
    val = tmp_path / "val.csv"
    val.write_text("\n".join(lines) + "\n")
    said = []
    req = RunRequest(output=str(tmp_path / "o" / "i.csv"),
                     model=os.path.join(result, "results.nnp"), train=data["train"],
                     val=str(val))  # fmt: skip
    paths, _ = run(req, log=said.append)
    want = f"{val} row 3 carries"
    assert any(want in m and m.startswith("warning: ") for m in said), said
    assert want in open(paths.summary).read()
    warnings = yaml.safe_load(open(paths.settings))["warnings"]
    assert any(w.startswith(want) and "leave it out" in w for w in warnings), warnings
    # the validation CSV as given: no row carries half of the loss, no such warning
    said.clear()
    run(RunRequest(output=str(tmp_path / "p" / "i.csv"),
                   model=os.path.join(result, "results.nnp"), train=data["train"],
                   val=data["val"]), log=said.append)  # fmt: skip
    assert not any("of the validation loss" in m for m in said)
