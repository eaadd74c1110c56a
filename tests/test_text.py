"""Text classifiers: word indices (columns ``x__0..x__11``, or a per-sample CSV of them) through
an ``Embed`` layer, then a mean or an LSTM built in a ``RecurrentInput`` loop.

The results are trained here by ``nnabla_cli train`` from definitions written the way the
console saves them (``support/text_netdef.py``) on datasets in the layout of the console's text
plugin (``support/console_kinds.write_text``). The losses are checked against a float64 forward
written without nnabla and against nnabla's own loader; the replay steps (Embed's gradient is
non-zero only in the rows of the batch's words) against float64 differences; the scores
against exact leave-one-out re-runs of the replayed epoch. nnabla's Embed reads any index
without a bounds check (a wrong loss, or a crash): word indices outside the dictionary are
refused in one line.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from sgd_influence_plugin import cli, core
from sgd_influence_plugin.replay_steps import ExactStep, FiniteDifferenceStep
from support import console_kinds as kinds
from support.oracles import pearson_with_leave_one_out
from support.results import TABLE_SCRIPT, load_trained, train_on
from support.text_netdef import TextSpec, text_float64
from support.user_files import one_line_error, rewrite_cell

HEADS = {"text": "mean", "text_lstm": "lstm"}


def _nnabla_own_losses(nnp, x, y):
    """MainValidation's per-sample losses from nnabla's own loader (as nnabla_cli), the Delays'
    first states at the Constant 0 their generators give."""
    import nnabla as nn
    from nnabla.utils.load import load

    nn.clear_parameters()
    info = load([nnp], prepare_data_iterator=False, batch_size=len(x))
    net = info.networks["MainValidation"]
    net.variables["Input"].variable_instance.d = x
    net.variables["SoftmaxCrossEntropy_T"].variable_instance.d = y
    for name in ("Delay_Initial", "Delay_2_Initial"):
        if name in net.variables:
            net.variables[name].variable_instance.d = 0
    out = net.variables["SoftmaxCrossEntropy"].variable_instance
    out.forward()
    nn.clear_parameters()
    return np.array(out.d).ravel()


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_word_indices_reach_embed_as_nnabla_gives_them(trained, kind):
    data, result = trained(kind)
    model, train, val = load_trained(result, data)
    assert model.info.input_shapes == {"x": (12,), "y": (1,)}  # x__0..x__11; '# x:text' unread
    assert np.array_equal(train["x"][0], [21, 21, 5, 4, 36] + [0] * 7)  # the CSV's first row
    values = {k: np.array(v.d) for k, v in model._params.items()}
    want = text_float64(values, train["x"], train["y"], HEADS[kind])[0]
    np.testing.assert_allclose(core.per_sample_losses(model, train), want, rtol=1e-5, atol=1e-6)
    own = _nnabla_own_losses(os.path.join(result, "results.nnp"), val["x"], val["y"])
    np.testing.assert_allclose(core.per_sample_losses(model, val), own, rtol=1e-6, atol=1e-7)


def _check_steps(model, train, head):
    """<u, grad l_i> and v' H u of both replay steps against float64 central differences of
    :func:`text_float64`, for a batch and for one sample; the exact H u's Embed rows of words
    outside the batch are exactly 0."""
    theta = model.get_params()
    names = list(model.graph(16).params)
    rng = np.random.RandomState(0)
    u, v = ([rng.randn(*theta[k].shape).astype(np.float32) for k in names] for _ in "uv")
    for idx in (np.arange(16), np.arange(3, 4)):

        def losses(du, dv, idx=idx):  # float64 per-sample losses at theta + du u + dv v
            at = {k: np.float64(theta[k]) + du * np.float64(a) + dv * np.float64(b)
                  for k, a, b in zip(names, u, v)}  # fmt: skip
            return text_float64(at, train["x"][idx], train["y"][idx], head)[0]

        e = 1e-4
        dots_want = (losses(e, 0) - losses(-e, 0)) / (2 * e)
        vhu_want = np.mean(losses(e, e) - losses(e, -e) - losses(-e, e) + losses(-e, -e))
        vhu_want /= 4 * e * e
        for step, tol in ((ExactStep(model), 1e-4), (FiniteDifferenceStep(model), 0.05)):
            dots, hu = step(train, idx, u)
            vhu = sum(float(np.sum(a.astype(np.float64) * b)) for a, b in zip(v, hu))
            assert np.max(np.abs(dots - dots_want)) <= tol * np.max(np.abs(dots_want)), step.name
            assert abs(vhu - vhu_want) <= tol * abs(vhu_want), step.name
        dots, hu = ExactStep(model)(train, idx, u)
        rows = hu[names.index("Embed/embed/W")]
        unused = np.setdiff1d(np.arange(len(rows)), train["x"][idx].astype(int))
        assert np.all(rows[unused] == 0) and np.any(rows != 0)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_replay_steps_through_embed_match_float64_differences(trained, kind):
    data, result = trained(kind)
    model, train, _ = load_trained(result, data)
    _check_steps(model, train, HEADS[kind])


def test_an_embed_inside_the_loop_gets_every_steps_gradient(tmp_path):
    """One word per step through an Embed inside the RecurrentInput loop: its weight is taken
    by the 12 copies of the layer, fed to them through one Identity, and its indices are
    followed back through the loop to the column x."""
    data = kinds.write_text(str(tmp_path / "data"), 64, 40, seed=3)
    spec = TextSpec(head="lstm", embed_in_loop=True, solver="Adam", lr=0.02, max_epoch=2)
    model, train, _ = load_trained(train_on(str(tmp_path / "result"), data, spec), data)
    assert model.info.word_indices == {"x": ("Embed", 50)}
    assert "Embed/embed/W: taken by 12 functions, fed to them through one Identity" in (
        model.info.notes
    )
    _check_steps(model, train, "lstm")


@pytest.mark.parametrize("kind, lr", [("text", 0.1), ("text_lstm", 0.02)])
def test_text_scores_match_exact_leave_one_out(trained, tmp_path, kind, lr):
    """Measured: mean head at 0.1, Pearson 0.999 (all, exact) / 0.995 (final); the LSTM at
    0.02, 0.9999 / 0.979 (fd 0.966 / 0.959)."""
    data, result = trained(kind)
    model, train, val = load_trained(result, data)
    runs = (("all", "exact"), ("final", "exact"), ("final", "fd"))
    r = pearson_with_leave_one_out(model, train, val, tmp_path, runs, lr=lr, batch_size=16)
    print(f"{kind} LOO: Pearson {r}")
    assert r["all", "exact"] >= 0.98 and r["final", "exact"] >= 0.95 and r["final", "fd"] >= 0.94


def _run(data, result, train, tmp_path):
    argv = ["run", "--model", os.path.join(result, "results.nnp"), "--train", train]
    argv += ["--val", data["val"], "--output", str(tmp_path / "o" / "i.csv"), "--quiet"]
    return cli.main(argv)


@pytest.mark.parametrize(
    "value, why",
    [
        ("50", r"50 is not a word index of Embed layer 'Embed' \(0\.\.49"),
        ("-1", r"-1 is not a word index of Embed layer 'Embed' \(0\.\.49"),
        ("2.5", r"2\.5 is not a whole number, but Embed layer 'Embed' reads it as a word index"),
    ],
)
def test_a_word_index_outside_the_dictionary_is_refused(trained, tmp_path, capsys, value, why):
    """nnabla's Embed reads index 50 of a 50-word dictionary (or -1) from memory beyond its
    weights and truncates 2.5 to 2: the run used to end with exit 0 and a score computed
    from whatever was there."""
    data, result = trained("text_lstm")
    train = str(tmp_path / "train.csv")
    with open(data["train"]) as src, open(train, "w") as dst:
        dst.write(src.read())
    header = open(train).readline().strip().split(",")
    rewrite_cell(train, 4, header.index("x__2"), value)
    assert _run(data, result, train, tmp_path) == 2
    one_line_error(capsys, rf"train\.csv row 5, column 'x__2': {why}")
    assert not (tmp_path / "o").exists()


def test_a_huge_word_index_is_refused_not_a_crash(trained, tmp_path):
    """Index 1e8 made nnabla's Embed read far outside its weights: a segmentation fault, which
    killed ``sgd-influence run`` (exit 139, no message) and, in the console's script, a worker
    ("ended with exit code -11 ... out of memory? try fewer jobs")."""
    data, result = trained("text")
    train = str(tmp_path / "train.csv")
    with open(data["train"]) as src, open(train, "w") as dst:
        dst.write(src.read())
    rewrite_cell(train, 7, 3 + 11, "100000000")  # x__11 of row 8
    proc = subprocess.run(
        [sys.executable, TABLE_SCRIPT, "-t", train, "-v", data["val"], "-o",
         str(tmp_path / "o" / "i.csv")], cwd=result, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.returncode
    last = proc.stderr.strip().splitlines()[-1]
    assert "train.csv row 8, column 'x__11': 100000000 is not a word index" in last
    assert not (tmp_path / "o").exists()


def test_a_word_index_in_a_per_sample_csv_is_named_by_its_file(tmp_path, capsys):
    data = kinds.write_text(str(tmp_path / "data"), 64, 40, seed=3, files=True)
    result = train_on(str(tmp_path / "result"), data, TextSpec(head="mean", max_epoch=1))
    with open(os.path.join(data["folder"], "text", "9.csv"), "w") as f:
        f.write("\n".join(["3"] * 6 + ["64"] + ["0"] * 5) + "\n")
    assert _run(data, result, data["train"], tmp_path) == 2
    one_line_error(capsys, r"train\.csv row 10, column 'x:image' \(text/9\.csv, value 7 of "
                   r"12\): 64 is not a word index of Embed layer 'Embed' \(0\.\.49")  # fmt: skip


def test_word_indices_are_no_features_to_standardize(trained, tmp_path):
    """One long text puts word 2 in the last place, where every other text has ended (0): its
    spread is 90x below the first place's. That is how texts are, not unscaled features, and
    the run used to ask to standardize them (which would break the Embed)."""
    import yaml

    data, result = trained("text")
    train = str(tmp_path / "train.csv")
    lines = open(data["train"]).read().splitlines()
    rows = [line.rsplit(",", 1)[0] + ",0" for line in lines[1:]]
    rows[0] = rows[0][: -len(",0")] + ",2"
    with open(train, "w") as f:
        f.write("\n".join([lines[0]] + rows) + "\n")
    assert _run(data, result, train, tmp_path) == 0
    settings = yaml.safe_load(open(tmp_path / "o" / "i_settings.yaml"))
    assert not any("differ" in w for w in settings["warnings"]), settings["warnings"]
