"""Cross-fitting (issue 37): a run that recommends writes the influence of *every* validation
row, chooses its candidates from half A only and checks them on half B.

The oracles are other runs, not this code's output: ``--no-recommend`` on the same seed (the
influence of every validation row, one replay, the code path that existed before), and
``--no-recommend`` with a validation CSV holding half A's rows alone (what the candidates must
be ordered by). Several query vectors in one replay (:mod:`.crossfit`) are checked against
one :func:`.replay.replay` per vector.
"""

import os

import numpy as np
import pytest
import yaml

from sgd_influence_plugin import cli, core, crossfit, replay
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.heldout_check import split_validation
from sgd_influence_plugin.nnabla_adapter import load_model
from support.output_checks import column, rows_csv


def _run(data, folder, out, *extra, val=None):
    """``sgd-influence run`` in this process; the influence CSV's path."""
    argv = ["run", "--model", os.path.join(folder, "results.nnp"), "--train", data["train"]]
    argv += ["--val", val or data["val"], "--output", str(out), "--quiet", *extra]
    assert cli.main(argv) == 0
    return str(out)


# (options of both runs) x the ways the two vectors are replayed: one process (jobs 1, two
# trials, so combining trials is covered), the second vector in a helper process (jobs 2),
# the exact step's shared graph with an all-parameters cache.
WAYS = {
    "fd_one_process_two_trials": ["--jobs", "1", "--trials", "2"],
    "fd_helper_process": ["--jobs", "2"],
    "exact_all_parameters": ["--jobs", "1", "--replay-step", "exact", "--cache", "all"],
}


@pytest.mark.parametrize("way", sorted(WAYS))
def test_the_defaults_influence_is_every_validation_rows_and_the_candidates_half_as(
    trained, tmp_path, way
):
    data, folder = trained("binary")  # 240 training rows, 200 validation rows
    opts = WAYS[way]
    rec = _run(data, folder, tmp_path / "rec" / "influence.csv", *opts)
    off = _run(data, folder, tmp_path / "off" / "influence.csv", *opts, "--no-recommend")
    facts = yaml.safe_load(open(tmp_path / "rec" / "influence_settings.yaml"))
    # the run recommended: half A chose, half B checked
    assert facts["validation_rows"] == {
        "influence": 200,
        "candidates": 100,
        "heldout_for_check": 100,
    }
    assert facts["recommendation"]["available"], facts["recommendation"]["reason"]

    # THE influence: every validation row, the same as --no-recommend on the same seed
    want = column(off, "influence")
    got = column(rec, "influence")
    scale = np.max(np.abs(want))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * scale)
    trials = str(tmp_path / "rec" / "influence_trials.csv")
    n_trials = 2 if "--trials" in opts else 1
    for m in range(n_trials):
        np.testing.assert_allclose(
            column(trials, f"trial_{m}"),
            column(str(tmp_path / "off" / "influence_trials.csv"), f"trial_{m}"),
            rtol=0, atol=1e-6 * scale,
        )  # fmt: skip

    # The candidates' order: half A's rows alone, as a --no-recommend run on them gives it
    first, held = split_validation(200, 0)
    assert len(first) == len(held) == 100 and not set(first) & set(held)
    half_a = rows_csv(data["val"], first, f"half_a_{way}.csv")
    _run(data, folder, tmp_path / "a" / "influence.csv", *opts, "--no-recommend", val=half_a)
    a_trials = str(tmp_path / "a" / "influence_trials.csv")
    for m in range(n_trials):
        order = column(trials, f"candidate_order_{m}")
        np.testing.assert_allclose(
            order, column(a_trials, f"trial_{m}"), rtol=0, atol=1e-6 * np.max(np.abs(order))
        )
        # and it is not the influence: the check's half B is in that one
        assert np.max(np.abs(order - column(trials, f"trial_{m}"))) > 0.01 * scale


