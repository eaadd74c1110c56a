"""What the user reads: summary.txt, report.html, settings.yaml and the cache, checked against
values the test computes itself; the CLI's options reaching the computation; warnings
reaching the files; networks the replay cannot model refused before anything is written."""

import base64
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


def used(facts, key):
    """A value the run actually used, from the settings.yaml beside the output (top level,
    or under ``used:``)."""
    return facts.get("used", facts)[key]


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def ranked_from_csv(rows):
    """(datasource_index, label, influence, original) of an influence CSV's rows, in order."""
    return [
        (int(r["datasource_index"]), r["y:label"], float(r["influence"]), r["original"])
        for r in rows
    ]


# ---- checkers: the files against a ranking the caller supplies -----------------------------


def check_summary(text, ranked):
    """``ranked``: (datasource_index, label, influence, original) of every training sample,
    most harmful first, as the caller computed it."""
    scores = np.array([r[2] for r in ranked])
    counts = re.search(
        r"training samples: (\d+)\s+harmful \(influence < 0\): (\d+)\s+"
        r"helpful \(> 0\): (\d+)\s+zero: (\d+)",
        text,
    )
    assert counts, text
    assert [int(c) for c in counts.groups()] == [
        len(ranked),
        int(np.sum(scores < 0)),
        int(np.sum(scores > 0)),
        int(np.sum(scores == 0)),
    ]
    # Harmful share per class.
    per_class = {}
    for _, label, score, _ in ranked:
        h, n = per_class.get(label, (0, 0))
        per_class[label] = (h + (score < 0), n + 1)
    block = text.split("harmful share per class", 1)[1].split("\n\n", 1)[0]
    shown = {
        lab: (int(h), int(n), float(pct))
        for lab, h, n, pct in re.findall(r"^\s+(\S+): (\d+) / (\d+) \(([\d.]+)%\)$", block, re.M)
    }
    assert {k: v[:2] for k, v in shown.items()} == per_class
    for h, n, pct in shown.values():
        assert pct == pytest.approx(100 * h / n, abs=0.05)
    # The ten most harmful, in order.
    top = text.split("top 10 harmful", 1)[1].splitlines()[1:11]
    assert len(top) == 10
    for line, (index, label, score, original) in zip(top, ranked[:10]):
        cells = [c.strip() for c in line.split(",")]
        assert (int(cells[0]), cells[1], cells[3]) == (index, label, original), line
        assert float(cells[2]) == pytest.approx(score, rel=5e-3)  # shown to 3 digits
    return counts


def _tiles(section):
    """(index, label, score, image bytes) of each tile in a report section."""
    out = []
    for tile in section.split('class="tile"')[1:]:
        img = re.search(r"base64,([A-Za-z0-9+/=]+)", tile)
        lab = re.search(r'class="lab">([^<]*)(?:<br>|</div>)', tile)  # label, then model's class
        m = re.search(r"row (\d+) &middot; ([-+0-9.e]+)", tile)
        assert img and lab and m, tile[:200]
        out.append((int(m.group(1)), lab.group(1), float(m.group(2)), base64.b64decode(img[1])))
    return out


def check_report(page, ranked, folder):
    """The report's two galleries: the most harmful (lowest first) and the most helpful
    (highest first), each tile with the sample's own label, score and thumbnail."""
    assert "Most harmful" in page and "Most helpful" in page
    harmful_part, rest = page.split("Most harmful", 1)[1].split("Most helpful", 1)
    harmful, helpful = _tiles(harmful_part), _tiles(rest)
    k = len(harmful)
    assert 10 <= k == len(helpful) <= len(ranked) // 2
    images = {
        int(r["datasource_index"]): r["x:image"]
        for r in _csv_rows(os.path.join(folder, "influence.csv"))
    }
    for tiles, expected in ((harmful, ranked[:k]), (helpful, ranked[::-1][:k])):
        assert [t[0] for t in tiles] == [r[0] for r in expected]
        for (index, label, score, png), (_, want_label, want_score, _) in zip(tiles, expected):
            assert label == want_label
            assert score == pytest.approx(want_score, rel=5e-3)
            # the very image the CSV's x:image names for that row
            with open(os.path.join(folder, images[index]), "rb") as f:
                assert png == f.read()


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
    rows = _csv_rows(out)
    assert [(int(r["datasource_index"]), r["y:label"], r["original"]) for r in rows] == [
        (i, lab, orig) for i, lab, _, orig in ranked
    ]
    np.testing.assert_array_equal([float(r["influence"]) for r in rows], [r[2] for r in ranked])


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
    ranked = ranked_from_csv(_csv_rows(out))
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
