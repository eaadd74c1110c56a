"""What the user reads: summary.txt, report.html, settings.yaml and the cache, checked against
values the test computes itself; the CLI's options reaching the computation; warnings
reaching the files; networks the replay cannot model refused before anything is written."""

import csv
import html
import os
import re

import numpy as np
import pytest
import yaml

from sgd_influence_plugin import cli, core, output
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.nnabla_adapter import load_model, read_params
from sgd_influence_plugin.runner import RunRequest, run
from sgd_influence_plugin.settings import InfluenceSettings
from support.output_checks import check_report, check_summary, csv_rows, ranked_from_csv, used
from support.user_files import rewrite_cell, run_argv

# ---- the writers on scores made up here -------------------------------------------------


def test_summary_and_report_on_known_scores(data7, tmp_path):
    train = load_dataset(data7["train"], {"x": (1, 7, 7), "y": (1,)})
    rng = np.random.RandomState(4)
    scores = rng.randn(50) * 1e-3 - 2e-4  # distinct, more harmful than helpful
    scores[[5, 17, 33]] = 0.0
    with open(data7["train"], newline="") as f:
        cells = list(csv.reader(f))[1:]
    ranked = sorted(
        ((i, cells[i][1], float(scores[i]), cells[i][0]) for i in range(50)),
        key=lambda r: r[2],
    )
    warning = "a <made-up> warning & its fix"
    out = tmp_path / "o" / "influence.csv"
    content = output.RunContent(scores, train, ["x", "y"], {"lr": 0.5, "warnings": [warning]})
    paths = output.write_influence_output(str(out), content, report=True)
    counts = check_summary(open(paths.summary).read(), ranked)
    assert counts.group(4) == "3"
    assert f"warning: {warning}" in open(paths.summary).read().splitlines()
    page = open(paths.report, encoding="utf-8").read()
    check_report(page, ranked, str(tmp_path / "o"))
    assert html.escape(warning) in page and warning not in page
    # The CSV agrees with the same ranking.
    rows = csv_rows(out)
    assert [(int(r["datasource_index"]), r["y:label"], r["original"]) for r in rows] == [
        (i, lab, orig) for i, lab, _, orig in ranked
    ]
    np.testing.assert_array_equal([float(r["influence"]) for r in rows], [r[2] for r in ranked])


def test_a_second_image_input_is_shown_and_opens_from_the_output_folder(data7, tmp_path):
    """A network that reads two data-file columns (x:image and x2:image): the influence CSV
    repeats both under their own names, each cell naming, from the output folder, the file
    the training CSV's cell names (the second column used to be left out)."""
    with open(data7["train"], newline="") as f:
        header, *rows = list(csv.reader(f))
    two = os.path.join(data7["folder"], "two_images.csv")
    with open(two, "w", newline="") as f:  # x2: the image of the next row
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["x:image", "x2:image", "y:label"])
        w.writerows([r[0], rows[(k + 1) % len(rows)][0], r[1]] for k, r in enumerate(rows))
    train = load_dataset(two, {"x": (1, 7, 7), "x2": (1, 7, 7), "y": (1,)})
    scores = np.random.RandomState(2).randn(train.size)
    out = tmp_path / "elsewhere" / "o" / "influence.csv"
    content = output.RunContent(scores, train, ["x", "x2", "y"], {"lr": 0.5, "warnings": []})
    output.write_influence_output(str(out), content, report=False)
    got = csv_rows(out)
    assert list(got[0])[:3] == ["x:image", "y:label", "x2:image"]
    for r in got:
        i = int(r["datasource_index"])
        for col, cell in (("x:image", rows[i][0]), ("x2:image", rows[(i + 1) % len(rows)][0])):
            here = os.path.realpath(os.path.join(str(out.parent), r[col]))
            assert here == os.path.realpath(os.path.join(data7["folder"], cell))


# ---- the CLI end to end -----------------------------------------------------------------


def _nnabla_sgd(model, arrays, orders, lr, batch_size, wd):
    """Epochs of nnabla's own Sgd solver (with its weight_decay) over the given orders."""
    import nnabla.functions as F
    import nnabla.solvers as S

    solver = S.Sgd(lr)
    solver.set_parameters(dict(model.trainable))
    for order in orders:
        for t in range(core.n_steps(len(order), batch_size)):
            idx = core.step_indices(order, t, batch_size)
            g = model.graph(len(idx))
            for col, var in g.inputs.items():
                var.d = arrays[col][idx]
            with model.context_scope():
                obj = F.mean(g.loss)
            obj.forward()
            solver.zero_grad()
            obj.backward()
            solver.weight_decay(wd)
            solver.update()
    return model.get_params()


