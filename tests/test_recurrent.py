"""Networks with loops: the console's recurrent layers (RecurrentInput, Delay,
RecurrentOutput) and repeated layers (RepeatStart, RepeatEnd).

The results are trained here by ``nnabla_cli train`` from definitions written the way the
console saves them (``support/loops_netdef.py``): loops unexpanded, a Delay's initial state
filled by a Constant generator. The unrolled network is checked against a float64 forward
written without nnabla and against ``nnabla_cli forward``; the exact replay step against
float64 differences (a recurrent layer's weights are taken at every step); the scores against
exact leave-one-out re-runs of the replayed epoch.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from sgd_influence_plugin import cli, core
from sgd_influence_plugin.nnabla_adapter import load_model
from sgd_influence_plugin.replay_steps import ExactStep
from support import console_kinds as kinds
from support.loops_netdef import LoopSpec, loop_proto, rnn_float64
from support.oracles import pearson_with_leave_one_out
from support.results import console_outputs, load_trained, rewritten_definition, train_on
from support.user_files import one_line_error


def test_unrolled_rnn_gives_float64_losses_and_nnabla_cli_outputs(trained, tmp_path):
    data, result = trained("rnn")
    model, train, _ = load_trained(result, data)
    info = model.info
    assert info.input_shapes == {"x": (12, 1), "y": (1,)}
    assert info.generated == {"Delay_Initial": ("Constant", 0.0)} == info.runtime_generated
    assert "Main: loops unrolled by nnabla (RecurrentInput x 12)" in info.notes
    values = {k: np.array(v.d) for k, v in model._params.items()}
    want, scores = rnn_float64(values, train["x"], train["y"])
    n = len(want)
    for batch in (n, 1):  # the whole set at once, and one sample at a time
        g = model.graph(batch)
        got = []
        for start in range(0, n, batch):
            for col, var in g.inputs.items():
                var.d = train[col][start : start + batch]
            g.loss.forward()
            got.append(np.array(g.loss.d).ravel())
        np.testing.assert_allclose(np.concatenate(got), want, rtol=1e-5, atol=1e-6)
    console = console_outputs(result, data["train"], str(tmp_path))
    np.testing.assert_allclose(model.predict(train), console, atol=1e-6)
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    np.testing.assert_allclose(model.predict(train), probs / probs.sum(1, keepdims=True), atol=1e-6)
    assert model.features(train).shape == (n, 6)  # the last step's state, before Affine_2


def test_exact_step_sums_the_recurrent_weights_gradient_over_every_step(trained):
    """<u, grad l_i> and v' H u of the fused double backward against float64 central
    differences of the float64 forward. nnabla's graph builder gives each of the 12 uses of
    the recurrent weights a variable of its own, and nn.grad found one of them: v' H u came
    out at 0.48 of the truth, and the scores' Pearson with leave-one-out at 0.27."""
    data, result = trained("rnn")
    model, train, _ = load_trained(result, data)
    theta = model.get_params()
    names = list(model.graph(16).params)
    rng = np.random.RandomState(0)
    u, v = ([rng.randn(*theta[k].shape).astype(np.float32) for k in names] for _ in "uv")
    idx = np.arange(16)

    def losses(du, dv):  # float64 per-sample losses at theta + du * u + dv * v
        at = {k: np.float64(theta[k]) + du * np.float64(a) + dv * np.float64(b)
              for k, a, b in zip(names, u, v)}  # fmt: skip
        return rnn_float64(at, train["x"][idx], train["y"][idx])[0]

    e = 1e-4
    dots_want = (losses(e, 0) - losses(-e, 0)) / (2 * e)
    vhu_want = np.mean(losses(e, e) - losses(e, -e) - losses(-e, e) + losses(-e, -e)) / (4 * e * e)
    dots, hu = ExactStep(model)(train, idx, u)
    vhu = sum(float(np.sum(a.astype(np.float64) * b)) for a, b in zip(v, hu))
    assert np.max(np.abs(dots - dots_want)) <= 1e-5 * np.max(np.abs(dots_want))
    assert abs(vhu - vhu_want) <= 1e-4 * abs(vhu_want)
    assert any("through one Identity" in n for n in model.info.notes)


