"""Results whose loss does not compare the output with one label column: autoencoders (the
target is the input ``x``, as the console writes it: a ``SquaredError_T`` variable fed by
``x``, or the input variable itself; Deconvolution and Unpooling in the decoder; Dropout
as masking noise), a VAE (a random sample), image targets (``y:image`` a PNG or a per-sample
CSV) and a per-pixel segmentation (a label map), each trained by ``nnabla_cli train``
(``support/unsup_netdef.py``).

Oracles: each row's loss and each step's gradient are the console trainer's own (nnabla's
loader fills every variable a column feeds); the scores follow exact leave-one-out re-runs
of the replayed epoch; the influence CSV keeps the dataset's own header and its target
files open from the output folder, and ``cleanse`` reads it back.
"""

from __future__ import annotations

import csv
import os
import re

import numpy as np
import pytest
import yaml

from sgd_influence_plugin import cli, core, influence
from sgd_influence_plugin.settings import InfluenceSettings
from support import console_kinds as kinds
from support.oracles import console_gradient, console_losses, exact_leave_one_out
from support.results import load_trained, rewritten_definition, train_on
from support.unsup_netdef import UnsupSpec, write_images
from support.user_files import one_line_error

#: kind -> (dataset target, spec)
KINDS = {
    "ae": (None, UnsupSpec(arch="ae")),
    "ae_same_variable": (None, UnsupSpec(arch="ae", same_variable=True)),
    "conv_ae": (None, UnsupSpec(arch="conv_ae")),
    "img2img": ("image", UnsupSpec(arch="img2img", lr=0.1)),
    "img2img_csv": ("csv", UnsupSpec(arch="img2img", lr=0.1, target_shape=(8, 8))),
    "segment": ("labels_png", UnsupSpec(arch="segment", normalize=False)),
    "segment_csv": ("labels", UnsupSpec(arch="segment", target_shape=(8, 8))),
    "vae": (None, UnsupSpec(arch="vae", lr=0.1)),
    "vae_generator": (None, UnsupSpec(arch="vae", lr=0.1, noise="generator")),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("unsup")
    made = {}

    def get(kind):
        if kind not in made:
            target, spec = KINDS[kind]
            data = write_images(str(root / kind / "data"), 48, 24, target=target)
            made[kind] = data, train_on(str(root / kind / "result"), data, spec)
        return made[kind]

    return get


def _run(tmp_path, data, *model_args, extra=()):
    out = tmp_path / "o"
    argv = ["run", *model_args, "--train", data["train"], "--val", data["val"], "--quiet"]
    status = cli.main(argv + ["--output", str(out / "influence.csv"), *extra])
    return status, out


@pytest.mark.parametrize(
    "kind", ["ae", "ae_same_variable", "conv_ae", "img2img", "img2img_csv", "segment"]
)
def test_losses_and_gradients_are_the_console_trainers(trained, kind):
    """The console's autoencoder feeds ``x`` to ``Input`` and to ``SquaredError_T``; the
    replay filled only the second (its input stayed zero: losses 0.014 off, exit 0)."""
    data, result = trained(kind)
    model, train, _ = load_trained(result, data)
    nnp = os.path.join(result, "results.nnp")
    idx = np.arange(2, 18)
    rows = {k: v[idx] for k, v in train.items()}
    want = console_losses(nnp, train, idx)
    np.testing.assert_allclose(core.per_sample_losses(model, rows, 16), want, rtol=1e-5)
    grads = console_gradient(nnp, train, idx)
    for name, g in core.validation_gradient(model, rows, len(idx)).items():
        np.testing.assert_allclose(g, grads[name], rtol=1e-4, atol=1e-6 * np.abs(g).max())


def test_the_two_autoencoder_forms_give_the_same_scores(trained, tmp_path):
    scores = []
    for kind in ("ae", "ae_same_variable"):
        data, result = trained(kind)
        model, train, val = load_trained(result, data)
        got = influence.compute_influence(
            model, train, val, InfluenceSettings(trials=1, seed=2), cache_dir=str(tmp_path / kind)
        )
        scores.append(got.scores)
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("kind", ["ae", "img2img"])
def test_scores_follow_exact_leave_one_out(trained, tmp_path, kind):
    """One trial against the exact re-runs of its epoch without each row (plain target: no
    class to centre by)."""
    data, result = trained(kind)
    model, train, val = load_trained(result, data)
    assert model.info.label_classes == {}
    theta0 = model.get_params()
    settings = InfluenceSettings(trials=1, seed=3, cache="all", replay_step="exact")
    got = influence.compute_influence(model, train, val, settings, cache_dir=str(tmp_path / "c"))
    model.set_params(theta0)
    order = np.load(str(tmp_path / "c" / "order.npy"))
    lrs = np.load(str(tmp_path / "c" / "lr.npy"))
    loo = exact_leave_one_out(model, train, val, theta0, order, lrs, 8, 0.0)
    r = np.corrcoef(got.scores, loo)[0, 1]
    assert r > 0.99


def _rows(out):
    table = kinds.read_rows(os.path.join(out, "influence.csv"))
    return table["header"], [dict(zip(table["header"], r)) for r in table["rows"]]


def test_an_autoencoders_outputs(trained, tmp_path):
    """The target is the input: the dataset's one column once (it was repeated as a label),
    no class, a summary by loss."""
    data, result = trained("ae")
    status, out = _run(tmp_path, data, "--model", os.path.join(result, "results.nnp"),
                       extra=["--report"])  # fmt: skip
    assert status == 0
    header, rows = _rows(out)
    assert header.count("x:image") == 1 and header[0] == "x:image"
    assert all(r["suggested_label"] == "" and r["action"] == "keep" for r in rows)
    summary = (out / "influence_summary.txt").read_text()
    assert "per class" not in summary and "by training loss" in summary
    facts = yaml.safe_load((out / "influence_settings.yaml").read_text())
    assert facts["used"]["target"] == "plain"
    assert any("SquaredError_T: reads column 'x'" in n for n in facts["network_changes"])


@pytest.mark.parametrize("kind", ["img2img", "img2img_csv", "segment_csv"])
def test_an_image_target_is_shown_and_opens(trained, tmp_path, kind):
    """``y:image`` (a PNG, or a per-sample CSV the network reshapes) is the label column, its
    files named from the output folder (they were the training CSV's text, or left out)."""
    data, result = trained(kind)
    status, out = _run(tmp_path, data, "--model", os.path.join(result, "results.nnp"),
                       extra=["--report"])  # fmt: skip
    assert status == 0
    header, rows = _rows(out)
    assert header[:2] == ["x:image", "y:image"]
    train = kinds.read_rows(data["train"])["rows"]
    for r in rows:
        want = os.path.join(os.path.dirname(data["train"]), train[int(r["datasource_index"])][1])
        assert os.path.samefile(os.path.join(out, r["y:image"]), want)
    summary = (out / "influence_summary.txt").read_text()
    assert "per class" not in summary
    assert "per class" not in (out / "influence_report.html").read_text()
    cleansed = tmp_path / "c" / "cleansed.csv"
    argv = ["cleanse", "--influence", str(out / "influence.csv"), "--train", data["train"]]
    assert cli.main(argv + ["--output", str(cleansed), "--remove", "3"]) == 0  # was refused
    kept = kinds.read_rows(str(cleansed))["rows"]
    assert len(kept) == len(train) - 3
    assert all(os.path.isfile(os.path.join(cleansed.parent, r[1])) for r in kept)
    changed = os.path.join(os.path.dirname(data["train"]), f"changed_{kind}.csv")
    rows = [list(r) for r in train]
    rows[0][1] = rows[1][1]  # another row's target file
    with open(changed, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([["x:image", "y:image"], *rows])
    argv = ["cleanse", "--influence", str(out / "influence.csv"), "--train", changed]
    assert cli.main(argv + ["--output", str(tmp_path / "d" / "c.csv"), "--remove", "3"]) == 2


def _edited(influence, dest, action, suggested=None):
    """A copy of the influence CSV at ``dest`` with its first row's action (and
    suggested_label) set, and its settings beside it when the original has them."""
    table = kinds.read_rows(str(influence))
    header, rows = table["header"], [list(r) for r in table["rows"]]
    rows[0][header.index("action")] = action
    if suggested is not None:
        rows[0][header.index("suggested_label")] = suggested
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])
    return str(dest)


