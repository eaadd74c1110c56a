"""The influence core against independent oracles: a float64 dense-Hessian brute force, float64
SGD and closed-form gradients (``support/oracles.py``), nnabla's own SGD solver, and
invariances. (The fused graph's own oracles are in test_fused_graph_oracles.py.)"""

import os

import numpy as np
import pytest

from sgd_influence_plugin import core, influence, phases, replay, resolved, trials
from sgd_influence_plugin.nnabla_adapter import load_model, read_params
from sgd_influence_plugin.settings import InfluenceSettings
from support.oracles import LogReg, brute_force_replay, sgd_float64, theta_of
from support.results import load_trained


def test_sgd_epoch_equals_nnabla_sgd_solver(results, data7):
    """One epoch of our plain SGD equals nnabla's Sgd solver with weight decay."""
    import nnabla.functions as F
    import nnabla.solvers as S

    m, tr, _ = load_trained(results("logreg"), data7)
    theta0 = m.get_params()
    order = core.epoch_orders(50, 1, 3)[0]
    lr, wd, B = 0.2, 0.05, 16
    core.sgd_epoch(m, tr, order, np.full(4, lr, np.float32), B, wd)
    ours = m.get_params()
    m.set_params(theta0)
    solver = S.Sgd(lr)
    solver.set_parameters(dict(m.trainable))
    for t in range(core.n_steps(50, B)):
        idx = core.step_indices(order, t, B)
        g = m.graph(len(idx))
        for col, var in g.inputs.items():
            var.d = tr[col][idx]
        obj = F.mean(g.loss)
        obj.forward()
        solver.zero_grad()
        obj.backward()
        solver.weight_decay(wd)
        solver.update()
    for k, v in m.get_params().items():
        np.testing.assert_allclose(ours[k], v, rtol=1e-5, atol=1e-6)
    m.set_params(theta0)


def _centred_by_class(ref, labels):
    """The oracle of target class-centred: each value minus its class's mean, class by class;
    a class of one row keeps its value."""
    out = np.array(ref, dtype=np.float64)
    for c in set(labels.tolist()):
        if np.sum(labels == c) >= 2:
            out[labels == c] = ref[labels == c] - np.mean(ref[labels == c])
    return out


