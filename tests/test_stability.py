"""The stable replay: curvature against a dense float64 Hessian, the automatic rate, the check
of every trial (retry and refusal), trial combining, and the loss column."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from sgd_influence_plugin import core, curvature, influence, resolved, trials
from sgd_influence_plugin.errors import UnstableReplayError
from sgd_influence_plugin.settings import InfluenceSettings
from support.oracles import LogReg, theta_of
from support.results import load_trained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lanczos_extremes_against_numpy_eigvalsh():
    rng = np.random.RandomState(0)
    q, _ = np.linalg.qr(rng.randn(40, 40))
    eig = np.concatenate([[-3.0, -0.5], np.linspace(0.1, 2.0, 37), [25.0]])
    a = (q * eig) @ q.T
    hi, lo = curvature.lanczos_extremes(lambda v: a @ v, 40, 40, rng)
    assert hi == pytest.approx(25.0, rel=1e-8) and lo == pytest.approx(-3.0, rel=1e-8)
    # A few iterations: inner estimates, already close for well-separated extremes.
    hi6, lo6 = curvature.lanczos_extremes(lambda v: a @ v, 40, 6, np.random.RandomState(1))
    assert -3.0 <= lo6 < 0 and 20.0 < hi6 <= 25.0


def test_batch_hessian_extremes_against_dense_float64_hessian(results, data7):
    """Softmax regression: the fused-graph HVP and its Lanczos extremes against the closed-form
    dense Hessian of the same mini-batch, in float64."""
    m, tr, _ = load_trained(results("logreg"), data7)
    theta = theta_of(m.get_params())
    dense = LogReg(tr["x"], tr["y"], 10)
    idx = np.array([3, 8, 11, 19, 20, 27, 31, 33, 40, 41, 42, 44, 45, 47, 48, 49])
    H = dense.hessian(theta, idx)
    matvec, dim = curvature.batch_hvp(core.GraphCache(m, fused=True), tr, idx)
    assert dim == H.shape[0]
    v = np.random.RandomState(2).randn(dim)
    np.testing.assert_allclose(matvec(v), H @ v, rtol=1e-4, atol=1e-5 * np.abs(H @ v).max())
    eig = np.linalg.eigvalsh(H)
    hi, lo = curvature.lanczos_extremes(matvec, dim, 60, np.random.RandomState(3))
    assert hi == pytest.approx(eig[-1], rel=1e-3)
    assert lo <= 1e-3 * eig[-1]  # convex: the bottom of the spectrum is ~0
    # measure() on every batch of the epoch: its top eigenvalue is one of the batches' own.
    curv = curvature.measure(m, tr, 16, seed=0, batches=3, iterations=60)
    assert curv.batches == 3 and curv.batch_size == 16
    tops = []
    perm = np.random.RandomState(0).permutation(50)
    for k in range(3):
        tops.append(np.linalg.eigvalsh(dense.hessian(theta, perm[k * 16 : (k + 1) * 16]))[-1])
    np.testing.assert_allclose(sorted(curv.batch_lambda_max), sorted(tops), rtol=1e-3)
    assert curv.lambda_max == pytest.approx(max(tops), rel=1e-3)


def test_curvature_measured_in_two_processes_is_the_same_to_the_bit(results, data28):
    """With a second process (``helper``) the last batch's Lanczos runs there: the batches,
    the start vectors and every eigenvalue are those of one process."""
    from sgd_influence_plugin import coworker

    m, tr, _ = load_trained(results("mlp"), data28)
    used = []

    def helper(fn):
        used.append(fn)
        return coworker.helper(fn)

    one = curvature.measure(m, tr, 8, seed=4)
    two = curvature.measure(m, tr, 8, seed=4, helper=helper)
    assert len(used) == 1 and one.batches == two.batches == 3
    one.seconds = two.seconds = 0.0
    assert one == two


def _curv(hi, lo):
    return curvature.Curvature(hi, lo, [hi], [lo], 1, 6, 32, 0.0)


def test_stable_lr_rule():
    # Step curvature decides: 0.25 / 20 = 0.0125.
    c = curvature.stable_lr(_curv(20.0, 0.0), steps=100, cap=0.1)
    assert c.lr == pytest.approx(0.012) and "lambda_max" in c.limit
    # Negative curvature decides: 0.5 / (100 * 1) = 0.005.
    c = curvature.stable_lr(_curv(20.0, -1.0), steps=100, cap=0.1)
    assert c.lr == pytest.approx(0.005) and "lambda_min" in c.limit
    # Weight decay shifts the spectrum: lambda_min + 1.5 > 0, and lambda_max + 1.5 = 21.5.
    c = curvature.stable_lr(_curv(20.0, -1.0), steps=100, cap=0.1, weight_decay=1.5)
    assert c.lr == pytest.approx(0.011)
    # The solver's own rate is the ceiling of the automatic rate.
    c = curvature.stable_lr(_curv(20.0, -1.0), steps=100, cap=0.001)
    assert c.lr == 0.001 and "own rate" in c.limit
    assert curvature.breaks_rule(0.05, _curv(20.0, -1.0), 100)
    assert not curvature.breaks_rule(0.005, _curv(20.0, -1.0), 100)


def test_combine_trials_no_trial_dominates():
    rng = np.random.RandomState(0)
    a, b, c = rng.randn(3, 200)
    same, scales = core.combine_trials(np.stack([a, b, c]))
    # Equal scales up to the RMS normalization: the combination ranks like the normalized mean.
    ref = np.mean([x / np.sqrt(np.mean(x**2)) for x in (a, b, c)], axis=0)
    np.testing.assert_array_equal(np.argsort(same), np.argsort(ref))
    # Blow one trial up 1000x: the ranking does not move, the units stay those of a typical trial.
    blown, scales2 = core.combine_trials(np.stack([a, 1000 * b, c]))
    np.testing.assert_array_equal(np.argsort(blown), np.argsort(same))
    assert scales2[1] == pytest.approx(1000 * scales[1])
    assert np.sqrt(np.mean(blown**2)) < 3 * max(scales[0], scales[2])
    # Whereas a raw mean would be that trial alone.
    raw = np.mean([a, 1000 * b, c], axis=0)
    assert np.corrcoef(raw, b)[0, 1] > 0.999


def test_trial_problem():
    ok = np.ones(5)
    assert trials.trial_problem(ok, 1.2) is None
    assert "not finite" in trials.trial_problem(np.array([1.0, np.nan, np.inf]), 1.0)
    assert "overflowed" in trials.trial_problem(ok, float("inf"))
    assert "grew" in trials.trial_problem(ok, trials.GROWTH_LIMIT * 1.5)
    # The training phase's epoch must not wreck the model (validation loss 0.5 -> 3).
    assert trials.trial_problem(ok, 1.0, 0.9, 0.5) is None
    assert "diverged" in trials.trial_problem(ok, 1.0, 3.0, 0.5)
    assert "diverged" in trials.trial_problem(ok, 1.0, float("nan"), 0.5)


def test_auto_lr_is_used_and_recorded(results, data28, tmp_path):
    """Default settings: the rate is the measured stable rate (at most the solver's), the cache
    and settings.yaml record the rate actually used, and the replay did not blow up."""
    from sgd_influence_plugin.runner import RunRequest, run

    folder = results("mlp")
    out = tmp_path / "out" / "influence.csv"
    req = RunRequest(
        output=str(out),
        model=os.path.join(folder, "results.nnp"),
        train=data28["train"],
        val=data28["val"],
        settings=InfluenceSettings(trials=2, seed=3),
        cache_dir=str(tmp_path / "cache"),
    )
    paths, res = run(req)
    solver_lr = res.resolved.solver_lr
    expected = curvature.stable_lr(res.resolved.curvature, 8, cap=solver_lr).lr
    assert res.resolved.lr == expected <= solver_lr and res.resolved.lr_source == "auto"
    for t in range(2):
        lrs = np.load(tmp_path / "cache" / f"trial_{t:02d}" / "lr.npy")
        np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    facts = yaml.safe_load(open(paths.settings))
    assert facts["requested"]["lr"] == "auto" and facts["requested"]["trials"] == 2
    assert facts["used"]["lr"] == pytest.approx(float(lrs[0]), rel=1e-6)
    assert facts["used"]["seeds"] == [3, 4]
    sel = facts["lr_selection"]
    assert sel["source"] == "auto" and sel["lr"] == facts["used"]["lr"]
    lambda_max = res.resolved.curvature.lambda_max
    assert sel["curvature"]["lambda_max"] == pytest.approx(lambda_max, rel=1e-3)
    assert [t["lr"] for t in facts["trials"]] == [expected, expected]
    assert res.timings["u_growth"] < trials.GROWTH_LIMIT and not res.warnings
    # The CSV holds the combined scores, and the trials file each trial's raw scores.
    with open(paths.csv) as f:
        rows = list(csv.DictReader(f))
    got = {int(r["datasource_index"]): float(r["influence"]) for r in rows}
    np.testing.assert_allclose([got[i] for i in range(256)], res.scores, rtol=1e-12)
    with open(paths.trials) as f:
        trows = list(csv.DictReader(f))
    # (64 validation rows: the two-way check's orders, from each half, follow the trials)
    orders = [f"candidate_order_{h}{m}" for h in ("", "b_") for m in (0, 1)]
    assert list(trows[0]) == ["datasource_index", "trial_0", "trial_1", *orders]
    raw = np.array([[float(r["trial_0"]), float(r["trial_1"])] for r in trows]).T
    np.testing.assert_allclose(raw, res.trial_scores, rtol=1e-12)
    combined, _ = core.combine_trials(raw)
    np.testing.assert_allclose(combined, res.scores, rtol=1e-12)


def test_loss_column_equals_closed_form_losses(results, data7, tmp_path):
    """The `loss` column: each sample's loss at the trained parameters (softmax regression in
    float64), not at the parameters after the training phase."""
    from sgd_influence_plugin.runner import RunRequest, run

    folder = results("logreg")
    m, tr, _ = load_trained(results("logreg"), data7)
    theta0 = theta_of(m.get_params())
    ref = LogReg(tr["x"], tr["y"], 10).losses(theta0, np.arange(50))
    paths, res = run(
        RunRequest(
            output=str(tmp_path / "o" / "influence.csv"),
            model=os.path.join(folder, "results.nnp"),
            train=data7["train"],
            val=data7["val"],
            settings=InfluenceSettings(trials=1, lr=0.5),
        )
    )
    np.testing.assert_allclose(res.losses, ref, rtol=1e-4)
    with open(paths.csv) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:4] == ["x:image", "y:label", "influence", "loss"]
    got = {int(r["datasource_index"]): float(r["loss"]) for r in rows}
    np.testing.assert_allclose([got[i] for i in range(50)], ref, rtol=1e-4)


def test_user_lr_above_the_stable_rate_is_warned_before_the_run(results, data28):
    m, tr, va = load_trained(results("mlp"), data28)
    said = []
    res = influence.compute_influence(
        m, tr, va, InfluenceSettings(lr=1.0, trials=1, retries=4), log=said.append
    )
    warn = [i for i, s in enumerate(said) if "above the stable rate" in s]
    first_trial = min(i for i, s in enumerate(said) if s.startswith("trial 1/"))
    assert warn and warn[0] < first_trial
    stable = curvature.stable_lr(res.resolved.curvature, 8, cap=np.inf).lr
    assert f"stable rate {stable:g}" in said[warn[0]]
    assert res.resolved.lr == 1.0 and res.resolved.lr_source == "given"


def test_unstable_trials_are_retried_at_a_quarter_rate(results, data28):
    """lr=1000 makes every trial blow up; each trial is checked and retried until stable."""
    m, tr, va = load_trained(results("mlp"), data28)
    theta0 = m.get_params()
    res = influence.compute_influence(m, tr, va, InfluenceSettings(lr=1000.0, trials=2, retries=8))
    assert np.all(np.isfinite(res.scores)) and np.all(np.isfinite(res.trial_scores))
    for t in res.trials:
        assert t.attempts >= 2 and t.lr == pytest.approx(1000.0 / 4 ** (t.attempts - 1))
        assert t.u_growth <= trials.GROWTH_LIMIT
    assert sum("retried at lr=" in w for w in res.warnings) == sum(
        t.attempts - 1 for t in res.trials
    )
    for k, v in m.get_params().items():
        np.testing.assert_array_equal(v, theta0[k])


def test_unstable_run_is_refused_and_nothing_is_written(results, data28, tmp_path):
    m, tr, va = load_trained(results("mlp"), data28)
    with pytest.raises(UnstableReplayError, match="unstable at lr=1000"):
        influence.compute_influence(m, tr, va, InfluenceSettings(lr=1000.0, trials=1, retries=0))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=ROOT, TMPDIR=str(tmp_path / "tmp"))
    os.makedirs(tmp_path / "tmp")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sgd_influence_plugin.cli",
            "run",
            "--model",
            os.path.join(results("mlp"), "results.nnp"),
            "--train",
            data28["train"],
            "--val",
            data28["val"],
            "--output",
            str(out / "influence.csv"),
            "--lr",
            "1000",
            "--trials",
            "1",
            "--retries",
            "0",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert "unstable at lr=1000" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and os.listdir(tmp_path / "tmp") == []


def test_trials_in_worker_processes_equal_trials_one_after_another(results, data28):
    """--jobs 2 forks two workers (the data and the model shared copy-on-write): the scores,
    each trial's raw scores and orders are those of the same trials run in this process."""
    m, tr, va = load_trained(results("mlp"), data28)
    theta0 = m.get_params()
    serial = influence.compute_influence(m, tr, va, InfluenceSettings(trials=3, seed=2, jobs=1))
    forked = influence.compute_influence(m, tr, va, InfluenceSettings(trials=3, seed=2, jobs=2))
    assert serial.timings["jobs"] == 1 and forked.timings["jobs"] == 2
    np.testing.assert_array_equal(forked.trial_scores, serial.trial_scores)
    np.testing.assert_array_equal(forked.scores, serial.scores)
    for a, b in zip(forked.orders, serial.orders):
        np.testing.assert_array_equal(a, b)
    assert [t.seed for t in forked.trials] == [2, 3, 4]
    for k, v in m.get_params().items():  # the parent's model is untouched
        np.testing.assert_array_equal(v, theta0[k])


