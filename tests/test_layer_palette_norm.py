"""The console's palette, one layer at a time: normalization and state, array ops, random
layers, a ResNet block (support/palette_state_netdef.py builds a tiny network around each, all
trained by one ``nnabla_cli train``). For every layer the tool scores:

(a) each sample's loss is the same at any batch size (no sample sees the rest of its batch);
(c) it equals the loss of the console's inference network (``MainValidation``, nnabla's own
    loader at the console's batch size), and, slow, ``nnabla_cli forward``'s output;
(b) the replay step's products ``<u, grad l_i>`` equal a batch-size-1 loop of nnabla's
    backward on that inference network (the exact step either is right or says it cannot be
    built, and the run then takes first-order passes);
(d) state that training updates (BatchNorm's running statistics, MeanSubtraction's running
    mean, SpectralNorm's u) is used as trained and no pass of the tool moves it.

Layers the tool must refuse are in :data:`REFUSED`. A new layer is one line in
``support.palette_state_netdef.LAYERS`` (and one here if it is refused or has state).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from sgd_influence_plugin import cli, core, curvature
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.errors import NetworkDefinitionError
from sgd_influence_plugin.nnabla_adapter import load_model
from sgd_influence_plugin.nnabla_adapter.files import read_params
from sgd_influence_plugin.replay_steps import ExactStep, FiniteDifferenceStep
from support.palette_state_netdef import BATCH, LAYERS, layer_result, train_palette
from support.results import console_outputs

#: Layer -> the words of its one-line refusal.
REFUSED = {
    "MeanBatchAxis": r"\(Mean\) of network 'Main' works across axis 0 \(the mini-batch\)",
    "SpectralNorm": r"\(SpectralNorm\) of network 'Main' cannot be replayed: in training mode",
    "Sort": r"\(Sort\) of network 'Main' cannot be replayed: nnabla 1.39's backward of Sort",
    "TopKData": r"\(TopKData\) of network 'Main' \(reduce false\) cannot be replayed",
}
SCORED = [n for n in LAYERS if n not in REFUSED]
#: Layers with a state ``nnabla_cli train`` updates besides the solver's steps: the
#: parameters' name endings.
STATEFUL = {
    "BatchNormalization": ("/mean", "/var"),
    "BatchNormalization_noscale_nobias": ("/mean", "/var"),
    "BatchNormalization_conv": ("/mean", "/var"),
    "FusedBatchNormalization": ("/mean", "/var"),
    "ResNetBlock": ("/mean", "/var"),
    "MeanSubtraction": ("/mean", "/t"),
}


@pytest.fixture(scope="module")
def palette(tmp_path_factory):
    folder, data = train_palette(str(tmp_path_factory.mktemp("palette")), list(LAYERS))
    return {"folder": folder, "data": data, "loaded": {}}


def _loaded(palette, name):
    """(result folder, model, training arrays, validation arrays) of layer ``name``."""
    if name not in palette["loaded"]:
        d = layer_result(palette["folder"], name)
        model = load_model(model=os.path.join(d, "results.nnp"))
        shapes, data = model.info.input_shapes, palette["data"]
        train = load_dataset(data["train"], shapes).arrays
        val = load_dataset(data["val"], shapes).arrays
        palette["loaded"][name] = (d, model, train, val)
    return palette["loaded"][name]


def _inference_network(folder, batch_size):
    """The console's inference network of the result in ``folder`` (``MainValidation``
    alone: nnabla's loader builds every network at the batch size it is given, and a
    training network's ImageAugmentation holds the console's) by nnabla's loader, and every
    parameter.
    """
    import nnabla as nn
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2
    from nnabla.utils.load import load

    proto = nnabla_pb2.NNablaProtoBuf()
    with open(os.path.join(folder, "net.nntxt")) as f:
        text_format.Merge(f.read(), proto)
    kept = [n for n in proto.network if n.name == "MainValidation"]
    for field in ("network", "optimizer", "monitor", "executor"):
        proto.ClearField(field)
    proto.network.extend(kept)
    path = os.path.join(folder, "inference.nntxt")
    with open(path, "w") as f:
        f.write(text_format.MessageToString(proto))
    nn.clear_parameters()
    loaded = load([path, os.path.join(folder, "parameters.h5")], prepare_data_iterator=False,
                  batch_size=batch_size)  # fmt: skip
    return loaded.networks["MainValidation"], nn.get_parameters(grad_only=False)


def _oracle_losses(folder, arrays):
    """Each row's loss by the console's inference network at its batch size (as the
    console's validation monitor computes it)."""
    net, _ = _inference_network(folder, BATCH)
    n = len(arrays["x"])
    out = np.empty(n)
    for s in range(0, n, BATCH):
        net.variables["x"].variable_instance.d = arrays["x"][s : s + BATCH]
        net.variables["y"].variable_instance.d = arrays["y"][s : s + BATCH]
        loss = net.variables["loss"].variable_instance
        loss.forward()
        out[s : s + BATCH] = np.asarray(loss.d, np.float64).ravel()
    return out


def _oracle_dots(folder, arrays, idx, u):
    """``<u, grad l_i>`` for each row i of ``idx``: nnabla's backward, one row at a time."""
    net, params = _inference_network(folder, 1)
    loss = net.variables["loss"].variable_instance
    out = []
    for i in idx:
        net.variables["x"].variable_instance.d = arrays["x"][i : i + 1]
        net.variables["y"].variable_instance.d = arrays["y"][i : i + 1]
        for p in params.values():
            p.grad.zero()
        loss.forward()
        loss.backward(clear_buffer=True)
        out.append(sum(float(np.sum(np.asarray(params[k].g, np.float64) * u[k])) for k in u))
    return np.array(out)


def _state(model, name):
    """Layer ``name``'s parameters the solver does not train (the weights file holds every
    layer's)."""
    return {k: np.array(v.d) for k, v in model._params.items()
            if k.startswith(name + "/") and k not in model.info.trainable}  # fmt: skip


@pytest.mark.parametrize("name", SCORED)
def test_each_sample_loss_is_its_own_and_the_consoles(palette, name):
    d, model, train, _ = _loaded(palette, name)
    at = {b: core.per_sample_losses(model, train, b) for b in (1, BATCH, 256)}
    scale = 1e-5 * (1 + np.abs(at[BATCH]))
    assert np.all(np.abs(at[1] - at[BATCH]) <= scale), "a sample's loss depends on its batch"
    assert np.all(np.abs(at[256] - at[BATCH]) <= scale)
    oracle = _oracle_losses(d, train)
    assert np.all(np.abs(at[BATCH] - oracle) <= scale), "not the console's inference network"


@pytest.mark.parametrize("name", SCORED)
def test_replay_products_match_a_batch_of_one_loop(palette, name):
    d, model, train, val = _loaded(palette, name)
    u = core.validation_gradient(model, val)
    idx = np.arange(3, 3 + BATCH)
    oracle = _oracle_dots(d, train, idx, u)
    scale = np.max(np.abs(oracle))
    # a small step: the products of the graph, not the default step's smoothing of kinks
    fd, _ = FiniteDifferenceStep(model, rel_step=1e-3)(train, idx, list(u.values()))
    assert np.max(np.abs(fd - oracle)) < 0.02 * scale
    try:
        exact, _ = ExactStep(model)(train, idx, list(u.values()))
    except NotImplementedError:  # no gradient graph: the run takes the fd step, and so does
        assert curvature.hvp_operator(model, BATCH)[1] == "fd"  # the rate's curvature
        return
    assert np.max(np.abs(exact - oracle)) < 1e-4 * scale, "the exact step's products are wrong"


@pytest.mark.parametrize("name", SCORED)
def test_state_is_used_as_trained_and_never_moved(palette, name):
    d, model, train, val = _loaded(palette, name)
    trained = read_params(os.path.join(d, "parameters.h5"), list(_state(model, name)))
    before = _state(model, name)
    for k, v in before.items():
        np.testing.assert_array_equal(v, trained[k])
    theta = model.get_params()
    u = core.validation_gradient(model, val)
    core.sgd_epoch(model, train, np.arange(len(train["x"])), np.full(6, 0.05), BATCH)
    FiniteDifferenceStep(model)(train, np.arange(BATCH), list(u.values()))
    core.per_sample_losses(model, val)
    model.set_params(theta)
    after = _state(model, name)
    moved = [k for k in before if not np.array_equal(before[k], after[k])]
    assert not moved, f"the tool's own passes moved {moved}"
    # nnabla_cli train updated the state from its initial value (the tool uses that state)
    start = {"mean": 0.0, "var": 1.0, "t": 0.0}
    for k in before:
        last = k.rsplit("/", 1)[1]
        if k.endswith(STATEFUL.get(name, ())) and last in start:
            assert np.any(before[k] != start[last]), k


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_layer_the_replay_cannot_follow_is_refused_in_one_line(palette, name, tmp_path, capsys):
    d = layer_result(palette["folder"], name)
    with pytest.raises(NetworkDefinitionError, match=REFUSED[name]):
        load_model(model=os.path.join(d, "results.nnp"))
    out = str(tmp_path / "influence.csv")
    assert cli.main(["run", "--model", os.path.join(d, "results.nnp"), "--output", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(REFUSED[name], err[0]), err
    assert not os.path.exists(out)


def test_sync_batch_normalization_is_refused_in_one_line(palette):
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    d = layer_result(palette["folder"], "BatchNormalization")
    proto = nnabla_pb2.NNablaProtoBuf()
    with open(os.path.join(d, "net.nntxt")) as f:
        text_format.Merge(f.read(), proto)
    for f in proto.network[0].function:
        if f.type == "BatchNormalization":
            f.type = "SyncBatchNormalization"
            f.sync_batch_normalization_param.axes.extend(f.batch_normalization_param.axes)
            f.ClearField("batch_normalization_param")
    path = os.path.join(d, "sync.nntxt")
    with open(path, "w") as f:
        f.write(text_format.MessageToString(proto))
    with pytest.raises(
        NetworkDefinitionError,
        match=r"\(SyncBatchNormalization\) of network 'Main' cannot be replayed on one device",
    ):
        load_model(config=path, params=os.path.join(d, "parameters.h5"))


@pytest.mark.slow
@pytest.mark.parametrize("name", SCORED)
def test_the_replay_network_computes_what_nnabla_cli_forward_does(palette, name, tmp_path):
    d, model, train, _ = _loaded(palette, name)
    prob = console_outputs(d, palette["data"]["train"], str(tmp_path))
    labels = train["y"].astype(int).ravel()
    console_loss = -np.log(prob[np.arange(len(labels)), labels])
    np.testing.assert_allclose(core.per_sample_losses(model, train), console_loss, atol=2e-5)
    np.testing.assert_allclose(model.predict(train), prob, atol=2e-6)  # the model's class


def test_the_exact_step_through_a_tile_is_refused_in_one_line(palette, tmp_path, capsys):
    d = layer_result(palette["folder"], "Tile")
    out = str(tmp_path / "influence.csv")
    argv = ["run", "--model", os.path.join(d, "results.nnp"), "--output", out]
    assert cli.main(argv + ["--replay-step", "exact"]) == 2
    err = capsys.readouterr().err  # the datasets' progress, then the error's one line
    assert "Traceback" not in err and err.count("error:") == 1, err
    assert "Tile: nnabla's gradient graph of Tile is zero" in err.strip().splitlines()[-1]
