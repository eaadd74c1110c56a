"""The data-cleansing experiment (sgd-influence evaluate) on a small real result."""

import csv
import os

import numpy as np
import pytest

from sgd_influence_plugin import core, influence
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.evaluate import accuracy, evaluate
from sgd_influence_plugin.nnabla_adapter import load_model
from sgd_influence_plugin.settings import InfluenceSettings


def _noise_file(path, n, flipped):
    with open(path, "w") as f:
        f.write("index,clean_label,noisy_label,flipped\n")
        for i in range(n):
            f.write(f"{i},0,0,{int(i in flipped)}\n")


@pytest.mark.parametrize("retrain", ["last", "scratch"])
def test_evaluate_rows_precision_and_retrain_last_oracle(results, data28, tmp_path, retrain):
    nnp = os.path.join(results("mlp"), "results.nnp")
    flipped = set(range(0, 256, 7))
    noise = str(tmp_path / "noise.csv")
    _noise_file(noise, 256, flipped)
    out = tmp_path / "eval"
    settings = InfluenceSettings(trials=1)
    rows = evaluate(
        {"model": nnp},
        data28["train"],
        data28["val"],
        data28["val"],
        str(out),
        [0, 0.1],
        [4],
        retrain,
        settings,
        noise,
    )
    assert [(r["method"], r["n_removed"]) for r in rows] == [
        ("none", 0),
        ("harmful", 26),
        ("random", 26),
    ]
    for name in ("results.csv", "figure2.png", "summary.md", "settings.yaml"):
        assert (out / name).exists()
    # precision@n is the share of flipped labels among the n most harmful of seed 4's scores.
    m = load_model(model=nnp)
    tr = load_dataset(data28["train"], m.info.input_shapes)
    va = load_dataset(data28["val"], m.info.input_shapes)
    res = influence.compute_influence(m, tr.arrays, va.arrays, InfluenceSettings(seed=4, trials=1))
    top = np.argsort(res.scores, kind="stable")[:26]
    assert rows[1]["precision_at_n"] == pytest.approx(np.mean([i in flipped for i in top]))
    assert rows[1]["recall_at_n"] == pytest.approx(sum(i in flipped for i in top) / 37)
    if retrain == "last":
        # 'none' = one more SGD epoch over seed 4's order from the trained parameters.
        order = core.epoch_orders(256, 1, 4)[0]
        # At the first trial's rate (the automatic one), as the influence's own epoch.
        assert res.trials[0].lr < m.info.solver.lr
        core.sgd_epoch(m, tr.arrays, order, np.full(8, res.trials[0].lr, np.float32), 32)
        assert rows[0]["test_accuracy"] == pytest.approx(accuracy(m, va))
        assert rows[0]["test_loss"] == pytest.approx(core.mean_loss(m, va.arrays), rel=1e-5)
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    summary = (out / "summary.md").read_text()
    assert "| 10.2% | 26 | harmful |" in summary and "Flipped labels: 37 of 256" in summary


def test_evaluate_takes_the_datasets_the_definition_names(results, data28, tmp_path):
    """As run and check: without --train/--val, the optimizer's and the validation monitor's
    datasets of the definition; --weight-decay and --replay-step reach the settings."""
    import yaml

    from sgd_influence_plugin import cli

    folder = results("mlp")
    out = tmp_path / "ev"
    argv = ["evaluate", "--model", os.path.join(folder, "results.nnp"), "--test", data28["val"]]
    argv += ["--output-dir", str(out), "--ratios", "0.1", "--seeds", "0", "--trials", "1"]
    argv += ["--weight-decay", "0.001", "--replay-step", "exact", "--jobs", "1", "--quiet"]
    assert cli.main(argv) == 0
    facts = yaml.safe_load(open(out / "settings.yaml"))
    assert facts["train_csv"] == os.path.abspath(data28["train"])
    assert facts["val_csv"] == os.path.abspath(data28["val"])
    assert facts["settings"]["weight_decay"] == 0.001
    assert facts["settings"]["replay_step"] == "exact"


def _with_solver_decay(folder, decay, dest):
    """The result in ``folder`` as net.nntxt + parameters.h5 in ``dest``, its solver's
    weight_decay set to ``decay`` (the weights unchanged)."""
    import shutil

    dest.mkdir()
    text = open(os.path.join(folder, "net.nntxt")).read()
    assert text.count("weight_decay: ") == 1
    head, tail = text.split("weight_decay: ")
    text = head + f"weight_decay: {decay}" + tail[tail.index("\n") :]
    (dest / "net.nntxt").write_text(text)
    shutil.copy(os.path.join(folder, "parameters.h5"), dest / "parameters.h5")
    return {"config": str(dest / "net.nntxt"), "params": str(dest / "parameters.h5")}


def test_the_rate_check_uses_the_given_weight_decay_not_the_solvers(results, data7, tmp_path):
    """``--weight-decay 0`` replaces a solver's weight decay that no rate could replay
    (lr 0.1 * 20 >= 1): evaluate runs, as ``run`` and ``check`` do (it used to check the rate
    against the solver's value and refuse)."""
    files = _with_solver_decay(results("logreg"), 20, tmp_path / "model")
    rows = evaluate(
        files, data7["train"], data7["val"], data7["val"], str(tmp_path / "eval"), [0], [0],
        "last", InfluenceSettings(trials=1, lr=0.1, weight_decay=0.0, jobs=1),
    )  # fmt: skip
    assert [r["method"] for r in rows] == ["none"]
    assert load_model(**files).info.solver.weight_decay == 20  # the solver's, not used


def test_a_given_weight_decay_too_large_for_the_rate_is_refused_before_computing(
    results, data7, tmp_path, monkeypatch
):
    """``--weight-decay 20`` at lr 0.1 (the solver's weight decay is 0.01): refused before
    the influence is computed, naming the weight decay, and nothing is written."""
    from sgd_influence_plugin import evaluate as evaluate_mod
    from sgd_influence_plugin.errors import SettingsError

    def computed(*a, **k):
        raise AssertionError("the influence was computed before the refusal")

    monkeypatch.setattr(evaluate_mod, "compute_influence", computed)
    nnp = os.path.join(results("logreg"), "results.nnp")
    out = tmp_path / "eval"
    with pytest.raises(SettingsError, match=r"weight decay 20"):
        evaluate(
            {"model": nnp}, data7["train"], data7["val"], data7["val"], str(out), [0], [0],
            "last", InfluenceSettings(trials=1, lr=0.1, weight_decay=20.0, jobs=1),
        )  # fmt: skip
    assert not out.exists()