@pytest.mark.parametrize(
    "cache,batch_size,target",
    [("final", 16, "plain"), ("all", 16, "plain"), ("final", 1, "plain"),
     ("final", 16, "class-centred"), ("all", 16, "class-centred")],
)  # fmt: skip
def test_replay_equals_float64_dense_hessian_brute_force(
    results, data7, tmp_path, cache, batch_size, target
):
    m, tr, va = load_trained(results("logreg"), data7)
    assert m.info.solver.weight_decay > 0 and m.info.solver.batch_size == 16
    # B=16: 50 samples make steps of 16, 16, 16 and a last one of 2. B=1: 50 single steps.
    settings = InfluenceSettings(
        cache=cache, seed=5, batch_size=batch_size, replay_step="exact", target=target
    )
    run = resolved.resolve(m, settings)
    T = -(-50 // batch_size)
    theta0 = m.get_params()
    cache_dir = str(tmp_path / "cache")
    phases.run_training_phase(m, tr, settings, run, cache_dir, seed=5)
    infl, stats, _ = phases.run_inference_phase(m, tr, va, cache_dir)
    m.set_params(theta0)
    assert stats.steps == T

    order = np.load(os.path.join(cache_dir, "order.npy"))
    lrs = np.load(os.path.join(cache_dir, "lr.npy")).astype(np.float64)
    names = ["Affine/affine/W", "Affine/affine/b"]
    final = theta_of(read_params(os.path.join(cache_dir, "parameters.h5"), names))
    train, val = LogReg(tr["x"], tr["y"], 10), LogReg(va["x"], va["y"], 10)
    np.testing.assert_allclose(
        train.losses(final, np.arange(5)), _nnabla_losses(m, tr, final, names), rtol=1e-4
    )
    u0 = val.grads(final, np.arange(len(val.y))).mean(axis=0)

    def theta_at(t):
        if cache == "final":
            return final
        return theta_of(read_params(os.path.join(cache_dir, "steps", f"step_{t:05d}.h5"), names))

    labels = train.y
    finish = (lambda r: _centred_by_class(r, labels)) if target == "class-centred" else np.array
    ref = finish(
        brute_force_replay(train, theta_at, order, lrs, run.batch_size, u0, run.weight_decay)
    )
    assert np.max(np.abs(infl - ref)) <= 1e-4 * np.max(np.abs(ref))
    # Weight decay matters at this tolerance: the brute force without it disagrees.
    ref0 = finish(brute_force_replay(train, theta_at, order, lrs, run.batch_size, u0, 0.0))
    assert np.max(np.abs(infl - ref0)) > 1e-4 * np.max(np.abs(ref0))
    if target == "class-centred":
        # every class sums to zero; a slipped centring (another target, labels one row off,
        # the sign of the class mean) disagrees with the oracle
        for c in np.unique(labels):
            if np.sum(labels == c) >= 2:
                assert abs(infl[labels == c].sum()) <= 1e-9 + 1e-6 * np.abs(infl).sum()
        raw = brute_force_replay(train, theta_at, order, lrs, run.batch_size, u0, run.weight_decay)
        slipped = [raw, _centred_by_class(raw, np.roll(labels, 1)), 2 * raw - ref]
        for wrong in slipped:
            assert np.max(np.abs(infl - wrong)) > 1e-2 * np.max(np.abs(ref))


def _nnabla_losses(m, arrays, theta, names):
    W = theta[:490].reshape(49, 10).astype(np.float32)
    saved = m.get_params()
    m.set_params({names[0]: W, names[1]: theta[490:].astype(np.float32)})
    g = m.graph(5)
    for col, var in g.inputs.items():
        var.d = arrays[col][:5]
    g.loss.forward()
    out = np.array(g.loss.d).ravel()
    m.set_params(saved)
    return out


_LOGREG_NAMES = ["Affine/affine/W", "Affine/affine/b"]


def test_replay_with_a_rate_per_step_equals_brute_force(results, data7):
    """``lr.npy`` holds one rate per step: step t of the replay must use eta_t (the training
    phase writes equal rates, so only a direct call can tell which step's rate is used)."""
    m, tr, va = load_trained(results("logreg"), data7)
    theta = theta_of(m.get_params())
    train, val = LogReg(tr["x"], tr["y"], 10), LogReg(va["x"], va["y"], 10)
    order = core.epoch_orders(50, 1, 11)[0]  # steps of 16, 16, 16, 2
    lrs = np.array([0.8, 0.05, 0.4, 0.15], np.float32)
    wd = 0.01
    u = core.validation_gradient(m, va)
    infl, stats = replay.replay(m, tr, order, lrs, 16, u, weight_decay=wd)
    assert stats.steps == 4
    u0 = val.grads(theta, np.arange(30)).mean(axis=0)
    ref = brute_force_replay(train, lambda t: theta, order, lrs, 16, u0, wd)
    assert np.max(np.abs(infl - ref)) <= 1e-4 * np.max(np.abs(ref))
    # The oracle tells the rates apart: each step at its successor's rate is far off.
    shifted = np.append(lrs[1:], lrs[-1])
    wrong = brute_force_replay(train, lambda t: theta, order, shifted, 16, u0, wd)
    assert np.max(np.abs(wrong - ref)) > 0.1 * np.max(np.abs(ref))


def test_sgd_epoch_with_a_rate_per_step_equals_float64_sgd(results, data7):
    m, tr, _ = load_trained(results("logreg"), data7)
    theta0 = m.get_params()
    train = LogReg(tr["x"], tr["y"], 10)
    order = core.epoch_orders(50, 1, 2)[0]
    lrs = np.array([0.8, 0.05, 0.4, 0.15], np.float32)
    core.sgd_epoch(m, tr, order, lrs, 16, weight_decay=0.03)
    path = sgd_float64(train, theta_of(theta0), [order], lrs.astype(np.float64), 16, 0.03)
    ours = theta_of(m.get_params())
    m.set_params(theta0)
    assert np.max(np.abs(ours - path[-1])) <= 1e-5 * np.max(np.abs(path[-1]))


@pytest.mark.parametrize("batch_size", [7, 30, 256])
def test_validation_gradient_and_loss_are_means_over_the_whole_set(results, data7, batch_size):
    """30 validation samples in chunks of 7 (7, 7, 7, 7, 2), one chunk of 30, or one of 256:
    always the mean over all 30, as the closed form gives it."""
    m, _, va = load_trained(results("logreg"), data7)
    theta = theta_of(m.get_params())
    val = LogReg(va["x"], va["y"], 10)
    u = core.validation_gradient(m, va, batch_size)
    assert list(u) == _LOGREG_NAMES and u["Affine/affine/W"].shape == (49, 10)
    ref = val.grads(theta, np.arange(30)).mean(axis=0)
    np.testing.assert_allclose(theta_of(u), ref, rtol=1e-4, atol=1e-6 * np.max(np.abs(ref)))
    loss = core.mean_loss(m, va, batch_size)
    assert loss == pytest.approx(val.losses(theta, np.arange(30)).mean(), rel=1e-5)


def test_two_epochs_cache_the_last_order_and_two_epochs_of_sgd(results, data7, tmp_path):
    """``epochs=2``: the cache holds the second epoch's order and the parameters before each of
    its steps, and the final parameters are two epochs of SGD from the trained ones."""
    m, tr, _ = load_trained(results("logreg"), data7)
    theta0 = m.get_params()
    settings = InfluenceSettings(lr=0.1, epochs=2, seed=5, cache="all")
    run = resolved.resolve(m, settings)
    assert run.batch_size == 16 and run.weight_decay == pytest.approx(0.01)
    cache_dir = str(tmp_path / "cache")
    phases.run_training_phase(m, tr, settings, run, cache_dir, seed=5)
    m.set_params(theta0)
    orders = core.epoch_orders(50, 2, 5)
    rng = np.random.RandomState(5)  # the documented draw: one RandomState, one per epoch
    for order in orders:
        np.testing.assert_array_equal(order, rng.permutation(50))
    assert not np.array_equal(orders[0], orders[1])
    np.testing.assert_array_equal(np.load(os.path.join(cache_dir, "order.npy")), orders[1])
    np.testing.assert_array_equal(
        np.load(os.path.join(cache_dir, "lr.npy")), np.full(4, 0.1, np.float32)
    )
    train = LogReg(tr["x"], tr["y"], 10)
    path = sgd_float64(train, theta_of(theta0), orders, [0.1] * 4, 16, run.weight_decay)
    assert len(path) == 9  # the start and 2 x 4 steps
    final = theta_of(read_params(os.path.join(cache_dir, "parameters.h5"), _LOGREG_NAMES))
    assert np.max(np.abs(final - path[-1])) <= 1e-5 * np.max(np.abs(path[-1]))
    # The snapshots are the parameters before each step of the second epoch.
    for t in range(4):
        snap = read_params(os.path.join(cache_dir, "steps", f"step_{t:05d}.h5"), _LOGREG_NAMES)
        assert np.max(np.abs(theta_of(snap) - path[4 + t])) <= 1e-5 * np.max(np.abs(path[4 + t]))
    assert sorted(os.listdir(os.path.join(cache_dir, "steps"))) == [
        f"step_{t:05d}.h5" for t in range(4)
    ]


def test_weight_decay_term_of_the_replay(results, data7):
    """u <- u - lr * (H u + lambda u): with H's effect isolated, lambda scales u exactly."""
    m, tr, va = load_trained(results("logreg"), data7)
    u = core.validation_gradient(m, va)
    order = np.arange(50, dtype=np.int32)
    lr = 1e-3
    base, _ = replay.replay(m, tr, order, [lr] * 4, 16, u, weight_decay=0.0)
    with_wd, _ = replay.replay(m, tr, order, [lr] * 4, 16, u, weight_decay=50.0)
    # The last step (t=3, samples 48, 49) sees u before any decay: identical.
    np.testing.assert_allclose(with_wd[48:], base[48:], rtol=1e-6)
    # Step 2 sees u scaled by (1 - lr * 50) on top of the Hessian term (which is tiny at lr).
    ratio = with_wd[32:48] / base[32:48]
    np.testing.assert_allclose(ratio, 1 - lr * 50, rtol=2e-3)


def test_permuting_rows_permutes_scores(results, data28):
    m, tr, va = load_trained(results("mlp"), data28)
    u = core.validation_gradient(m, va)
    n = len(tr["y"])
    order = core.epoch_orders(n, 1, 0)[0]
    infl, _ = replay.replay(m, tr, order, np.full(8, 0.1), 32, u)
    perm = np.random.RandomState(1).permutation(n)
    tr_p = {k: v[perm] for k, v in tr.items()}
    inv = np.argsort(perm)
    order_p = inv[order].astype(np.int32)  # same samples in the same steps
    infl_p, _ = replay.replay(m, tr_p, order_p, np.full(8, 0.1), 32, u)
    np.testing.assert_allclose(infl_p, infl[perm], rtol=1e-5, atol=1e-9)


def test_trials_average_and_cache_layout(results, data28, tmp_path):
    m, tr, va = load_trained(results("mlp"), data28)
    theta0 = m.get_params()
    res = influence.compute_influence(
        m, tr, va, InfluenceSettings(trials=2, seed=7), cache_dir=str(tmp_path / "c")
    )
    assert res.scores.shape == (256,) and res.scores.dtype == np.float64
    assert res.trial_scores.shape == (2, 256)
    assert not np.array_equal(res.orders[0], res.orders[1])
    for m_ in (0, 1):
        d = tmp_path / "c" / f"trial_{m_:02d}"
        assert sorted(os.listdir(d)) == ["lr.npy", "order.npy", "parameters.h5", "settings.yaml"]
        order = np.load(d / "order.npy")
        assert order.dtype == np.int32 and order.shape == (256,)
        assert sorted(order) == list(range(256))
        lr = np.load(d / "lr.npy")
        assert lr.dtype == np.float32 and lr.shape == (8,)
    for k, v in m.get_params().items():  # the model is handed back unchanged
        np.testing.assert_array_equal(v, theta0[k])
    # The final parameters in the cache are what SGD over the recorded order gives.
    m2 = load_model(model=os.path.join(results("mlp"), "results.nnp"))
    order = np.load(tmp_path / "c" / "trial_01" / "order.npy")
    assert res.resolved.lr < m.info.solver.lr  # the automatic rate, not the console's
    core.sgd_epoch(m2, tr, order, np.full(8, res.resolved.lr, np.float32), 32)
    cached = read_params(str(tmp_path / "c" / "trial_01" / "parameters.h5"), m.info.trainable)
    for k, v in m2.get_params().items():
        np.testing.assert_allclose(cached[k], v, rtol=1e-6)


def test_all_mode_keeps_one_snapshot_per_step(results, data28, tmp_path):
    m, tr, va = load_trained(results("mlp"), data28)
    theta0 = m.get_params()
    res = influence.compute_influence(
        m, tr, va, InfluenceSettings(cache="all", trials=1), cache_dir=str(tmp_path / "c")
    )
    steps = sorted(os.listdir(tmp_path / "c" / "steps"))
    assert steps == [f"step_{t:05d}.h5" for t in range(8)]
    first = read_params(str(tmp_path / "c" / "steps" / "step_00000.h5"), m.info.trainable)
    for k in theta0:  # epochs=1: the parameters before step 0 are the trained ones
        np.testing.assert_array_equal(first[k], theta0[k])
    assert res.cache_bytes > 8 * os.path.getsize(tmp_path / "c" / "parameters.h5")


def test_temporary_cache_is_removed(results, data28, monkeypatch, tmp_path):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    m, tr, va = load_trained(results("mlp"), data28)
    influence.compute_influence(m, tr, va, InfluenceSettings())
    assert os.listdir(tmp_path) == []
    bad = dict(va)
    bad["x"] = bad["x"][:, :, :10]  # wrong shape: fails inside the inference phase
    with pytest.raises(ValueError, match="could not broadcast"):  # fails inside the phase
        influence.compute_influence(m, tr, bad, InfluenceSettings())
    assert os.listdir(tmp_path) == []


def test_non_sgd_solver_warns(results, data28):
    m, tr, va = load_trained(results("adam"), data28)
    run = resolved.resolve(m, InfluenceSettings())
    assert run.lr == pytest.approx(0.001)
    assert any("trained with Adam" in w and "plain SGD" in w for w in run.warnings)


def test_exploding_query_vector_is_measured(results, data28):
    """At fixed parameters, lr far above 2 / (top Hessian eigenvalue) makes (I - lr H) expand u."""
    m, tr, va = load_trained(results("mlp"), data28)
    u = core.validation_gradient(m, va)
    order = core.epoch_orders(256, 1, 0)[0]
    _, calm = replay.replay(m, tr, order, np.full(8, 1e-3), 32, u)
    _, wild = replay.replay(m, tr, order, np.full(8, 1e3), 32, u)
    assert calm.u_growth < 1.5 and wild.u_growth > 100
    assert trials.trial_problem(np.zeros(3), calm.u_growth) is None
    assert "grew" in trials.trial_problem(np.zeros(3), wild.u_growth)


def test_replay_builds_one_graph_per_batch_size(results, data28, monkeypatch):
    m, tr, va = load_trained(results("mlp"), data28)
    u = core.validation_gradient(m, va)
    built = []
    real = core._StepGraphs

    def counting(model, batch_size, fused):
        built.append((batch_size, fused))
        return real(model, batch_size, fused)

    monkeypatch.setattr(core, "_StepGraphs", counting)
    order = core.epoch_orders(250, 1, 0)[0]  # 7 steps of 32 and a last one of 26
    arrays = {k: v[:250] for k, v in tr.items()}
    replay.replay(m, arrays, order, np.full(8, 0.01), 32, u)
    assert sorted(built) == [(26, True), (32, True)]
