"""``sgd-influence check``: its correlations against an exact leave-one-out computed here, its
options and inputs refused with one line."""

import csv
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from scipy import stats

from sgd_influence_plugin import cli, core, resolved, trials
from sgd_influence_plugin.check import CheckRequest, run_check
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.errors import SettingsError
from sgd_influence_plugin.fidelity import check_fidelity, pick_samples, verdict_for
from sgd_influence_plugin.nnabla_adapter import load_model
from sgd_influence_plugin.settings import InfluenceSettings
from support.user_files import one_line_error, tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "plugins", "_Post_Process", "_XAI", "_Image", "SGD_Influence_Check.py")
CLI = os.path.join(os.path.dirname(sys.executable), "sgd-influence")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_check_matches_an_independent_leave_one_out(results, data28, tmp_path):
    """The check's figures against the trial's scores and epoch re-run here, sample by sample."""
    model = load_model(model=os.path.join(results("smooth"), "results.nnp"))
    train = load_dataset(data28["train"], model.info.input_shapes).arrays
    val = load_dataset(data28["val"], model.info.input_shapes).arrays
    theta0 = model.get_params()
    settings = InfluenceSettings(lr="solver", seed=3, trials=1)
    res = check_fidelity(model, train, val, settings, samples=12)
    for a, b in zip(model.get_params(), theta0):  # the model is left as it was
        np.testing.assert_array_equal(a, b)

    # The same trial through the API, into a cache the test keeps; the check compares the
    # replay's own estimate (target plain), not the default class-centred scores.
    settings = dataclasses.replace(settings, target="plain")
    run = resolved.resolve(model, settings)
    resolved.choose_lr(model, train, settings, run)
    cache = str(tmp_path / "cache")
    trial = trials.run_trial(model, train, val, settings, run, cache, 3)
    order, lrs = np.load(os.path.join(cache, "order.npy")), np.load(os.path.join(cache, "lr.npy"))
    assert res.lr == pytest.approx(0.05) and np.allclose(lrs, 0.05)
    np.testing.assert_allclose(res.estimate, trial.scores[res.index], rtol=1e-5, atol=1e-9)
    ranked = np.argsort(trial.scores)
    assert res.group == ["harmful"] * 4 + ["helpful"] * 4 + ["random"] * 4
    assert set(res.index[:4]) == set(ranked[:4]) and set(res.index[4:8]) == set(ranked[-4:])
    assert len(set(res.index.tolist())) == 12

    n = len(order)

    def val_loss(weight):
        model.set_params(theta0)
        core.sgd_epoch(model, train, order, lrs, 32, 0.0, sample_weight=weight)
        return core.mean_loss(model, val, 256)

    full = val_loss(np.ones(n, np.float32))
    loo = []
    for j in res.index:
        w = np.ones(n, np.float32)
        w[j] = 0
        loo.append(val_loss(w) - full)
    model.set_params(theta0)
    loo = np.array(loo)
    np.testing.assert_allclose(res.actual, loo, rtol=1e-4, atol=1e-7)
    pearson = stats.pearsonr(trial.scores[res.index], loo)[0]
    spearman = stats.spearmanr(trial.scores[res.index], loo)[0]
    print(f"check: Pearson {res.pearson:.4f} Spearman {res.spearman:.4f} ({res.seconds:.1f}s)")
    assert res.pearson == pytest.approx(pearson, abs=1e-4)
    assert res.spearman == pytest.approx(spearman, abs=1e-4)
    assert res.pearson >= 0.9 and res.spearman >= 0.7
    assert res.verdict == "good" and res.seconds > 0


def test_verdicts_and_sample_picking():
    assert [verdict_for(r) for r in (0.95, 0.7, 0.69, 0.3, 0.29, -0.5)] == [
        "good",
        "good",
        "weak",
        "weak",
        "poor",
        "poor",
    ]
    scores = np.array([0.5, -3.0, 2.0, -1.0, 0.0, 4.0, -2.0, 1.0, 3.0, -0.5])
    idx, groups = pick_samples(scores, 7, seed=0)
    assert list(idx[:2]) == [1, 6] and list(idx[2:4]) == [5, 8]
    assert groups == ["harmful"] * 2 + ["helpful"] * 2 + ["random"] * 3
    assert len(set(idx.tolist())) == 7
    idx, groups = pick_samples(scores, 20, seed=0)
    assert sorted(idx.tolist()) == list(range(10)) and set(groups) == {"all"}