def test_rnn_scores_match_exact_leave_one_out(trained, tmp_path):
    """At the replay rate 0.02 (one removed row moves the parameters within the loss's linear
    range; at the console's 0.1 a few rows' re-runs are far from it: a first-order estimate's
    limit, not the replay's, whose steps the test above checks)."""
    data, result = trained("rnn")
    model, train, val = load_trained(result, data)
    runs = (("all", "exact"), ("final", "exact"), ("all", "fd"))
    r = pearson_with_leave_one_out(model, train, val, tmp_path, runs, lr=0.02, batch_size=16)
    print(f"RNN LOO: Pearson {r}")
    assert r["all", "exact"] >= 0.98 and r["final", "exact"] >= 0.95
    assert r["all", "fd"] >= r["all", "exact"] - 0.01


def _run(data, model_args, tmp_path):
    argv = ["run", *model_args, "--train", data["train"], "--val", data["val"], "--quiet"]
    return cli.main(argv + ["--output", str(tmp_path / "o" / "i.csv")])


def test_a_random_initial_state_is_refused_in_one_line(trained, tmp_path, capsys):
    data, result = trained("rnn")

    def normal(proto):
        for owner in (*proto.optimizer, *proto.monitor, *proto.executor):
            for g in owner.generator_variable:
                g.type = "Normal"

    assert _run(data, rewritten_definition(result, tmp_path, normal), tmp_path) == 2
    one_line_error(capsys, r"net\.nntxt \+ .*parameters\.h5: optimizer 'Optimizer' fills "
                   r"'Delay_Initial' from a 'Normal' generator, .* give it a Constant "
                   r"generator")  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_a_loop_layer_outside_any_defined_loop_is_refused_in_one_line(trained, tmp_path, capsys):
    """Without its repeat_info, nnabla would call RecurrentInput a layer it does not have."""
    data, result = trained("rnn")

    def no_loops(proto):
        for net in proto.network:
            del net.repeat_info[:]

    assert _run(data, rewritten_definition(result, tmp_path, no_loops), tmp_path) == 2
    one_line_error(capsys, r"net\.nntxt \+ .*parameters\.h5: layer 'RecurrentInput' "
                   r"\(RecurrentInput\) of network 'Main' belongs to a loop 'RecurrentInput' "
                   r"that the network does not define")  # fmt: skip
    assert not (tmp_path / "o").exists()


def _nnabla_own_losses(nnp, x, y):
    """MainValidation's per-sample losses from nnabla's own loader (as nnabla_cli)."""
    import nnabla as nn
    from nnabla.utils.load import load

    nn.clear_parameters()
    info = load([nnp], prepare_data_iterator=False, batch_size=len(x))
    net = info.networks["MainValidation"]
    net.variables["Input"].variable_instance.d = x
    net.variables["SoftmaxCrossEntropy_T"].variable_instance.d = y
    out = net.variables["SoftmaxCrossEntropy"].variable_instance
    out.forward()
    nn.clear_parameters()
    return np.array(out.d).ravel()


def test_a_layer_repeated_with_weights_of_its_own(tmp_path):
    """RepeatStart / RepeatEnd with ``{RepeatStart}`` in the weights' names: the parameters file
    holds ``Affine_1[0]/...`` and ``Affine_1[1]/...`` (the run used to say they were missing)."""
    data = kinds.write_table(str(tmp_path / "data"), 64, 40, seed=1)
    spec = LoopSpec(loop="repeat", n_classes=3, solver="Adam", lr=0.01, max_epoch=2)
    result = train_on(str(tmp_path / "result"), data, spec)
    nnp = os.path.join(result, "results.nnp")
    model = load_model(model=nnp)
    assert {"Affine_1[0]/affine/W", "Affine_1[1]/affine/b"} <= set(model.info.trainable)
    assert "Main: loops unrolled by nnabla (RepeatStart x 2)" in model.info.notes
    _, train, val = load_trained(result, data)
    want = _nnabla_own_losses(nnp, val["x"], val["y"])
    np.testing.assert_allclose(core.per_sample_losses(model, val), want, rtol=1e-5, atol=1e-6)
    assert _run(data, ["--model", nnp], tmp_path) == 0


def test_the_writer_saves_the_loops_unexpanded():
    """The fixture is what the console saves: loop layers and a generator, not a flat graph."""
    proto = loop_proto(LoopSpec(input_shape=(5, 2)))
    main = proto.network[0]
    assert [(r.id, r.times) for r in main.repeat_info] == [("RecurrentInput", 5)]
    kinds_ = {f.type for f in main.function}
    assert {"RecurrentInput", "Delay", "RecurrentOutput"} <= kinds_
    assert [g.type for g in proto.optimizer[0].generator_variable] == ["Constant"]