def test_cli_options_reach_the_replay_and_the_files(results, data28, tmp_path):
    """--lr, --weight-decay, --batch-size and --epochs 2 on the MLP: the cache holds 13 steps
    (ceil(256 / 20)) at the given rate, the last epoch's order, and the parameters of two
    epochs of nnabla's own SGD with that weight decay; summary.txt and report.html agree
    with the influence CSV."""
    folder = results("mlp")
    out = tmp_path / "o" / "influence.csv"
    cache = tmp_path / "cache"
    status = cli.main(
        [
            "run",
            "--model",
            os.path.join(folder, "results.nnp"),
            "--train",
            data28["train"],
            "--val",
            data28["val"],
            "--output",
            str(out),
            "--lr",
            "0.03",
            "--weight-decay",
            "0.002",
            "--batch-size",
            "20",
            "--epochs",
            "2",
            "--seed",
            "4",
            "--trials",
            "1",
            "--cache-dir",
            str(cache),
            "--report",
            "--quiet",
        ]
    )
    assert status == 0
    # The cache: what the training phase used.
    np.testing.assert_array_equal(np.load(cache / "lr.npy"), np.full(13, 0.03, np.float32))
    orders = core.epoch_orders(256, 2, 4)
    np.testing.assert_array_equal(np.load(cache / "order.npy"), orders[1])
    model = load_model(model=os.path.join(folder, "results.nnp"))
    assert model.info.solver.lr != 0.03 and model.info.solver.batch_size != 20
    train = load_dataset(data28["train"], model.info.input_shapes).arrays
    expected = _nnabla_sgd(model, train, orders, 0.03, 20, 0.002)
    cached = read_params(str(cache / "parameters.h5"), model.info.trainable)
    for k, v in expected.items():
        np.testing.assert_allclose(cached[k], v, rtol=1e-4, atol=1e-6)
    # settings.yaml beside the output: the values used and the 13 replayed steps.
    facts = yaml.safe_load(open(tmp_path / "o" / "influence_settings.yaml"))
    assert used(facts, "lr") == pytest.approx(0.03)
    assert used(facts, "weight_decay") == pytest.approx(0.002)
    assert used(facts, "batch_size") == 20
    assert facts["timings_seconds"]["replay_steps"] == 13
    # summary.txt and report.html against the CSV.
    ranked = ranked_from_csv(csv_rows(out))
    assert [r[2] for r in ranked] == sorted(r[2] for r in ranked)
    check_summary(open(tmp_path / "o" / "influence_summary.txt").read(), ranked)
    check_report(
        open(tmp_path / "o" / "influence_report.html", encoding="utf-8").read(),
        ranked,
        str(tmp_path / "o"),
    )


def test_stability_warnings_reach_every_output_file(results, data28, tmp_path):
    """At lr 1000 the MLP's training phase diverges: the run warns before it starts (the
    rate is above the measured stable one), retries each unstable trial at a quarter of the
    rate, and both warnings are in settings.yaml, summary.txt and report.html, not only on the
    console."""
    out = tmp_path / "influence.csv"
    logged = []
    paths, result = run(
        RunRequest(
            output=str(out),
            model=os.path.join(results("mlp"), "results.nnp"),
            train=data28["train"],
            val=data28["val"],
            settings=InfluenceSettings(lr=1000.0, trials=1, retries=8),
            report=True,
        ),
        log=logged.append,
    )
    assert np.all(np.isfinite(result.scores)) and result.trials[0].attempts > 1
    before = next(w for w in result.warnings if "above the stable rate" in w)
    retried = next(w for w in result.warnings if "retried at lr=250" in w)
    facts = yaml.safe_load(open(paths.settings))
    summary = open(paths.summary).read().splitlines()
    page = open(paths.report, encoding="utf-8").read()
    for warning in (before, retried):
        assert f"warning: {warning}" in logged
        assert warning in facts["warnings"]
        assert f"warning: {warning}" in summary
        assert f'<p class="warn">Warning: {html.escape(warning)}</p>' in page
    assert facts["trials"][0]["attempts"] == result.trials[0].attempts


# ---- networks the replay cannot model ------------------------------------------------------


