"""Losses other than softmax cross entropy, several loss variables, and a Momentum solver, each
against float64 closed forms.

The regression networks are the softmax-regression definition made by the fixtures, edited
the way a console user would build them: one output, a SquaredError loss against the label,
and optionally a second loss variable (the squared prediction, a PowScalar) that the console's
trainer adds to the first. ``nnabla_cli train`` trains the two-loss definition.
"""

import os
from types import SimpleNamespace

import numpy as np
import pytest

from sgd_influence_plugin import core, phases, resolved
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.nnabla_adapter import load_model, read_params
from sgd_influence_plugin.settings import InfluenceSettings
from support.oracles import LogReg, brute_force_replay, sgd_float64, theta_of
from support.results import train_nntxt

NAMES = ["Affine/affine/W", "Affine/affine/b"]


def _regression_definition(source, path, two_losses, lr):
    """Write ``source`` (the logreg definition) as a one-output SquaredError regression."""
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    proto = nnabla_pb2.NNablaProtoBuf()
    with open(source) as f:
        text_format.Merge(f.read(), proto)

    def reshape(var, dims):
        del var.shape.dim[:]
        var.shape.dim.extend(dims)

    for net in proto.network:
        for v in net.variable:
            if v.name == "Affine/affine/W":
                reshape(v, [49, 1])
            elif v.name == "Affine/affine/b":
                reshape(v, [1])
            elif v.name.endswith("Affine_out") or v.name == "y'":
                reshape(v, [-1, 1])
        for func in net.function:
            if func.type == "SoftmaxCrossEntropy":
                func.type = "SquaredError"
                func.ClearField("softmax_cross_entropy_param")
        if net.name == "Main" and two_losses:
            var = net.variable.add(name="loss2", type="Buffer")
            var.shape.dim.extend([-1, 1])
            func = net.function.add(name="@Main/PowScalar", type="PowScalar")
            func.input.append("@Main/Affine_out")
            func.output.append("loss2")
            func.pow_scalar_param.val = 2.0
    (opt,) = proto.optimizer
    opt.solver.sgd_param.lr = lr
    if two_losses:
        opt.loss_variable.add(variable_name="loss2")
    with open(path, "w") as f:
        f.write(text_format.MessageToString(proto))
    return str(path)


@pytest.fixture(scope="module")
def regression(results, data7, tmp_path_factory):
    folder = tmp_path_factory.mktemp("regression")
    source = os.path.join(results("logreg"), "net.nntxt")
    two = _regression_definition(source, folder / "two_losses.nntxt", True, lr=0.01)
    one = _regression_definition(source, folder / "squared_error.nntxt", False, lr=0.01)
    train_nntxt(folder, two)
    return SimpleNamespace(one=one, two=two, params=str(folder / "parameters.h5"))


class _Squares:
    """Linear regression p = x.w + b with loss (p - y)^2 (+ p^2 with ``extra``), float64.
    theta = [w (49), b]."""

    def __init__(self, x, y, extra):
        n = len(x)
        self.x = np.concatenate([x.reshape(n, -1), np.ones((n, 1))], axis=1).astype(np.float64)
        self.y = y.astype(np.float64).ravel()
        self.extra = extra

    def losses(self, theta, idx):
        p = self.x[idx] @ theta
        return (p - self.y[idx]) ** 2 + (p**2 if self.extra else 0.0)

    def grads(self, theta, idx):
        """(|idx|, 50) per-sample gradients."""
        p = self.x[idx] @ theta
        r = 2 * (p - self.y[idx]) + (2 * p if self.extra else 0.0)
        return r[:, None] * self.x[idx]

    def hessian(self, theta, idx):
        """Mean Hessian over idx, (50, 50): 2 (or 4) x x^T."""
        c = 4.0 if self.extra else 2.0
        return c * self.x[idx].T @ self.x[idx] / len(idx)