@pytest.mark.parametrize("head", ["softmax_ce", "sigmoid_bce"])
def test_float64_oracle_is_the_loss_it_names(head):
    """rnn_float64's loss is cross entropy of its own scores (a check of the oracle itself)."""
    rng = np.random.RandomState(0)
    k = 3 if head == "softmax_ce" else 1
    values = {"Affine/affine/W": rng.randn(4, 3), "Affine/affine/b": rng.randn(3),
              "Affine_2/affine/W": rng.randn(3, k), "Affine_2/affine/b": rng.randn(k)}  # fmt: skip
    x, y = rng.randn(6, 5, 1), rng.randint(0, 3 if k == 3 else 2, (6, 1))
    losses, z = rnn_float64(values, x, y, head)
    if head == "softmax_ce":
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        want = -np.log(p[np.arange(6), y.ravel()])
    else:
        p = 1 / (1 + np.exp(-z[:, 0]))
        want = -(y.ravel() * np.log(p) + (1 - y.ravel()) * np.log(1 - p))
    np.testing.assert_allclose(losses, want, rtol=1e-12)


def test_no_traceback_from_the_console_script_on_a_random_state(trained, tmp_path):
    from support.results import TABLE_SCRIPT

    data, result = trained("rnn")

    def uniform(proto):
        for owner in (*proto.optimizer, *proto.executor):
            for g in owner.generator_variable:
                g.type = "Uniform"

    args = rewritten_definition(result, tmp_path, uniform)
    proc = subprocess.run(
        [sys.executable, TABLE_SCRIPT, "-c", args[1], "-p", args[3], "-t", data["train"], "-v",
         data["val"]], cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'Uniform' generator" in proc.stderr.strip().splitlines()[-1]


def test_fixed_generators_give_what_nnabla_cli_train_gives():
    from nnabla.utils.load import _get_generator
    from nnabla.utils.nnabla_pb2 import GeneratorVariable

    from sgd_influence_plugin.nnabla_adapter.recurrent import generated_value

    for kind, m in (("Constant", 0.0), ("Constant", 0.5), ("Range", 2.0)):
        g = GeneratorVariable(variable_name="v", type=kind, multiplier=m)
        np.testing.assert_array_equal(generated_value(kind, m, (3, 4)), _get_generator(g)((3, 4)))


def test_a_fresh_initialisation_draws_every_repeat_of_a_repeated_layer(tmp_path):
    """evaluate --retrain scratch: the seed's initialisation has the names nnabla_cli train
    loads (``Affine_1[0]/...``, one per repeat, not the definition's ``{RepeatStart}`` ones,
    which nnabla ignored: the repeats started from its own fixed draw at every seed), each
    repeat drawn apart, as nnabla draws them."""
    import h5py

    from sgd_influence_plugin.evaluate import _definition_text
    from sgd_influence_plugin.nnabla_adapter.training import initial_parameters

    data = kinds.write_table(str(tmp_path / "data"), 48, 20, seed=1)
    spec = LoopSpec(loop="repeat", n_classes=3, solver="Adam", lr=0.01, max_epoch=1)
    result = train_on(str(tmp_path / "result"), data, spec)
    text = _definition_text({"model": os.path.join(result, "results.nnp")})
    drawn = []
    for seed in (0, 1):
        path = initial_parameters(text, seed, str(tmp_path / f"init{seed}.h5"))
        with h5py.File(path, "r") as h:
            found = {}
            h.visititems(
                lambda n, o, f=found: (
                    f.update({n: o[()]}) if "/" in n and isinstance(o, h5py.Dataset) else None
                )
            )
            drawn.append(found)
    saved = load_model(model=os.path.join(result, "results.nnp")).get_params()
    assert set(drawn[0]) == set(saved)
    w0, w1 = "Affine_1[0]/affine/W", "Affine_1[1]/affine/W"
    assert drawn[0][w0].shape == (6, 6) and not np.allclose(drawn[0][w0], drawn[0][w1])
    assert not np.allclose(drawn[0][w0], drawn[1][w0])
    # Glorot normal: sqrt(2 / (fan in + fan out))
    np.testing.assert_allclose(drawn[0][w0].std(), np.sqrt(2 / 12), rtol=0.5)