@pytest.mark.parametrize("kind", ["ae", "img2img", "segment", "segment_csv"])
@pytest.mark.parametrize("beside", [True, False], ids=["settings", "moved"])
def test_a_relabel_without_classes_is_refused_for_its_reason(trained, tmp_path, capsys, kind,
                                                             beside):  # fmt: skip
    """``relabel`` on an autoencoder's, an image target's or a label map's row: with a
    typed suggested_label, cleanse wrote it over the target file's name in ``y:image``
    (``img/7.png,2``: a dataset nnabla cannot read, exit 0); without one, it called the
    influence CSV damaged. The network has no class to give: one line says so, whether the
    run's settings are beside the CSV or not, and nothing is written."""
    data, result = trained(kind)
    status, out = _run(tmp_path, data, "--model", os.path.join(result, "results.nnp"))
    assert status == 0
    where = out if beside else tmp_path / "moved"
    typed = "the network that scored these rows has no classes" if beside else (
        "is the file '" if kind != "ae" else "no label column")  # fmt: skip
    for suggested, why in (("2", typed), (None, "suggested_label is empty in every row")):
        influence = _edited(out / "influence.csv", where / f"edited_{suggested}.csv", "relabel",
                            suggested)  # fmt: skip
        if beside:
            facts = (out / "influence_settings.yaml").read_text()
            (where / f"edited_{suggested}_settings.yaml").write_text(facts)
        cleansed = tmp_path / "c" / "cleansed.csv"
        argv = ["cleanse", "--influence", influence, "--train", data["train"], "--output",
                str(cleansed)]  # fmt: skip
        assert cli.main(argv) == 2
        pattern = rf"^sgd-influence: error: {re.escape(influence)}( row 1)?: action relabel, "
        one_line_error(capsys, pattern + rf"but .*{re.escape(why)}.*; set .*keep or remove$")
        assert not cleansed.parent.exists()
    remove = _edited(out / "influence.csv", where / "removed.csv", "remove")
    argv = ["cleanse", "--influence", remove, "--train", data["train"], "--output",
            str(tmp_path / "c" / "cleansed.csv")]  # fmt: skip
    assert cli.main(argv) == 0
    assert len(kinds.read_rows(str(tmp_path / "c" / "cleansed.csv"))["rows"]) == 47


