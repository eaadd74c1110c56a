"""Networks with the console's binarized and quantized layers (support/quant_netdef.py),
trained by nnabla_cli train: which replay step they get and what the user is told.

Such a layer's forward is a step and nnabla trains it with a straight-through gradient, so the
fd step's loss differences (the step's jumps over 2 eps) are not the products of the gradient
the training used. The oracle of those products is a batch-size-1 loop of nnabla's own
backward; the oracle of the scores, exact leave-one-out re-runs of the replayed epoch.
"""

import os

import numpy as np
import pytest
import yaml

from sgd_influence_plugin import core, curvature, fidelity, replay, replay_steps, resolved
from sgd_influence_plugin.errors import SettingsError
from sgd_influence_plugin.runner import RunRequest, run
from sgd_influence_plugin.settings import InfluenceSettings
from support.netdef import NetSpec
from support.oracles import exact_leave_one_out, per_sample_dots
from support.results import load_trained, train_result

#: arch -> the straight-through layer kinds nnabla_cli train's graph holds
EXPECTED = {
    "btanh_mlp": ["BinaryTanh"],
    "bsig_mlp": ["BinarySigmoid"],
    "sign_mlp": ["Sign"],
    "round_mlp": ["Round"],
    "bc_mlp": ["BinaryConnectAffine"],
    "bw_mlp": ["BinaryWeightAffine"],
    "bc_lenet": ["BinaryConnectConvolution"],
    "bw_lenet": ["BinaryWeightConvolution"],
    "fpq_mlp": ["FixedPointQuantize"],
    "pow2_mlp": ["Pow2Quantize"],
    "bnn_mlp": ["BinaryConnectAffine", "BinaryTanh"],
    "hardtanh_mlp": [],  # kinks, but an honest gradient: fd as on ReLU
    "relu6_mlp": [],
}
TWICE = ("btanh_mlp", "bsig_mlp", "sign_mlp", "round_mlp")


@pytest.fixture(scope="module")
def quant(tmp_path_factory, data7):
    made = {}

    def get(arch):
        if arch not in made:
            spec = NetSpec(arch=arch, batch_size=16, lr=0.1, max_epoch=5)
            folder = train_result(tmp_path_factory.mktemp("q_" + arch), data7, spec)
            get.folders[arch] = folder
            made[arch] = load_trained(folder, data7)
        return made[arch]

    get.folders = {}
    return get


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_straight_through_layers_are_found_and_their_flag_is_nnabla_s(quant, arch):
    m, _, _ = quant(arch)
    kinds = [k for _, k in replay_steps.straight_through_layers(m)]
    assert kinds == EXPECTED[arch]
    # The flag says whether nnabla differentiates the layer twice: the fused graph builds.
    try:
        core.GraphCache(m, fused=True)(2)
        twice = True
    except NotImplementedError:
        twice = False
    assert twice == all(replay_steps.STRAIGHT_THROUGH[k] for k in kinds)
    chosen = replay_steps.step_for(m, "fd")
    assert chosen == ("exact" if arch in TWICE else "fd")
    assert replay_steps.step_for(m, "exact") == "exact"


def test_min_max_quantize_is_listed_as_nnabla_cannot_differentiate_it_twice():
    import nnabla as nn
    import nnabla.functions as F

    x = nn.Variable((2, 3), need_grad=True)
    y = F.min_max_quantize(x, *[nn.Variable((1, 1)) for _ in range(4)])
    with pytest.raises(NotImplementedError):
        nn.grad([F.sum(nn.grad([F.sum(y * y)], [x])[0])], [x])
    assert replay_steps.STRAIGHT_THROUGH["MinMaxQuantize"] is False


@pytest.mark.parametrize("arch", TWICE)
def test_fd_asked_runs_the_exact_step_whose_products_are_the_training_gradient(quant, arch):
    m, tr, va = quant(arch)
    u = core.validation_gradient(m, va)
    ul = [u[k] for k in m.graph(16).params]
    idx = np.arange(16)
    ref = per_sample_dots(m, tr, idx, ul)
    scale = np.max(np.abs(ref))
    exact_dots, _ = replay_steps.ExactStep(m)(tr, idx, ul)
    assert np.max(np.abs(exact_dots - ref)) <= 1e-5 * scale
    # What the fd step would give: the step's jumps, measured 50-90% of the products off.
    fd_dots, _ = replay_steps.FiniteDifferenceStep(m)(tr, idx, ul)
    assert np.max(np.abs(fd_dots - ref)) >= 0.2 * scale
    assert replay_steps.make_replay_step(m, "fd").name == "exact"
    order = core.epoch_orders(len(tr["y"]), 1, 0)[0]
    lrs = np.full(4, 0.02, np.float32)
    asked_fd, stats = replay.replay(m, tr, order, lrs, 16, u, step="fd")
    exact, _ = replay.replay(m, tr, order, lrs, 16, u, step="exact")
    assert stats.step == "exact"
    np.testing.assert_array_equal(asked_fd, exact)


