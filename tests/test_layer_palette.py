"""The console palette's activations and math, one layer at a time (support/palette_netdef.py),
each in a tiny classifier trained by ``nnabla_cli train``, checked against oracles:

(a) each row's loss as the tool computes it in a batch equals nnabla's own loader of the
    console's training network fed that row alone (no row mixed with another);
(b) the replay step's products ``<u, grad l_i>`` equal a batch-size-1 loop of nnabla's backward
    (and the console trainer's gradient, from nnabla's loader);
(c) the exact step's ``H u`` (nnabla's double backward) is the limit of the fd step's on every
    layer, and the fd step at its default size agrees with it where the layer is smooth;
    where nnabla cannot differentiate a layer twice the exact step is refused and the
    curvature takes the fd products;
(d) the model's outputs and class equal ``nnabla_cli forward``'s.

A layer that works along the batch axis breaks (a): such a network is refused in one line
naming the layer. A new layer is one line of :data:`LAYERS` (and one of the support table).
"""

import numpy as np
import pytest

from sgd_influence_plugin import cli, core, curvature, replay_steps, resolved
from sgd_influence_plugin.errors import SettingsError
from sgd_influence_plugin.nnabla_adapter.rows import mixing_layer
from sgd_influence_plugin.settings import InfluenceSettings
from support.netdef import NetSpec
from support.oracles import console_gradient, console_losses, per_sample_dots
from support.palette_netdef import PALETTE_KINDS
from support.results import console_outputs, load_trained, train_result
from support.user_files import one_line_error

#: layer -> what it is: ``kink`` (its derivative jumps: the fd step's H u is a smoothed one and
#: is not compared), ``once`` (nnabla 1.39 differentiates it once only: no exact step), ``fast``
#: (in the default suite; the others are slow).
LAYERS = {
    "ReLU": "kink fast", "LeakyReLU": "kink", "PReLU": "kink", "ELU": "", "SELU": "kink",
    "CELU": "", "CReLU": "kink", "Swish": "", "GELU": "fast", "Mish": "once fast",
    "Softplus": "", "Softsign": "kink", "Tanh": "", "Sigmoid": "", "HardSigmoid": "kink",
    "HardTanh": "kink", "LogSigmoid": "", "ReLU6": "kink", "Abs": "kink", "Exp": "",
    "Log": "", "PowScalar": "", "Sqrt": "", "AddScalar": "", "MulScalar": "",
    "Add2": "", "Sub2": "", "Mul2": "", "Div2": "", "Pow2": "", "Maximum2": "kink fast",
    "Minimum2": "kink", "Sum": "", "Mean": "", "Max": "kink", "Softmax": "", "LogSoftmax": "",
    "Convolution": "", "Deconvolution": "fast", "DepthwiseConvolution": "once",
    "DepthwiseDeconvolution": "once", "MaxPooling": "kink", "AveragePooling": "",
    "SumPooling": "", "GlobalAveragePooling": "", "Unpooling": "", "BatchMatmul": "fast",
    "Affine": "",
}  # fmt: skip
#: layers over the batch axis -> the layer the refusal names
MIXING = {"Softmax_axis0": "Softmax", "Mean_axis0": "Mean"}


def _cases(kinds):
    return [
        pytest.param(k, marks=() if "fast" in LAYERS.get(k, "fast") else pytest.mark.slow)
        for k in kinds
    ]


@pytest.fixture(scope="module")
def palette(tmp_path_factory, data7):
    made = {}

    def get(kind):
        if kind not in made:
            spec = NetSpec(arch="palette_" + kind, batch_size=16, lr=0.1, max_epoch=3)
            folder = train_result(tmp_path_factory.mktemp("p_" + kind), data7, spec)
            made[kind] = (folder,) + load_trained(folder, data7)
        return made[kind]

    return get


def test_every_layer_of_the_support_table_is_checked():
    assert sorted(PALETTE_KINDS) == sorted(list(LAYERS) + list(MIXING))


@pytest.mark.parametrize("kind", _cases(LAYERS))
def test_a_rows_loss_in_a_batch_is_the_rows_alone(palette, kind):
    folder, m, tr, _ = palette(kind)
    batched = core.per_sample_losses(m, tr, 16)
    alone = core.per_sample_losses(m, tr, 1)
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-6)
    nnp = folder + "/results.nnp"
    console = [console_losses(nnp, tr, np.array([i]))[0] for i in range(4)]
    np.testing.assert_allclose(batched[:4], console, rtol=1e-5, atol=1e-6)
    assert mixing_layer(m, tr) is None