def test_a_label_map_has_no_class(trained, tmp_path):
    """A segmentation's label map: every pixel a class, the sample none. It was taken for a
    classifier's label (its first pixel the class, the class-centred target by it, the
    model's class an arg-max over every pixel's scores: suggested_label 36 of 3 classes)."""
    data, result = trained("segment")
    model, _, _ = load_trained(result, data)
    info = model.info
    assert (info.label_classes, info.label_maps, info.target_column) == ({}, {"y": 3}, "y")
    status, out = _run(tmp_path, data, "--model", os.path.join(result, "results.nnp"))
    assert status == 0
    _, rows = _rows(out)
    assert all(r["suggested_label"] == "" and r["confidence"] == "" for r in rows)
    facts = yaml.safe_load((out / "influence_settings.yaml").read_text())
    assert facts["used"]["target"] == "plain"


def test_a_label_map_class_beyond_the_output_is_refused(trained, tmp_path, capsys):
    """A label map read through a Reshape (a per-sample CSV): each value is checked, not
    only a first one (before: not at all, exit 0)."""
    data, result = trained("segment_csv")
    cell = kinds.read_rows(data["val"])["rows"][5][1]
    path = os.path.join(os.path.dirname(data["val"]), cell)
    values = np.loadtxt(path, delimiter=",")
    before = values[4, 6]
    values[4, 6] = 3
    np.savetxt(path, values, fmt="%d", delimiter=",")
    try:
        status, _ = _run(tmp_path, data, "--model", os.path.join(result, "results.nnp"))
    finally:
        values[4, 6] = before
        np.savetxt(path, values, fmt="%d", delimiter=",")
    assert status == 2
    one_line_error(capsys, r"val\.csv row 6, column 'y:image': the label map holds 3, not a "
                   r"class index 0\.\.2")  # fmt: skip


