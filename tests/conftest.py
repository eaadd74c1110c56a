"""Shared fixtures: real PNG datasets and real training results made by ``nnabla_cli train``.

Images come from Debian's Fashion-MNIST package when it is installed (``make data``), and
otherwise from a small generated set of class-dependent patterns, so the suite runs anywhere.
Everything is built once per session under pytest's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from support import console_kinds as kinds
from support.fashion_mnist import make_png_dataset
from support.loops_netdef import LoopSpec
from support.multi_netdef import MultiSpec, write_multi
from support.netdef import NetSpec
from support.results import IMAGE_SCRIPT, TABLE_SCRIPT, train_on, train_result
from support.text_netdef import TextSpec

#: Context of the models the tests load: SGDI_TEST_CONTEXT=cudnn[:N] (scripts/gpu_check.sh);
#: default cpu. CLI subprocesses keep their own --context (cpu).
TEST_CONTEXT = os.environ.get("SGDI_TEST_CONTEXT", "cpu")


def pytest_configure(config):
    """With SGDI_TEST_CONTEXT, every ``load_model`` call without a context uses that one."""
    if TEST_CONTEXT == "cpu":
        return
    import inspect

    from sgd_influence_plugin import nnabla_adapter
    from sgd_influence_plugin.errors import ContextError

    try:
        nnabla_adapter.make_context(TEST_CONTEXT)
    except ContextError as e:
        raise pytest.UsageError(f"SGDI_TEST_CONTEXT={TEST_CONTEXT}: {e}") from e
    fn = nnabla_adapter.load_model
    if "context" in (fn.__kwdefaults__ or {}):
        fn.__kwdefaults__ = {**fn.__kwdefaults__, "context": TEST_CONTEXT}
    else:
        params = inspect.signature(fn).parameters.values()
        positional = [p.name for p in params if p.default is not inspect.Parameter.empty]
        positional = positional[len(positional) - len(fn.__defaults__) :]
        defaults = list(fn.__defaults__)
        defaults[positional.index("context")] = TEST_CONTEXT
        fn.__defaults__ = tuple(defaults)


@pytest.fixture(scope="session")
def data28(tmp_path_factory):
    """256 training and 64 validation 28x28 images."""
    return make_png_dataset(tmp_path_factory.mktemp("data28"), 256, 64)


@pytest.fixture(scope="session")
def data7(tmp_path_factory):
    """50 training and 30 validation 7x7 images (tiny models with dense Hessians)."""
    return make_png_dataset(tmp_path_factory.mktemp("data7"), 50, 30, size=7, seed=1)


@pytest.fixture(scope="session")
def results(tmp_path_factory, data28, data7):
    """Factory: ``results(name)`` -> a trained result folder (cached per session)."""
    specs = {
        "mlp": (data28, NetSpec(arch="mlp", batch_size=32, lr=0.1, max_epoch=2)),
        "cnn_bn": (
            data28,
            NetSpec(arch="cnn_bn", batch_size=32, lr=0.05, max_epoch=2, dropout=0.3),
        ),
        "smooth": (data28, NetSpec(arch="smooth_cnn", batch_size=32, lr=0.05, max_epoch=3)),
        "logreg": (
            data7,
            NetSpec(arch="logreg", batch_size=16, lr=0.1, max_epoch=3, weight_decay=0.01),
        ),
        "adam": (data28, NetSpec(arch="mlp", batch_size=32, lr=0.001, solver="Adam", max_epoch=1)),
        "momentum": (
            data7,
            NetSpec(arch="logreg", batch_size=16, lr=0.02, solver="Momentum", max_epoch=1),
        ),
    }
    made = {}

    def get(name):
        if name not in made:
            data, spec = specs[name]
            made[name] = train_result(tmp_path_factory.mktemp("result_" + name), data, spec)
        return made[name]

    return get


#: kind -> (dataset writer and its sizes, the network, the entry script)
KINDS = {
    "table": (
        lambda d: kinds.write_table(d, 160, 60, seed=1),
        NetSpec(arch="mlp", n_classes=3, head="softmax_cce", solver="Adam", lr=0.01,
                batch_size=16, max_epoch=4),
        TABLE_SCRIPT,
    ),
    "binary": (
        lambda d: kinds.write_table(d, 240, 200, seed=2, binary=True),
        NetSpec(arch="mlp", head="sigmoid_bce", solver="Adam", lr=0.01, batch_size=16,
                max_epoch=4),
        TABLE_SCRIPT,
    ),
    "regression": (
        lambda d: kinds.write_regression(d, 120, 200, seed=3),
        NetSpec(arch="mlp", head="squared", solver="Adam", lr=0.01, batch_size=8, max_epoch=6),
        TABLE_SCRIPT,
    ),
    "series": (
        lambda d: kinds.write_series(d, 120, 40, seed=4),
        NetSpec(arch="mlp", n_classes=2, head="softmax_ce", lr=0.1, batch_size=16, max_epoch=4),
        TABLE_SCRIPT,
    ),
    "colour": (
        lambda d: kinds.write_colour(d, 96, 32, seed=5),
        NetSpec(arch="dwcnn", n_classes=2, head="softmax_cce", solver="Adam", lr=0.01,
                batch_size=16, max_epoch=3),
        IMAGE_SCRIPT,
    ),
    # Elman RNNs (RecurrentInput, Delay, RecurrentOutput) over 12-step per-sample CSVs
    "rnn": (
        lambda d: kinds.write_series(d, 120, 40, length=12, seed=4),
        LoopSpec(head="softmax_ce", lr=0.1, batch_size=16, max_epoch=4),
        TABLE_SCRIPT,
    ),
    "rnn_binary": (
        lambda d: kinds.write_series(d, 120, 40, length=12, seed=6),
        LoopSpec(head="sigmoid_bce", solver="Adam", lr=0.02, batch_size=16, max_epoch=4),
        TABLE_SCRIPT,
    ),
    # text: 12 word indices (x__0..x__11) through Embed, then a mean or an LSTM
    "text": (
        lambda d: kinds.write_text(d, 240, 90, seed=7),
        TextSpec(head="mean", lr=0.1, batch_size=16, max_epoch=4),
        TABLE_SCRIPT,
    ),
    "text_lstm": (
        lambda d: kinds.write_text(d, 240, 90, seed=7),
        TextSpec(head="lstm", solver="Adam", lr=0.02, batch_size=16, max_epoch=4),
        TABLE_SCRIPT,
    ),
    # vector targets y__0..y__2, two inputs, two losses (support/multi_netdef.py)
    "onehot": (
        lambda d: write_multi(d, 160, 80, "onehot", seed=3),
        MultiSpec(head="kl", solver="Adam", lr=0.02, batch_size=16, max_epoch=4),
        TABLE_SCRIPT,
    ),
    "onehot_softmax_bce": (  # the one-hot vector against the softmax, value by value
        lambda d: write_multi(d, 160, 80, "onehot", seed=3),
        MultiSpec(head="softmax_bce", solver="Adam", lr=0.02, batch_size=16, max_epoch=4),
        TABLE_SCRIPT,
    ),
    "soft": (  # probability targets (label smoothing): no classes
        lambda d: write_multi(d, 160, 80, "soft", seed=3),
        MultiSpec(head="kl", solver="Adam", lr=0.02, batch_size=16, max_epoch=4),
        TABLE_SCRIPT,
    ),
    "multilabel_sigmoid_ce": (
        lambda d: write_multi(d, 160, 80, "multilabel", seed=3),
        MultiSpec(head="sigmoid_ce", solver="Adam", lr=0.02, batch_size=16, max_epoch=4),
        TABLE_SCRIPT,
    ),
    "multilabel": (
        lambda d: write_multi(d, 160, 80, "multilabel", seed=3),
        MultiSpec(head="bce", solver="Adam", lr=0.02, batch_size=16, max_epoch=4),
        TABLE_SCRIPT,
    ),
    "vector": (
        lambda d: write_multi(d, 160, 80, "vector", seed=3),
        MultiSpec(head="squared", solver="Adam", lr=0.02, batch_size=16, max_epoch=4),
        TABLE_SCRIPT,
    ),
    "two_inputs": (
        lambda d: write_multi(d, 160, 80, "two_inputs", seed=3, label="t"),
        MultiSpec(head="ce", label="t", two_inputs=True, solver="Adam", lr=0.02,
                  batch_size=16, max_epoch=4),
        TABLE_SCRIPT,
    ),
    "two_losses": (  # the executor lists the regression head's y2' before the class's y'
        lambda d: write_multi(d, 160, 80, "two_losses", seed=3),
        MultiSpec(head="ce_squared", regression_first=True, solver="Adam", lr=0.02,
                  batch_size=16, max_epoch=4),
        TABLE_SCRIPT,
    ),
}  # fmt: skip


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Factory: ``trained(kind)`` -> (data dict, result folder), built once per session."""
    made = {}

    def get(kind):
        if kind not in made:
            write, spec, _ = KINDS[kind]
            base = tmp_path_factory.mktemp(kind)
            data = write(str(base / "data"))
            made[kind] = data, train_on(str(base / "result"), data, spec)
        return made[kind]

    return get