@pytest.mark.parametrize("kind", _cases(LAYERS))
def test_replay_products_are_nnabla_s_backward_and_the_steps_agree(palette, kind):
    folder, m, tr, va = palette(kind)
    u = core.validation_gradient(m, va)
    ul, idx = [u[k] for k in m.graph(16).params], np.arange(16)
    ref = per_sample_dots(m, tr, idx, ul)
    scale = np.max(np.abs(ref))
    # The parameters and the gradient the console's trainer takes (nnabla's loader), row 3:
    trainer = console_gradient(folder + "/results.nnp", tr, np.array([3]))
    assert sorted(trainer) == sorted(u)
    assert abs(sum(float(np.sum(trainer[k] * u[k])) for k in u) - ref[3]) <= 1e-5 * scale
    assert replay_steps.step_for(m, "fd") == "fd"
    fd_dots, _ = replay_steps.FiniteDifferenceStep(m)(tr, idx, ul)
    # The default step (1e-2 of ||theta||): within 3% on smooth layers (measured <= 2.9e-2,
    # PowScalar); where a kink switches between the two points, up to 20% (ReLU).
    assert np.max(np.abs(fd_dots - ref)) <= (0.3 if "kink" in LAYERS[kind] else 0.05) * scale
    if "once" in LAYERS[kind]:
        with pytest.raises(NotImplementedError):
            replay_steps.ExactStep(m)(tr, idx, ul)
        assert curvature.hvp_operator(m, 16)[1] == "fd"
        settings = InfluenceSettings(replay_step="exact")
        with pytest.raises(SettingsError, match="exact replay step needs second derivatives"):
            resolved.choose_lr(m, tr, settings, resolved.resolve(m, settings))
        return
    exact_dots, exact_hu = replay_steps.ExactStep(m)(tr, idx, ul)
    assert np.max(np.abs(exact_dots - ref)) <= 1e-5 * scale

    def hu_error(rel_step):  # of the fd step's H u against the exact step's
        _, fd_hu = replay_steps.FiniteDifferenceStep(m, rel_step)(tr, idx, ul)
        a, b = (
            np.concatenate([h.ravel() for h in hu]).astype(np.float64) for hu in (exact_hu, fd_hu)
        )
        return np.linalg.norm(b - a) / np.linalg.norm(a)

    # A step that crosses no kink: nnabla's double backward is the fd limit on every layer
    # (measured <= 3e-4); at the default step, smooth layers within 20% (measured <= 0.16,
    # LogSoftmax), where kinked ones get a smoothed Hessian (ReLU 1.9, PReLU 1.0 off).
    assert hu_error(1e-4) <= 2e-3
    if "kink" not in LAYERS[kind]:
        assert hu_error(replay_steps.FD_REL_STEP) <= 0.2


@pytest.mark.parametrize("kind", _cases(LAYERS))
def test_the_model_s_outputs_are_nnabla_cli_forward_s(palette, data7, kind, tmp_path):
    folder, m, _, va = palette(kind)
    want = console_outputs(folder, data7["val"], str(tmp_path))
    got = m.predict(va)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.array_equal(got.argmax(1), want.argmax(1))


@pytest.mark.parametrize("kind", sorted(MIXING))
def test_a_layer_over_the_batch_axis_is_refused_naming_it(
    palette, data7, kind, tmp_path, capsys, monkeypatch
):
    """Two guards, each tested alone: the definition's axis (nnabla_adapter.batch_axis,
    before any row is read) and, with that guard switched off, the two-batch probe of the
    rows (nnabla_adapter.rows)."""
    from sgd_influence_plugin.nnabla_adapter import replay_network

    layer = MIXING[kind]
    monkeypatch.setattr(replay_network, "check_batch_axis", lambda net, where: None)
    folder, m, tr, _ = palette(kind)
    # What the replay would otherwise differentiate: losses that are not the rows' own.
    batched, alone = core.per_sample_losses(m, tr, 16), core.per_sample_losses(m, tr, 1)
    assert np.max(np.abs(batched - alone)) > 0.1
    assert mixing_layer(m, tr) == (layer, layer)
    probe = (rf"results\.nnp: layer '{layer}' \({layer}\) of network 'Main' mixes the rows "
             r"of a batch .*\(an axis other than the batch axis 0\) and train again$")  # fmt: skip
    axis = (
        rf"results\.nnp: function '@Main/{layer}' \({layer}\) of network 'Main' works across axis 0"
    )
    out = tmp_path / "out"
    given = ["--model", folder + "/results.nnp", "--train", data7["train"], "--val", data7["val"],
             "--quiet"]  # fmt: skip
    for pattern in (probe, axis):
        for argv in (
            ["run", "--output", str(out / "influence.csv")],
            ["check", "--output", str(out / "check.csv")],
            ["evaluate", "--test", data7["val"], "--output-dir", str(out)],
        ):
            assert cli.main(argv + given) == 2
            one_line_error(capsys, pattern)
            assert not out.exists()
        monkeypatch.undo()  # the first guard back: it refuses before the rows are read


def test_the_probe_compares_values_as_float32_gives_them():
    from sgd_influence_plugin.nnabla_adapter.rows import _same

    x = np.array([np.nan, np.inf, 3.0, 1e-9])
    assert _same(x, x.copy())  # a NaN or inf of the row itself is no mixing
    assert _same(x, x + np.array([0, 0, 1e-6, 1e-9]))  # float32 rounding
    assert not _same(x, x + np.array([0, 0, 1e-2, 0]))
    assert not _same(x, np.array([1.0, np.inf, 3.0, 1e-9]))