def test_a_lone_trial_replays_in_two_processes_with_the_same_scores(results, data28):
    """One trial with two cores: the fd step's two passes run in two processes (settings.yaml
    says so), and the scores are those of the replay in one process, bit for bit."""
    m, tr, va = load_trained(results("mlp"), data28)
    one = influence.compute_influence(m, tr, va, InfluenceSettings(trials=1, seed=2, jobs=1))
    two = influence.compute_influence(m, tr, va, InfluenceSettings(trials=1, seed=2, jobs=2))
    assert one.timings["replay_processes"] == 1 and two.timings["replay_processes"] == 2
    np.testing.assert_array_equal(one.scores, two.scores)
    exact = influence.compute_influence(
        m, tr, va, InfluenceSettings(trials=1, seed=2, jobs=2, replay_step="exact")
    )
    three = influence.compute_influence(m, tr, va, InfluenceSettings(trials=3, seed=2, jobs=2))
    assert exact.timings["replay_processes"] == three.timings["replay_processes"] == 1


def test_replay_step_setting_reaches_the_replay(results, data7):
    """The default replay step is 'fd' (finite differences): on softmax regression (smooth) its
    scores agree with the exact step's to well under 1%, and differ from them at all (so the
    setting reached the replay)."""
    m, tr, va = load_trained(results("logreg"), data7)
    common = dict(trials=1, seed=1, lr=0.5)
    exact = influence.compute_influence(m, tr, va, InfluenceSettings(replay_step="exact", **common))
    fd = influence.compute_influence(m, tr, va, InfluenceSettings(**common))
    assert InfluenceSettings().replay_step == "fd"
    assert not np.array_equal(fd.scores, exact.scores)
    err = np.max(np.abs(fd.scores - exact.scores)) / np.max(np.abs(exact.scores))
    assert err < 5e-3