def test_a_normalized_label_map_is_refused(tmp_path, capsys):
    """A PNG label map read with the image normalization (class k becomes k/255)."""
    data = write_images(str(tmp_path / "data"), 48, 24, target="labels_png")
    result = train_on(str(tmp_path / "r"), data, UnsupSpec(arch="segment", max_epoch=1))
    status, _ = _run(tmp_path, data, "--model", os.path.join(result, "results.nnp"))
    assert status == 2
    one_line_error(capsys, r"train\.csv row \d+, column 'y:image': the label map holds "
                   r"0\.00[0-9]+, not a class index 0\.\.2; .*image normalization")  # fmt: skip


def test_a_vaes_random_sample_is_refused_in_one_line(trained, tmp_path, capsys):
    """A Randn layer draws a new sample at every pass: left live, the replay differentiated
    other draws than the training phase took (here it stopped on a traceback: its shape is
    the definition's batch size)."""
    data, result = trained("vae")
    status, out = _run(tmp_path, data, "--model", os.path.join(result, "results.nnp"))
    assert status == 2 and not out.exists()
    one_line_error(capsys, r"results\.nnp: function '.*Randn' \(Randn\) of network 'Main' draws "
                   r"new random values at every step, .*feed the mean to the decoder")  # fmt: skip


def test_a_vaes_noise_generator_is_refused_and_a_constant_one_runs(trained, tmp_path, capsys):
    data, result = trained("vae_generator")
    status, _ = _run(tmp_path, data, "--model", os.path.join(result, "results.nnp"))
    assert status == 2
    one_line_error(capsys, r"fills 'Noise' from a 'Normal' generator, .*a VAE's noise of 0 "
                   r"feeds the mean to the decoder")  # fmt: skip

    def constant(proto):
        for owner in (*proto.optimizer, *proto.monitor, *proto.executor):
            for g in owner.generator_variable:
                g.type, g.multiplier = "Constant", 0.0

    status, out = _run(tmp_path, data, *rewritten_definition(result, tmp_path, constant))
    assert status == 0
    header, rows = _rows(out)
    assert header[0] == "x:image" and "y:image" not in header
    assert np.all(np.isfinite([float(r["influence"]) for r in rows]))


def test_a_cropping_augmentation_is_refused_in_one_line(trained, tmp_path, capsys):
    """ImageAugmentation with a smaller ``shape`` crops at random: it became the identity,
    and the replay stopped on a traceback (Affine: size of input 64 != 36) or, where the
    next layer takes any size (a convolution), read other pixels than the console trained on.
    """
    data, result = trained("conv_ae")

    def crop(proto):
        net = next(n for n in proto.network if n.name == "Main")
        v = net.variable.add()
        v.name, v.type = "Cropped", "Buffer"
        v.shape.dim.extend([-1, 1, 6, 6])
        f = net.function.add()
        f.name, f.type = "ImageAugmentation", "ImageAugmentation"
        f.input.append("Input")
        f.output.append("Cropped")
        f.image_augmentation_param.shape.dim.extend([1, 6, 6])
        conv = next(g for g in net.function if g.type == "Convolution")
        conv.input[0] = "Cropped"

    status, out = _run(tmp_path, data, *rewritten_definition(result, tmp_path, crop))
    assert status == 2 and not out.exists()
    one_line_error(capsys, r"function 'ImageAugmentation' \(ImageAugmentation\) of network "
                   r"'Main' is random and changes the shape \(-1, 1, 8, 8\) to "
                   r"\(-1, 1, 6, 6\) \(a crop\)")  # fmt: skip
