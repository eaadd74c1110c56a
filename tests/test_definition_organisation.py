"""How a console definition is organised, checked against ``nnabla_cli train`` itself:
learning-rate multipliers other than 0 and 1, a second optimizer on the same network, and
networks, optimizer, executor and datasets with other names than the console's defaults.

Each result is a two-epoch MLP on 32 7x7 images, trained by ``nnabla_cli train``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import yaml

from support.fashion_mnist import make_png_dataset
from support.netdef import NetSpec, write_nntxt
from support.optimizer_defs import add_optimizer_copy, rename, set_multiplier
from support.results import fix_random_seeds, train_nntxt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = {"Main": "Trainer", "MainValidation": "Checker", "MainRuntime": "Predictor",
         "Optimizer": "Opt", "Executor": "Exec", "Training": "TrainSet", "Validation": "ValSet",
         "train_error": "m_a", "valid_error": "m_b"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_png_dataset(tmp_path_factory.mktemp("data"), 32, 16, size=7, seed=1)


def _train(folder, data, edit=None):
    spec = NetSpec(arch="mlp", input_shape=(1, 7, 7), train_csv=data["train"],
                   val_csv=data["val"], batch_size=16, lr=0.1, max_epoch=2,
                   iter_per_epoch=2)  # fmt: skip
    os.makedirs(folder, exist_ok=True)
    nntxt = write_nntxt(spec, os.path.join(folder, "net.nntxt"))
    if edit:
        edit(nntxt)
    fix_random_seeds(nntxt, 313)
    return train_nntxt(folder, nntxt)


def _run(result, data, out):
    proc = subprocess.run(
        [sys.executable, "-m", "sgd_influence_plugin.cli", "run", "--model",
         os.path.join(result, "results.nnp"), "--train", data["train"], "--val", data["val"],
         "--output", os.path.join(out, "influence.csv")],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(os.path.join(out, "influence_settings.yaml")) as f:
        return proc.stderr, yaml.safe_load(f), np.genfromtxt(
            os.path.join(out, "influence.csv"), delimiter=",", names=True, dtype=None,
            encoding="utf-8",
        )  # fmt: skip


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tiny):
    """(the result with the console's names and multipliers 1, what the tool gives on it)."""
    folder = str(tmp_path_factory.mktemp("plain"))
    result = _train(folder, tiny)
    return result, _run(result, tiny, folder + "/out")


def _params(result):
    with h5py.File(os.path.join(result, "parameters.h5"), "r") as h:
        return {k: np.array(h[k]) for k in ("Affine/affine/W", "Affine_2/affine/W")}


def test_a_multiplier_of_a_tenth_is_trained_at_the_full_rate_and_said(tmp_path, tiny, plain):
    result = _train(str(tmp_path / "r"), tiny, lambda p: set_multiplier(p, "Affine/", 0.1))
    # the oracle: nnabla_cli train ends at the same parameters as with multiplier 1
    for name, value in _params(plain[0]).items():
        assert np.array_equal(_params(result)[name], value), name
    stderr, settings, scores = _run(result, tiny, str(tmp_path / "out"))
    said = [w for w in settings["warnings"] if "Affine/affine/W x0.1" in w]
    assert len(said) == 1 and "full rate" in said[0], settings["warnings"]
    assert "Affine/affine/W x0.1" in stderr
    assert np.allclose(scores["influence"], plain[1][2]["influence"])


def test_a_second_optimizer_on_the_same_network_is_named(tmp_path, tiny):
    edit = lambda p: add_optimizer_copy(p, "HeadOptimizer", ["Affine_2/"])  # noqa: E731
    result = _train(str(tmp_path / "r"), tiny, edit)
    stderr, settings, _ = _run(result, tiny, str(tmp_path / "out"))
    said = [w for w in settings["warnings"] if "'HeadOptimizer'" in w]
    assert len(said) == 1 and "Affine_2/affine/W" in said[0], settings["warnings"]
    assert "Affine/affine/W" not in said[0].replace("Affine_2/affine/W", "")
    assert "HeadOptimizer" in stderr


@pytest.mark.parametrize("runtime_is_training", [False, True])
def test_other_names_give_the_same_scores(tmp_path, tiny, plain, runtime_is_training):
    edit = lambda p: rename(p, NAMES, runtime_is_training)  # noqa: E731
    result = _train(str(tmp_path / "r"), tiny, edit)
    stderr, settings, scores = _run(result, tiny, str(tmp_path / "out"))
    assert np.array_equal(scores["influence"], plain[1][2]["influence"])
    assert settings["warnings"] == plain[1][1]["warnings"]
    if runtime_is_training:  # no runtime network: no suggested labels, and it says why
        assert "needs a classifier" in stderr
