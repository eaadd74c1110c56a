"""The finite-difference replay step (``replay.replay(step="fd")``) against independent oracles:
float64 closed forms on softmax regression and the exact step (itself checked against a
batch-size-1 loop and a dense Hessian in test_core_oracles) on a smooth CNN.

Central differences are exact up to O(eps^2) on smooth losses, so the tolerances below are
set from the measured truncation error at the default relative step (1e-2), with a margin of
about 3-10x, and the O(eps^2) scaling itself is checked (a one-sided difference would scale
as eps and fail it). ReLU and max-pooling networks have kinks where a finite difference is not
a valid oracle; their whole-replay fidelity is measured by the benchmark, not asserted here.
"""

import numpy as np
import pytest

from sgd_influence_plugin import core, replay, replay_steps
from support.oracles import LogReg, theta_of
from support.results import load_trained


def _flat(h):
    return np.concatenate([np.ravel(x) for x in h]).astype(np.float64)


def _rel(a, b):
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b)))


def test_fd_step_matches_float64_closed_forms_on_softmax_regression(results, data7):
    m, tr, va = load_trained(results("logreg"), data7)
    before = m.get_params()
    theta = theta_of(before)
    train, val = LogReg(tr["x"], tr["y"], 10), LogReg(va["x"], va["y"], 10)
    u64 = val.grads(theta, np.arange(len(val.y))).mean(axis=0)
    u = [u64[:490].reshape(49, 10).astype(np.float32), u64[490:].astype(np.float32)]
    idx = np.arange(3, 19)
    dots_ref = train.grads(theta, idx) @ u64  # <u, grad l_i>, float64
    hu_ref = train.hessian(theta, idx) @ u64  # mean Hessian of the 16 samples times u

    errors = {}
    for rel in (1e-2, 3e-2):
        dots, hu = replay_steps.FiniteDifferenceStep(m, rel)(tr, idx, u)
        assert dots.shape == (16,) and dots.dtype == np.float64
        assert [h.shape for h in hu] == [(49, 10), (10,)]
        errors[rel] = (
            np.max(np.abs(dots - dots_ref)) / np.max(np.abs(dots_ref)),
            _rel(_flat(hu), hu_ref),
        )
        for k, v in m.get_params().items():  # theta is restored exactly
            np.testing.assert_array_equal(v, before[k])
    # Measured at the default step: dots 1e-4, H u 4e-4 of the reference.
    assert replay_steps.FD_REL_STEP == 1e-2
    assert errors[1e-2][0] <= 1e-3 and errors[1e-2][1] <= 2e-3
    # Truncation error O(eps^2): 3x the step, about 9x the error (measured 9.1x and 9.0x).
    for k in (0, 1):
        assert 4 <= errors[3e-2][k] / errors[1e-2][k] <= 20


def test_fd_step_against_the_exact_step_on_a_smooth_cnn(results, data28):
    m, tr, va = load_trained(results("smooth"), data28)
    u = core.validation_gradient(m, va)
    u_list = [u[k] for k in m.graph(32).params]
    exact = replay_steps.ExactStep(m)
    fd = replay_steps.FiniteDifferenceStep(m)
    fine = replay_steps.FiniteDifferenceStep(m, 1e-3)
    worst = np.zeros((2, 2))
    for t in range(4):
        idx = np.arange(32 * t, 32 * t + 32)
        d0, h0 = exact(tr, idx, u_list)
        for row, step in enumerate((fd, fine)):
            d1, h1 = step(tr, idx, u_list)
            e = (np.max(np.abs(d1 - d0)) / np.max(np.abs(d0)), _rel(_flat(h1), _flat(h0)))
            worst[row] = np.maximum(worst[row], e)
    # Measured (max over batches): rel 1e-2: dots 1.3e-3, H u 3.3e-3; rel 1e-3: 3e-5 both.
    assert np.all(worst[0] <= 1e-2)
    assert np.all(worst[1] <= 3e-4)
    assert np.all(worst[1] < worst[0] / 10)  # 10x smaller step: about 100x smaller error


def test_fd_replay_follows_the_exact_replay_on_a_smooth_cnn(results, data28):
    m, tr, va = load_trained(results("smooth"), data28)
    theta0 = m.get_params()
    u = core.validation_gradient(m, va)
    order = core.epoch_orders(256, 1, 4)[0]
    lrs = np.full(8, 0.05, np.float32)
    exact, st_exact = replay.replay(m, tr, order, lrs, 32, u)
    fd, st_fd = replay.replay(m, tr, order, lrs, 32, u, step="fd")
    assert st_exact.step == "exact" and st_fd.step == "fd" and st_fd.steps == 8
    assert np.all(np.isfinite(fd))
    assert np.corrcoef(fd, exact)[0, 1] >= 0.999
    assert np.max(np.abs(fd - exact)) <= 2e-2 * np.max(np.abs(exact))
    assert st_fd.u_growth == pytest.approx(st_exact.u_growth, rel=1e-2)
    for k, v in m.get_params().items():
        np.testing.assert_array_equal(v, theta0[k])


def test_replay_step_choices_are_checked(results, data7):
    m, tr, va = load_trained(results("logreg"), data7)
    u = core.validation_gradient(m, va)
    with pytest.raises(ValueError, match="unknown replay step 'fast'"):
        replay.replay(m, tr, np.arange(50), [0.1] * 4, 16, u, step="fast")
    for bad in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="rel_step must be a positive number"):
            replay_steps.FiniteDifferenceStep(m, bad)
    zero = [np.zeros_like(u[k]) for k in m.graph(16).params]
    dots, hu = replay_steps.FiniteDifferenceStep(m)(tr, np.arange(16), zero)
    assert not np.any(dots) and not any(np.any(h) for h in hu)