@pytest.fixture
def private_tmpdir(tmp_path, monkeypatch):
    """The tool's temporary caches go to ``tmp_path/tmp``, a folder the test can check is left
    empty."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def _private_copy(root, data7, results):
    """A private copy of the 7x7 dataset (``root/data``) and of the logreg result
    (``root/result``): the keys every world has."""
    data = root / "data"
    data.mkdir()
    for name in ("train", "val"):
        shutil.copytree(os.path.join(data7["folder"], name), data / name)
        shutil.copy(data7[name], data / f"{name}.csv")
    result = root / "result"
    shutil.copytree(results("logreg"), result)
    return {
        "root": root,
        "data": data,
        "train": str(data / "train.csv"),
        "val": str(data / "val.csv"),
        "result": result,
        "model": str(result / "results.nnp"),
    }


@pytest.fixture
def world(tmp_path, data7, results, private_tmpdir):
    """A private copy of the 7x7 dataset (``data/``) and of the logreg result (``result/``),
    an empty TMPDIR for the tool's temporary cache, and the folder that holds all three (the
    keys are described in ``support/user_files.py``).
    """
    return {**_private_copy(tmp_path, data7, results), "tmp": private_tmpdir}


@pytest.fixture
def world_small(tmp_path, data7, results):
    """A private copy of the 7x7 data (``data/``) and of the logreg result (``result/``), and
    ``base/influence.csv``: a run's output set on them (issue 34's hostile cases start here).
    """
    from sgd_influence_plugin import cli

    w = {
        **_private_copy(tmp_path, data7, results),
        "influence": tmp_path / "base" / "influence.csv",
    }
    argv = ["run", "--model", w["model"], "--train", w["train"], "--val", w["val"], "--quiet"]
    assert cli.main(argv + ["--output", str(w["influence"])]) == 0
    w["run"] = argv
    return w