def test_scores_that_tell_no_sample_from_another_are_refused():
    """The check after the computation: all-equal scores (e.g. all 0) are an error, not a
    result (the rate checks above stop the known causes before computing)."""
    import numpy as np

    from sgd_influence_plugin import influence
    from sgd_influence_plugin.errors import ComputationError

    run = resolved.ResolvedSettings(lr=1e-3, weight_decay=0.0, batch_size=16)
    with pytest.raises(ComputationError, match=r"all 50 influence scores are 0: .*nothing was"):
        influence.check_spread(np.zeros(50), run)
    influence.check_spread(np.linspace(-1, 1, 50), run)


def test_a_diverging_automatic_rate_does_not_advise_lr_auto(world):
    from sgd_influence_plugin.dataset import load_dataset
    from sgd_influence_plugin.errors import UnstableReplayError
    from sgd_influence_plugin.nnabla_adapter import load_model
    from sgd_influence_plugin.settings import InfluenceSettings

    model = load_model(world["model"])
    train = load_dataset(world["train"], model.info.input_shapes).arrays
    val = load_dataset(world["val"], model.info.input_shapes).arrays
    settings = InfluenceSettings(trials=1, retries=0)
    for source, advice in (("auto", r"--lr auto is already in use: give a smaller --lr number"),
                           ("given", r"Give a smaller --lr \(or --lr auto\)")):  # fmt: skip
        run = resolved.ResolvedSettings(lr=1e6, weight_decay=0.0, batch_size=16, lr_source=source)
        with pytest.raises(UnstableReplayError, match=advice):
            trials.run_trial(
                model, train, val, settings, run, str(world["tmp"] / "c"), 0, None, 2.3
            )
