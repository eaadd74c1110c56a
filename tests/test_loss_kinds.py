"""Every loss the console offers is understood (classifier, binary classifier, regression),
and a probability loss on a saturated output stays finite: checked against float64 oracles."""

from __future__ import annotations

import os

import numpy as np
import pytest
from google.protobuf import text_format
from nnabla.utils import nnabla_pb2

from sgd_influence_plugin import core
from sgd_influence_plugin.nnabla_adapter import load_model, losses
from support import console_kinds as kinds
from support.netdef import NetSpec, write_nntxt
from support.results import train_on

#: head -> (task, classes of the label column) for a 3-class definition
EXPECTED = {
    "softmax_ce": ("classification", 3),
    "softmax_cce": ("classification", 3),
    "sigmoid_bce": ("classification", 2),
    "sigmoid_ce": ("classification", 2),
    "squared": ("regression", None),
    "huber": ("regression", None),
}


def _main_network(path):
    proto = nnabla_pb2.NNablaProtoBuf()
    with open(path) as f:
        text_format.Merge(f.read(), proto)
    return next(n for n in proto.network if n.name == "Main")


@pytest.mark.parametrize("head", sorted(EXPECTED))
def test_each_console_loss_names_its_task_and_target(tmp_path, head):
    path = write_nntxt(
        NetSpec(arch="mlp", n_classes=3, head=head, input_shape=(5,)), str(tmp_path / "n.nntxt")
    )
    net = _main_network(path)
    shapes = {v.name: tuple(v.shape.dim) for v in net.variable}
    task, target, classes = losses.understand(net, {"x": "x", "y": "y"}, shapes)
    want_task, want_classes = EXPECTED[head]
    assert (task, target) == (want_task, "y")
    assert classes == ({"y": want_classes} if want_classes else {})
    notes = losses.stabilise(net, shapes)
    kinds_now = [f.type for f in net.function]
    assert ("BinaryCrossEntropy" in kinds_now) is False
    assert ("CategoricalCrossEntropy" in kinds_now) is False
    assert len(notes) == (1 if head in ("softmax_cce", "sigmoid_bce") else 0)


def _softplus(z):
    return np.logaddexp(0.0, z)


def test_saturated_sigmoid_output_gives_the_exact_finite_loss(tmp_path):
    """Last layer scaled until the sigmoid is 0 or 1 in float32: BCE(sigmoid(z), t) is
    computed from z (softplus), as a float64 oracle gives it, with finite gradients."""
    data = kinds.write_table(str(tmp_path / "d"), 64, 16, seed=7, binary=True)
    spec = NetSpec(arch="mlp", head="sigmoid_bce", solver="Adam", lr=0.01, batch_size=16)
    result = train_on(str(tmp_path / "r"), data, spec)
    model = load_model(os.path.join(result, "results.nnp"))
    params = model.get_params()
    w, b = "Affine_2/affine/W", "Affine_2/affine/b"
    model.set_params({w: params[w] * 3000.0, b: params[b] * 3000.0})
    arrays = {
        "x": np.array([[float(c) for c in r[1:]] for r in kinds.read_rows(data["train"])["rows"]]),
        "y": np.array([[float(r[0])] for r in kinds.read_rows(data["train"])["rows"]]),
    }
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    _, h = model.predict_with_features(arrays)
    z = h.astype(np.float64) @ (params[w] * 3000.0).astype(np.float64) + params[b] * 3000.0
    t = arrays["y"].astype(np.float64)
    assert np.max(np.abs(z)) > 100  # saturated: float32 sigmoid is exactly 0 or 1 there
    oracle = (t * _softplus(-z) + (1 - t) * _softplus(z)).ravel()
    got = core.per_sample_losses(model, arrays, 16)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, oracle, rtol=1e-4, atol=1e-3)
    grads = core.validation_gradient(model, arrays, 16)
    assert all(np.all(np.isfinite(g)) for g in grads.values())