@pytest.mark.parametrize("step", ["exact", "fd"])
def test_several_vectors_in_one_replay_are_each_vectors_replay(results, data28, step):
    """replay_vectors against replay.replay of each vector alone: one process, a helper
    process, and the parameters of each step from a function (all-parameters mode)."""
    from sgd_influence_plugin import coworker

    m = load_model(model=os.path.join(results("smooth"), "results.nnp"))
    train = load_dataset(data28["train"], m.info.input_shapes).arrays
    val = load_dataset(data28["val"], m.info.input_shapes).arrays
    u = core.validation_gradient(m, val)
    u_a = core.validation_gradient(m, {k: v[:20] for k, v in val.items()})
    train = {k: v[:97] for k, v in train.items()}
    order = np.random.RandomState(3).permutation(97)  # the last step has one row (padded)
    lrs = np.full(core.n_steps(97, 32), 0.05)
    theta = m.get_params()
    shifted = {k: v * np.float32(1.01) for k, v in theta.items()}
    for params_at in (None, lambda t: shifted if t % 2 else theta):
        want = []
        for vec in (u, u_a):
            m.set_params(theta)
            want.append(replay.replay(m, train, order, lrs, 32, vec, 1e-3, params_at, step=step))
        for helper in (None, coworker.helper):
            m.set_params(theta)
            infl, stats = crossfit.replay_vectors(
                m, train, order, lrs, 32, [u, u_a], 1e-3, params_at, step=step, helper=helper
            )
            assert infl.shape == (2, 97) and len(stats) == 2
            for k, (w_infl, w_stats) in enumerate(want):
                np.testing.assert_allclose(
                    infl[k], w_infl, rtol=1e-6, atol=1e-9 * np.abs(w_infl).max()
                )
                assert stats[k].u_growth == pytest.approx(w_stats.u_growth, rel=1e-6)
    m.set_params(theta)


@pytest.mark.slow
def test_the_defaults_influence_matches_leave_one_out_as_every_validation_rows_does(tmp_path):
    """Fidelity at the defaults (issue 37): a smooth CNN, N=512, 256 validation rows, the run
    with its recommendation (half A chooses, half B checks) against exact leave-one-out
    re-runs of its replayed epoch, judged on every validation row; printed beside the scores
    of half A alone (what the influence column held before cross-fitting). About 1 min."""
    from support.fashion_mnist import make_png_dataset
    from support.netdef import NetSpec
    from support.oracles import centred_by_class, exact_leave_one_out
    from support.results import train_result

    data = make_png_dataset(tmp_path / "data", 512, 256, size=14, seed=7)
    folder = train_result(
        tmp_path / "result", data, NetSpec(arch="smooth_cnn", batch_size=32, lr=0.05, max_epoch=3)
    )
    first, _ = split_validation(256, 0)
    half_a = rows_csv(data["val"], first, "half_a.csv")
    got = {}
    for cache in ("all", "final"):
        for name, extra in (("defaults", []), ("half_a", ["--no-recommend"])):
            out = tmp_path / f"{name}_{cache}" / "influence.csv"
            args = ["--cache", cache, "--cache-dir", str(tmp_path / f"c_{name}_{cache}")]
            _run(data, folder, out, *args, *extra, val=half_a if name == "half_a" else None)
            got[name, cache] = column(str(out), "influence")
    facts = yaml.safe_load(open(tmp_path / "defaults_all" / "influence_settings.yaml"))
    assert facts["validation_rows"]["heldout_for_check"] == 128  # it did recommend
    model = load_model(model=os.path.join(folder, "results.nnp"))
    train = load_dataset(data["train"], model.info.input_shapes).arrays
    val = load_dataset(data["val"], model.info.input_shapes).arrays
    cache = tmp_path / "c_defaults_all"
    order, lrs = np.load(cache / "order.npy"), np.load(cache / "lr.npy")
    wd = float(facts["used"]["weight_decay"])
    plain = exact_leave_one_out(model, train, val, model.get_params(), order, lrs, 32, wd)
    loo = centred_by_class(plain, train["y"].ravel())  # the default target
    r = {k: float(np.corrcoef(v, loo)[0, 1]) for k, v in got.items()}
    print("LOO Pearson: " + ", ".join(f"{n} {c} {v:.4f}" for (n, c), v in sorted(r.items())))
    assert r["defaults", "all"] >= 0.98 and r["defaults", "final"] >= 0.9