@pytest.mark.parametrize("two_losses", [False, True], ids=["squared_error", "two_losses"])
def test_regression_losses_replay_equals_brute_force(regression, data7, tmp_path, two_losses):
    """Per-sample losses, one SGD epoch and the replay of a SquaredError regression; with a
    second loss variable, all three are of the sum of the two."""
    config = regression.two if two_losses else regression.one
    m = load_model(config=config, params=regression.params)
    assert m.info.losses == (["loss", "loss2"] if two_losses else ["loss"])
    tr = load_dataset(data7["train"], m.info.input_shapes).arrays
    va = load_dataset(data7["val"], m.info.input_shapes).arrays
    train, val = _Squares(tr["x"], tr["y"], two_losses), _Squares(va["x"], va["y"], two_losses)
    theta0 = m.get_params()
    g = m.graph(50)
    g.inputs["x"].d, g.inputs["y"].d = tr["x"], tr["y"]
    g.loss.forward()
    np.testing.assert_allclose(
        np.ravel(g.loss.d), train.losses(theta_of(theta0), np.arange(50)), rtol=1e-5, atol=1e-6
    )
    settings = InfluenceSettings(lr=0.01, seed=2)
    run = resolved.resolve(m, settings)
    assert run.weight_decay == pytest.approx(0.01) and run.batch_size == 16
    cache_dir = str(tmp_path / "cache")
    phases.run_training_phase(m, tr, settings, run, cache_dir, seed=2)
    infl, _, val_loss = phases.run_inference_phase(m, tr, va, cache_dir)
    m.set_params(theta0)
    order = np.load(os.path.join(cache_dir, "order.npy"))
    path = sgd_float64(train, theta_of(theta0), [order], [0.01] * 4, 16, run.weight_decay)
    final = theta_of(read_params(os.path.join(cache_dir, "parameters.h5"), NAMES))
    assert np.max(np.abs(final - path[-1])) <= 1e-5 * np.max(np.abs(path[-1]))
    assert val_loss == pytest.approx(val.losses(final, np.arange(30)).mean(), rel=1e-5)
    u0 = val.grads(final, np.arange(30)).mean(axis=0)
    ref = brute_force_replay(train, lambda t: final, order, [0.01] * 4, 16, u0, 0.01)
    assert np.max(np.abs(infl - ref)) <= 1e-4 * np.max(np.abs(ref))
    # Either loss alone is far from the sum.
    if two_losses:
        alone = _Squares(tr["x"], tr["y"], False)
        u1 = _Squares(va["x"], va["y"], False).grads(final, np.arange(30)).mean(axis=0)
        other = brute_force_replay(alone, lambda t: final, order, [0.01] * 4, 16, u1, 0.01)
        assert np.max(np.abs(other - ref)) > 0.1 * np.max(np.abs(ref))


def test_momentum_solver_rate_is_replayed_with_plain_sgd(results, data7, tmp_path):
    """A definition trained with Momentum (lr 0.02, momentum 0.9): the replay reads its lr,
    says it models plain SGD, and the training phase is plain SGD at that rate."""
    m = load_model(model=os.path.join(results("momentum"), "results.nnp"))
    assert m.info.solver.type == "Momentum" and m.info.solver.lr == 0.02
    settings = InfluenceSettings(lr="solver", seed=3)
    run = resolved.resolve(m, settings)
    assert run.lr == 0.02 and run.lr_source == "solver"
    assert any("trained with Momentum (lr 0.02)" in w and "plain SGD" in w for w in run.warnings)
    tr = load_dataset(data7["train"], m.info.input_shapes).arrays
    theta0 = m.get_params()
    cache_dir = str(tmp_path / "cache")
    phases.run_training_phase(m, tr, settings, run, cache_dir, seed=3)
    m.set_params(theta0)
    np.testing.assert_array_equal(
        np.load(os.path.join(cache_dir, "lr.npy")), np.full(4, 0.02, np.float32)
    )
    order = core.epoch_orders(50, 1, 3)[0]
    train = LogReg(tr["x"], tr["y"], 10)
    path = sgd_float64(train, theta_of(theta0), [order], [0.02] * 4, 16, run.weight_decay)
    final = theta_of(read_params(os.path.join(cache_dir, "parameters.h5"), NAMES))
    assert np.max(np.abs(final - path[-1])) <= 1e-5 * np.max(np.abs(path[-1]))