def test_the_chosen_step_follows_leave_one_out_better_than_fd(quant):
    """BinarySigmoid, lr 0.02, all 50 rows: Spearman with the exact re-runs measured 0.96 for
    the exact step (what fd now runs) and 0.65 for the fd step.
    """
    m, tr, va = quant("bsig_mlp")
    theta0 = m.get_params()
    order = core.epoch_orders(len(tr["y"]), 1, 0)[0]
    lrs = np.full(4, 0.02, np.float32)
    actual = exact_leave_one_out(m, tr, va, theta0, order, lrs, 16, 0.0)
    m.set_params(theta0)
    core.sgd_epoch(m, tr, order, lrs, 16)
    u = core.validation_gradient(m, va)
    chosen, _ = replay.replay(m, tr, order, lrs, 16, u, step="fd")
    step = replay_steps.FiniteDifferenceStep(m)  # the loop itself, with the fd step forced
    raw_fd, _ = replay._backward(
        m, step, tr, order, lrs, 16, [u[k].copy() for k in m.graph(16).params], 0.0, None, None
    )
    m.set_params(theta0)
    rho_chosen = fidelity.correlations(chosen, actual)[1]
    rho_fd = fidelity.correlations(raw_fd, actual)[1]
    assert rho_chosen >= 0.9 and rho_fd <= 0.8


def _warnings(m, step):
    return resolved.resolve(m, InfluenceSettings(replay_step=step, lr=0.01)).warnings


def test_each_straight_through_network_is_named_in_one_warning(quant):
    m, _, _ = quant("btanh_mlp")
    (w,) = _warnings(m, "fd")
    assert "BinaryTanh" in w and "runs the exact step (--replay_step exact)" in w
    assert "sgd-influence check" in w and "\n" not in w
    assert resolved.resolve(m, InfluenceSettings()).replay_step == "exact"
    (w,) = _warnings(m, "exact")
    assert "BinaryTanh" in w and "sgd-influence check" in w and "runs the exact" not in w
    for arch, layer in (("bc_mlp", "BinaryConnectAffine"), ("bnn_mlp", "BinaryConnectAffine")):
        m, _, _ = quant(arch)
        (w,) = _warnings(m, "fd")
        assert f"differentiate the straight-through gradient of {layer} twice" in w
        assert "BinaryTanh twice" not in w and "sgd-influence check" in w
        assert resolved.resolve(m, InfluenceSettings()).replay_step == "fd"
        assert _warnings(m, "exact") == []  # refused in one line instead:
        with pytest.raises(SettingsError, match="exact replay step needs second derivatives"):
            settings = InfluenceSettings(replay_step="exact")
            resolved.choose_lr(m, quant(arch)[1], settings, resolved.resolve(m, settings))
    m, _, _ = quant("hardtanh_mlp")
    assert _warnings(m, "fd") == []


def test_a_binary_net_with_both_kinds_runs_fd_to_the_end(quant):
    """BinaryConnectAffine has no second derivative in nnabla, so the BinaryTanh beside it
    must not switch the run to the exact step (which the curvature would then refuse).
    """
    m, tr, _ = quant("bnn_mlp")
    settings = InfluenceSettings(lr="auto")
    run = resolved.resolve(m, settings)
    resolved.choose_lr(m, tr, settings, run)
    assert run.replay_step == "fd" and run.lr > 0
    assert curvature.hvp_operator(m, 16)[1] == "fd"


def test_a_run_records_the_step_it_ran_and_says_why(quant, data7, tmp_path):
    quant("btanh_mlp")
    out = tmp_path / "influence.csv"
    paths, result = run(
        RunRequest(
            output=str(out),
            model=os.path.join(quant.folders["btanh_mlp"], "results.nnp"),
            train=data7["train"],
            val=data7["val"],
            settings=InfluenceSettings(trials=1),
        )
    )
    facts = yaml.safe_load(open(str(out).replace(".csv", "_settings.yaml")))
    assert facts["requested"]["replay_step"] == "fd" and facts["used"]["replay_step"] == "exact"
    assert any("BinaryTanh" in w and "exact step" in w for w in facts["warnings"])
    assert np.all(np.isfinite(result.scores))


def test_a_check_records_the_step_it_ran(quant, data7, tmp_path):
    """``check`` runs the replay step ``run`` runs (the exact step where fd is asked on a
    BinaryTanh), but its settings recorded only the step asked (fd): the record of the
    check named a step it did not run."""
    from sgd_influence_plugin import cli

    quant("btanh_mlp")
    out = tmp_path / "check.csv"
    argv = ["check", "--model", os.path.join(quant.folders["btanh_mlp"], "results.nnp"),
            "--train", data7["train"], "--val", data7["val"], "--samples", "4", "--quiet",
            "--output", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    facts = yaml.safe_load(open(str(out).replace(".csv", "_settings.yaml")))
    assert facts["requested"]["replay_step"] == "fd" and facts["used"]["replay_step"] == "exact"


def test_the_warning_spells_the_option_as_the_command_line_does(quant, data7, tmp_path, capsys):
    """The warning is written once with the console dialog's ``--replay_step``; on the
    command line's stderr it reads ``--replay-step``, the spelling argparse takes."""
    from sgd_influence_plugin import cli

    quant("btanh_mlp")
    argv = ["run", "--model", os.path.join(quant.folders["btanh_mlp"], "results.nnp"),
            "--train", data7["train"], "--val", data7["val"], "--trials", "1",
            "--output", str(tmp_path / "o" / "influence.csv")]  # fmt: skip
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "(--replay-step exact)" in err and "--replay_step" not in err