def test_random_crops_are_refused_before_anything_is_written(results, data28, tmp_path, capsys):
    """A RandomCrop in the training network (here in place of its Dropout) changes the shape at
    random: exit 2, one line naming the file, the function and the fix; nothing written."""
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    folder = results("cnn_bn")
    proto = nnabla_pb2.NNablaProtoBuf()
    text_format.Merge(open(os.path.join(folder, "net.nntxt")).read(), proto)
    (main,) = [n for n in proto.network if n.name == "Main"]
    (func,) = [f for f in main.function if f.type == "Dropout"]
    func.type = "RandomCrop"
    func.ClearField("dropout_param")
    func.random_crop_param.shape.dim.extend([32])
    nntxt = tmp_path / "net.nntxt"
    nntxt.write_text(text_format.MessageToString(proto))
    out = tmp_path / "o" / "influence.csv"
    status = cli.main(
        [
            "run",
            "--config",
            str(nntxt),
            "--params",
            os.path.join(folder, "parameters.h5"),
            "--train",
            data28["train"],
            "--val",
            data28["val"],
            "--output",
            str(out),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.count("\n") == 0
    assert err.startswith("sgd-influence: error: ") and str(nntxt) in err
    assert f"'{func.name}' (RandomCrop)" in err and "pre-cropped" in err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------
# Every row of the outputs belongs to its training row (issue 18, cases 4, 5, 9)
# ----------------------------------------------------------------------------------------


def check_rows_belong(out_csv, train_csv, thumb_size=None):
    """Every promise of an influence CSV, opened the way the console opens it (paths relative
    to the CSV's folder as the user names it): each row's image is its training row's file (or
    that file's thumbnail), and its label, original cell and score belong to the same row;
    rows sorted most harmful first; every training row once.
    """
    import numpy as np
    from PIL import Image

    from sgd_influence_plugin import core
    from sgd_influence_plugin.dataset import read_csv_table

    folder = os.path.dirname(str(out_csv))
    header, train_rows = read_csv_table(str(train_csv))
    data_folder = os.path.dirname(os.path.abspath(str(train_csv)))
    rows = csv_rows(out_csv)
    trials = csv_rows(os.path.join(folder, "influence_trials.csv"))
    raw = np.array([[float(t[k]) for k in t if k.startswith("trial_")] for t in trials])
    combined, _ = core.combine_trials(raw.T)
    assert sorted(int(r["datasource_index"]) for r in rows) == list(range(len(train_rows)))
    scores = [float(r["influence"]) for r in rows]
    assert scores == sorted(scores)
    for r in rows:
        j = int(r["datasource_index"])
        image, label = train_rows[j][0], train_rows[j][1]
        assert r["original"] == image and r["y:label"] == label.strip()
        assert float(r["influence"]) == pytest.approx(combined[j], rel=1e-12, abs=0)
        source = os.path.join(data_folder, image)
        shown = os.path.join(folder, r["x:image"])
        assert os.path.isfile(shown), (r, shown)
        if r["x:image"].startswith("influence_thumbnails/"):
            with Image.open(source) as im:
                want = im.copy()
            want.thumbnail((thumb_size, thumb_size), Image.LANCZOS)
            with Image.open(shown) as got:
                assert np.array_equal(np.asarray(got), np.asarray(want)), r
        else:
            assert open(shown, "rb").read() == open(source, "rb").read(), r
    return rows


def _linked_output(root):
    """``root/out`` is a symbolic link to ``root/deep/a/b/real_out``: ``../data`` from the
    link's own path is not ``../data`` from where the files really are."""
    real = root / "deep" / "a" / "b" / "real_out"
    real.mkdir(parents=True)
    os.symlink(real, root / "out")
    return root / "out"


def test_paths_open_from_a_linked_output_folder_in_place_and_cleansed(world, capsys):
    out = _linked_output(world["root"])
    assert cli.main(run_argv(world, out / "influence.csv")) == 0
    check_rows_belong(out / "influence.csv", world["train"])
    # cleanse into the linked folder: a CSV that retrains, holding the kept rows' own files.
    from sgd_influence_plugin.dataset import load_dataset, read_csv_table

    cleansed = out / "cleansed.csv"
    argv = ["cleanse", "--influence", str(out / "influence.csv"), "--train", world["train"]]
    assert cli.main(argv + ["--remove", "5", "--output", str(cleansed)]) == 0
    _, train_rows = read_csv_table(world["train"])
    removed = {int(r["datasource_index"]) for r in csv_rows(out / "influence.csv")[:5]}
    kept = [train_rows[j] for j in range(len(train_rows)) if j not in removed]
    _, rows = read_csv_table(str(cleansed))
    assert len(rows) == len(kept)
    for (image, label), (want_image, want_label) in zip(rows, kept):
        assert label == want_label
        got = open(os.path.join(out, image), "rb").read()
        assert got == open(os.path.join(world["data"], want_image), "rb").read()
    load_dataset(str(cleansed), {"x": (1, 7, 7), "y": (1,)})
    # nnabla_cli train retrains on it: its loader takes '..' in the text, not through links
    # (a path relative to the real folder named no file for it)
    from nnabla.utils.data_source_implements import CsvDataSource

    source = CsvDataSource(str(cleansed), shuffle=False, normalize=True)
    assert [source._get_data(i)[0].shape for i in range(source.size)] == [(1, 7, 7)] * len(kept)


@pytest.mark.usefixtures("private_tmpdir")
def test_thumbnails_and_images_in_place_under_a_linked_output_folder(results, data28, tmp_path):
    out = _linked_output(tmp_path)
    model = os.path.join(results("mlp"), "results.nnp")
    base = ["run", "--model", model, "--train", data28["train"], "--val", data28["val"]]
    for size, thumbs in (("16", True), ("64", False)):
        argv = base + ["--output", str(out / "influence.csv"), "--trials", "1", "--quiet"]
        assert cli.main(argv + ["--thumb-size", size]) == 0
        rows = check_rows_belong(out / "influence.csv", data28["train"], int(size))
        assert all(r["x:image"].startswith("influence_thumbnails/") == thumbs for r in rows)


def _npy_dataset(w, mixed):
    """The training set as .npy arrays (each image / 255, as the loader reads the PNG), or
    only its first row (``mixed``)."""
    import numpy as np
    from PIL import Image

    from sgd_influence_plugin.dataset import read_csv_table

    header, rows = read_csv_table(w["train"])
    (w["data"] / "npy").mkdir()
    out = []
    for i, (image, label) in enumerate(rows):
        if mixed and i:
            out.append([image, label])
            continue
        with Image.open(w["data"] / image) as im:
            np.save(w["data"] / "npy" / f"{i:06d}.npy", np.asarray(im, np.float32)[None] / 255)
        out.append([f"npy/{i:06d}.npy", label])
    path = w["data"] / ("mixed.csv" if mixed else "npy.csv")
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header] + out)
    return str(path)


