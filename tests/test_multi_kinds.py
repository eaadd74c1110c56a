"""Vector targets (``y__0..y__2``: one-hot, soft or multi-label through KLMultinomial,
BinaryCrossEntropy or SigmoidCrossEntropy, a SquaredError on a vector), two inputs
concatenated in the network, and two loss variables on different target columns, each trained
by ``nnabla_cli train`` (``support/multi_netdef.py``).

Oracles: each step's gradient is the console trainer's own (nnabla's loader, backward with the
gradients ``nnabla_cli train`` gives its loss variables); the model's class is the one
``nnabla_cli forward`` gives, even where the executor lists a regression head's output first
(the class used to come from a softmax of the regression head's values, with exit 0).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from sgd_influence_plugin import core
from support import console_kinds as kinds
from support.oracles import console_gradient
from support.results import TABLE_SCRIPT, console_outputs, load_trained


@pytest.mark.parametrize("kind", ["onehot", "multilabel", "vector", "two_inputs", "two_losses"])
def test_each_step_takes_the_console_trainers_gradient(trained, kind):
    data, result = trained(kind)
    model, train, _ = load_trained(result, data)
    idx = np.arange(3, 19)
    want = console_gradient(os.path.join(result, "results.nnp"), train, idx)
    got = core.validation_gradient(model, {k: v[idx] for k, v in train.items()}, len(idx))
    assert set(got) == set(want)
    for name, g in got.items():
        np.testing.assert_allclose(g, want[name], rtol=1e-4, atol=1e-6 * np.abs(want[name]).max())


def _plugin(cwd, data):
    proc = subprocess.run(
        [sys.executable, TABLE_SCRIPT, "-t", data["train"], "-v", data["val"], "--report"],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    out = os.path.join(cwd, "sgd_influence")
    rows = kinds.read_rows(os.path.join(out, "influence.csv"))
    summary = open(os.path.join(out, "influence_summary.txt")).read()
    return [dict(zip(rows["header"], r)) for r in rows["rows"]], summary


def _console_classes(result, csv_path, tmp):
    """``nnabla_cli forward``'s ``y'`` columns (not ``y2'``): float (N, C)."""
    return console_outputs(result, csv_path, os.path.join(tmp, "forward"), prefix="y'__")


@pytest.mark.parametrize("kind", ["two_losses", "two_inputs"])
def test_the_models_class_is_the_classifiers_output(trained, tmp_path, kind):
    """two_losses: the executor outputs y2' (regression, 3 values) before y' (softmax, 3
    classes); two_inputs: x and x2 concatenated, the label column named ``t``."""
    data, result = trained(kind)
    rows, summary = _plugin(result, data)
    probs = _console_classes(result, data["train"], str(tmp_path))
    for r in rows:
        p = probs[int(r["datasource_index"])]
        assert int(r["suggested_label"]) == int(np.argmax(p)), (r, p)
        assert float(r["confidence"]) == pytest.approx(float(np.max(p)), abs=2e-3)
    assert "harmful share per class" in summary
    header = kinds.read_rows(data["train"])["header"]
    assert list(rows[0])[: len(header)] == header  # the rows' own cells, under their names


@pytest.mark.parametrize("kind", ["soft", "multilabel", "multilabel_sigmoid_ce", "vector"])
def test_a_vector_target_gets_scores_and_no_class(trained, kind):
    """Probability targets (label smoothing), several independent labels, a regression on a
    vector: no class; y__0 is never read as the label; scores only, and the summary says why
    there is no recommendation (one-hot classes: test_one_hot_labels.py)."""
    data, result = trained(kind)
    model, _, _ = load_trained(result, data)
    assert model.info.label_classes == {} and model.info.input_shapes["y"] == (3,)
    rows, summary = _plugin(result, data)
    assert all(r["suggested_label"] == "" and r["confidence"] == "" for r in rows)
    assert {r["action"] for r in rows} == {"keep"}
    assert np.all(np.isfinite([float(r["influence"]) for r in rows]))
    assert "no recommendation: it needs a classifier" in summary
    assert "per class" not in summary and "not centred by class" in summary
    if kind == "soft":  # the first row decided it
        assert f"{data['train']} row 1: y__0..y__2 = " in summary and "is not one-hot" in summary
