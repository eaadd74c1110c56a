"""The influence estimates against an exact leave-one-out re-run of the replayed epoch."""

import os
import time

import numpy as np
import pytest

from sgd_influence_plugin import core, influence, replay
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.nnabla_adapter import load_model, read_params
from sgd_influence_plugin.settings import InfluenceSettings
from support.oracles import centred_by_class, exact_leave_one_out


def _pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def _fd_pearsons(model, train, val, caches, order, lrs, loo):
    """Pearson of the fd replay (replay.replay(step="fd"), centred by class as the default
    target is) with ``loo``, from the caches that compute_influence wrote under
    ``caches/all`` and ``caches/final``."""
    out = {}
    for cache in ("all", "final"):
        folder = caches / cache
        model.load_params(str(folder / "parameters.h5"))
        u = core.validation_gradient(model, val)

        def params_at(t, folder=folder):
            return read_params(str(folder / "steps" / f"step_{t:05d}.h5"), model.info.trainable)

        fd, _ = replay.replay(
            model,
            train,
            order,
            lrs,
            32,
            u,
            params_at=params_at if cache == "all" else None,
            step="fd",
        )
        out[cache] = _pearson(centred_by_class(fd, train["y"].ravel()), loo)
    return out


def test_smooth_net_matches_exact_leave_one_out(results, data28, tmp_path):
    model = load_model(model=os.path.join(results("smooth"), "results.nnp"))
    train = load_dataset(data28["train"], model.info.input_shapes).arrays
    val = load_dataset(data28["val"], model.info.input_shapes).arrays
    theta0 = model.get_params()
    scores = {}
    for cache in ("all", "final"):
        settings = InfluenceSettings(cache=cache, seed=3, lr="solver", trials=1)
        res = influence.compute_influence(
            model, train, val, settings, cache_dir=str(tmp_path / cache)
        )
        scores[cache] = res.scores
    order = np.load(tmp_path / "all" / "order.npy")
    lrs = np.load(tmp_path / "all" / "lr.npy")
    start = time.perf_counter()
    plain = exact_leave_one_out(model, train, val, theta0, order, lrs, 32, 0.0)
    elapsed = time.perf_counter() - start
    # the default target, class-centred, of the exact re-runs: the oracle of the scores
    loo = centred_by_class(plain, train["y"].ravel())
    r_all, r_final = _pearson(scores["all"], loo), _pearson(scores["final"], loo)
    print(f"LOO ({elapsed:.1f}s): Pearson all={r_all:.4f} final={r_final:.4f} (class-centred)")
    assert np.std(loo) > 0
    # a slipped centring (labels one row off) or none at all fits the oracle worse
    slipped = centred_by_class(plain, np.roll(train["y"].ravel(), 1))
    assert _pearson(scores["all"], slipped) < r_all - 0.01
    assert np.max(np.abs(scores["all"] - loo)) < np.max(np.abs(scores["all"] - plain))
    assert r_all >= 0.98
    assert r_final >= 0.9
    # The finite-difference replay step from the same caches stays within 0.01 of the exact
    # step's fidelity (measured: the same Pearson to 4 decimals in both modes).
    for cache, r_fd in _fd_pearsons(model, train, val, tmp_path, order, lrs, loo).items():
        print(f"LOO: Pearson {cache} fd={r_fd:.4f}")
        assert r_fd >= {"all": r_all, "final": r_final}[cache] - 0.01
    model.set_params(theta0)


@pytest.mark.slow
def test_smooth_net_leave_one_out_at_n1024(tmp_path):
    """The design notes' setting: N=1024, B=32, lr=0.05, smooth CNN (opt-in, about 4 min)."""
    from support.fashion_mnist import make_png_dataset
    from support.netdef import NetSpec
    from support.results import train_result

    data = make_png_dataset(tmp_path / "data", 1024, 256, seed=7)
    folder = train_result(
        tmp_path / "result", data, NetSpec(arch="smooth_cnn", batch_size=32, lr=0.05, max_epoch=3)
    )
    model = load_model(model=os.path.join(folder, "results.nnp"))
    train = load_dataset(data["train"], model.info.input_shapes).arrays
    val = load_dataset(data["val"], model.info.input_shapes).arrays
    theta0 = model.get_params()
    scores = {}
    for cache in ("all", "final"):
        res = influence.compute_influence(
            model,
            train,
            val,
            InfluenceSettings(cache=cache, seed=3, lr="solver", trials=1),
            cache_dir=str(tmp_path / cache),
        )
        scores[cache] = res.scores
    order = np.load(tmp_path / "all" / "order.npy")
    lrs = np.load(tmp_path / "all" / "lr.npy")
    loo = exact_leave_one_out(model, train, val, theta0, order, lrs, 32, 0.0)
    loo = centred_by_class(loo, train["y"].ravel())  # the default target
    r_all, r_final = _pearson(scores["all"], loo), _pearson(scores["final"], loo)
    fd = _fd_pearsons(model, train, val, tmp_path, order, lrs, loo)
    print(
        f"N=1024 LOO: Pearson all={r_all:.4f} final={r_final:.4f}; fd all={fd['all']:.4f} "
        f"final={fd['final']:.4f}"
    )
    assert r_all >= 0.98
    assert r_final >= 0.9
    assert fd["all"] >= r_all - 0.01 and fd["final"] >= r_final - 0.01