@pytest.mark.parametrize("mixed", [False, True], ids=["npy", "first row npy"])
def test_npy_data_gets_the_right_columns(world, capsys, mixed):
    train = _npy_dataset(world, mixed)
    out = world["root"] / "out" / "influence.csv"
    argv = run_argv(world, out, "--train", train)
    argv[argv.index("--train") + 1] = train
    assert cli.main(argv) == 0
    check_rows_belong(out, train)
    summary = (out.parent / "influence_summary.txt").read_text()
    classes = summary.split("harmful share per class", 1)[1].split("\n\n", 1)[0]
    assert len(classes.splitlines()) - 1 == len({r["y:label"] for r in csv_rows(out)}) <= 10
    assert "npy/" not in classes
    # cleanse accepts the tool's own CSV.
    argv = ["cleanse", "--influence", str(out), "--train", train, "--remove", "3"]
    assert cli.main(argv + ["--output", str(out.parent / "c.csv")]) == 0


def test_one_summary_line_per_label_value_however_written(world):
    from sgd_influence_plugin.dataset import read_csv_table

    _, rows = read_csv_table(world["train"])
    label = max({r[1] for r in rows}, key=lambda x: sum(r[1] == x for r in rows))
    where = [i for i, r in enumerate(rows) if r[1] == label]
    assert len(where) >= 3
    for i, spelling in zip(where, (f"{label}.0", f"+{label}", f" {label}")):
        rewrite_cell(world["train"], i, 1, spelling)
    out = world["root"] / "out" / "influence.csv"
    assert cli.main(run_argv(world, out, "--report")) == 0
    summary = (out.parent / "influence_summary.txt").read_text()
    block = summary.split("harmful share per class", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip() for line in block.splitlines()[1:]]
    assert [line.split(":")[0] for line in lines].count(label) == 1, block
    assert not any(line.startswith((f"{label}.0:", f"+{label}:")) for line in lines), block
    assert re.search(rf"^{label}: \d+ / {len(where)} ", "\n".join(lines), re.M), block