def _check_outputs(out):
    rows = _rows(out)
    assert list(rows[0]) == ["datasource_index", "group", "estimate", "actual", "original"]
    est = [float(r["estimate"]) for r in rows]
    assert est == sorted(est) and all(np.isfinite(float(r["actual"])) for r in rows)
    stem = os.path.splitext(str(out))[0]
    facts = yaml.safe_load(open(stem + "_settings.yaml"))
    assert facts["verdict"] in ("good", "weak", "poor") and facts["samples"] == len(rows)
    assert -1 <= facts["spearman"] <= 1 and facts["seconds"] > 0
    with open(stem + "_plot.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return rows, facts


def test_cli_check_in_a_result_folder(results, data28, tmp_path):
    folder = results("smooth")
    out = tmp_path / "out" / "check.csv"
    argv = [CLI, "check", "--model", os.path.join(folder, "results.nnp"), "--train"]
    argv += [data28["train"], "--val", data28["val"], "--output", str(out), "--samples", "6"]
    proc = subprocess.run(argv + ["--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows, facts = _check_outputs(out)
    assert len(rows) == 6 and proc.stdout.startswith(facts["verdict"] + ": Spearman")
    assert facts["used"]["lr"] > 0 and facts["requested"]["lr"] == "auto"
    # a second run replaces its own files
    proc = subprocess.run(argv + ["--quiet", "--seed", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_plugin_check_script_with_no_arguments(results, tmp_path):
    """The console runs the script in the result folder; the datasets come from net.nntxt."""
    import shutil

    folder = tmp_path / "result"
    shutil.copytree(results("smooth"), folder)
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--samples", "6"], cwd=folder, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    out = folder / "sgd_influence" / "check.csv"
    rows, _ = _check_outputs(out)
    assert len(rows) == 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["--samples", "2"], "--samples 2: check at least 3 samples"),
        (["--samples", "100000"], "has only 256 rows"),
        (["--lr", "-1"], "learning rate"),
        (["--output", "check.txt"], "must be a file name ending in .csv"),
        (["--output", "TRAIN"], "refusing to overwrite the input"),
    ],
)
def test_cli_check_bad_options_exit_2(results, data28, tmp_path, args, message):
    args = [data28["train"] if a == "TRAIN" else a for a in args]
    out = ["--output", str(tmp_path / "c.csv")] if "--output" not in args else []
    argv = [CLI, "check", "--model", os.path.join(results("smooth"), "results.nnp")]
    argv += ["--train", data28["train"], "--val", data28["val"], "--quiet", *out, *args]
    before = open(data28["train"]).read()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert [p for p in os.listdir(tmp_path) if not p.startswith(".")] == []
    assert open(data28["train"]).read() == before


def test_check_refuses_a_file_it_did_not_write(results, data28, tmp_path):
    out = tmp_path / "check_plot.png"
    out.write_bytes(b"mine")
    req = CheckRequest(
        output=str(tmp_path / "check.csv"),
        model=os.path.join(results("smooth"), "results.nnp"),
        train=data28["train"],
        val=data28["val"],
    )
    with pytest.raises(Exception, match="was not written by sgd-influence"):
        run_check(req)
    assert out.read_bytes() == b"mine" and sorted(os.listdir(tmp_path)) == ["check_plot.png"]


def test_check_fidelity_rejects_too_few_samples(results, data28):
    model = load_model(model=os.path.join(results("smooth"), "results.nnp"))
    train = load_dataset(data28["train"], model.info.input_shapes).arrays
    with pytest.raises(SettingsError, match="at least 3"):
        check_fidelity(model, train, train, InfluenceSettings(), samples=2)


def test_ctrl_c_exits_130_and_leaves_nothing(results, data28, tmp_path):
    import signal
    import time

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "o" / "check.csv"
    argv = [CLI, "check", "--model", os.path.join(results("mlp"), "results.nnp"), "--train"]
    argv += [data28["train"], "--val", data28["val"], "--output", str(out), "--epochs", "50"]
    proc = subprocess.Popen(
        argv + ["--quiet"], env=dict(os.environ, TMPDIR=str(tmp)), stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 60
    while not any(p.name.startswith("sgd_influence_check_") for p in tmp.iterdir()):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)  # inside the training phase now
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert list(tmp.iterdir()) == []
    assert not (tmp_path / "o").exists()


def test_check_on_two_rows_names_the_minimum(world, capsys):
    two = world["data"] / "two.csv"
    two.write_text("\n".join(open(world["train"]).read().splitlines()[:3]) + "\n")
    argv = ["check", "--model", world["model"], "--train", str(two), "--val", world["val"]]
    argv += ["--output", str(world["root"] / "out" / "check.csv"), "--quiet"]
    before = tree(world["root"])
    assert cli.main(argv) == 2
    one_line_error(capsys, r"two\.csv has only 2 row\(s\); the check .* at least 3 rows")
    assert tree(world["root"]) == before
