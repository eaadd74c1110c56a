"""The data-cleansing experiment (sgd-influence evaluate) on a small real result."""

import csv
import os
import shutil

import numpy as np
import pytest

from sgd_influence_plugin import cli, core, influence, ownership
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.evaluate import EvaluateRequest, accuracy, evaluate
from sgd_influence_plugin.nnabla_adapter import load_model
from sgd_influence_plugin.settings import InfluenceSettings
from support.output_checks import csv_rows
from support.user_files import label_edit, one_line_error, rewrite_cell, tree


def _noise_file(path, n, flipped):
    with open(path, "w") as f:
        f.write("index,clean_label,noisy_label,flipped\n")
        for i in range(n):
            f.write(f"{i},0,0,{int(i in flipped)}\n")


@pytest.mark.parametrize("retrain", ["last", "scratch"])
def test_evaluate_rows_precision_and_retrain_last_oracle(results, data28, tmp_path, retrain):
    nnp = os.path.join(results("mlp"), "results.nnp")
    flipped = set(range(0, 256, 7))
    noise = str(tmp_path / "noise.csv")
    _noise_file(noise, 256, flipped)
    out = tmp_path / "eval"
    settings = InfluenceSettings(trials=1)
    rows = evaluate(
        EvaluateRequest(
            {"model": nnp},
            data28["train"],
            data28["val"],
            data28["val"],
            str(out),
            [0, 0.1],
            [4],
            retrain,
            settings,
            noise,
        )
    )
    assert [(r["method"], r["n_removed"]) for r in rows] == [
        ("none", 0),
        ("harmful", 26),
        ("random", 26),
    ]
    for name in ("results.csv", "figure2.png", "summary.md", "settings.yaml"):
        assert (out / name).exists()
    # precision@n is the share of flipped labels among the n most harmful of seed 4's scores.
    m = load_model(model=nnp)
    tr = load_dataset(data28["train"], m.info.input_shapes)
    va = load_dataset(data28["val"], m.info.input_shapes)
    res = influence.compute_influence(m, tr.arrays, va.arrays, InfluenceSettings(seed=4, trials=1))
    top = np.argsort(res.scores, kind="stable")[:26]
    assert rows[1]["precision_at_n"] == pytest.approx(np.mean([i in flipped for i in top]))
    assert rows[1]["recall_at_n"] == pytest.approx(sum(i in flipped for i in top) / 37)
    if retrain == "last":
        # 'none' = one more SGD epoch over seed 4's order from the trained parameters.
        order = core.epoch_orders(256, 1, 4)[0]
        # At the first trial's rate (the automatic one), as the influence's own epoch.
        assert res.trials[0].lr < m.info.solver.lr
        core.sgd_epoch(m, tr.arrays, order, np.full(8, res.trials[0].lr, np.float32), 32)
        assert rows[0]["test_accuracy"] == pytest.approx(accuracy(m, va))
        assert rows[0]["test_loss"] == pytest.approx(core.mean_loss(m, va.arrays), rel=1e-5)
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    summary = (out / "summary.md").read_text()
    assert "| 10.2% | 26 | harmful |" in summary and "Flipped labels: 37 of 256" in summary


def test_evaluate_takes_the_datasets_the_definition_names(results, data28, tmp_path):
    """As run and check: without --train/--val, the optimizer's and the validation monitor's
    datasets of the definition; --weight-decay and --replay-step reach the settings."""
    import yaml

    from sgd_influence_plugin import cli

    folder = results("mlp")
    out = tmp_path / "ev"
    argv = ["evaluate", "--model", os.path.join(folder, "results.nnp"), "--test", data28["val"]]
    argv += ["--output-dir", str(out), "--ratios", "0.1", "--seeds", "0", "--trials", "1"]
    argv += ["--weight-decay", "0.001", "--replay-step", "exact", "--jobs", "1", "--quiet"]
    assert cli.main(argv) == 0
    facts = yaml.safe_load(open(out / "settings.yaml"))
    assert facts["train_csv"] == os.path.abspath(data28["train"])
    assert facts["val_csv"] == os.path.abspath(data28["val"])
    assert facts["settings"]["weight_decay"] == 0.001
    assert facts["settings"]["replay_step"] == "exact"


def _with_solver_decay(folder, decay, dest):
    """The result in ``folder`` as net.nntxt + parameters.h5 in ``dest``, its solver's
    weight_decay set to ``decay`` (the weights unchanged)."""
    import shutil

    dest.mkdir()
    text = open(os.path.join(folder, "net.nntxt")).read()
    assert text.count("weight_decay: ") == 1
    head, tail = text.split("weight_decay: ")
    text = head + f"weight_decay: {decay}" + tail[tail.index("\n") :]
    (dest / "net.nntxt").write_text(text)
    shutil.copy(os.path.join(folder, "parameters.h5"), dest / "parameters.h5")
    return {"config": str(dest / "net.nntxt"), "params": str(dest / "parameters.h5")}


def test_the_rate_check_uses_the_given_weight_decay_not_the_solvers(results, data7, tmp_path):
    """``--weight-decay 0`` replaces a solver's weight decay that no rate could replay
    (lr 0.1 * 20 >= 1): evaluate runs, as ``run`` and ``check`` do (it used to check the rate
    against the solver's value and refuse)."""
    files = _with_solver_decay(results("logreg"), 20, tmp_path / "model")
    rows = evaluate(EvaluateRequest(
        files, data7["train"], data7["val"], data7["val"], str(tmp_path / "eval"), [0], [0],
        "last", InfluenceSettings(trials=1, lr=0.1, weight_decay=0.0, jobs=1),
    ))  # fmt: skip
    assert [r["method"] for r in rows] == ["none"]
    assert load_model(**files).info.solver.weight_decay == 20  # the solver's, not used


def test_a_given_weight_decay_too_large_for_the_rate_is_refused_before_computing(
    results, data7, tmp_path, monkeypatch
):
    """``--weight-decay 20`` at lr 0.1 (the solver's weight decay is 0.01): refused before
    the influence is computed, naming the weight decay, and nothing is written."""
    from sgd_influence_plugin import evaluate as evaluate_mod
    from sgd_influence_plugin.errors import SettingsError

    def computed(*a, **k):
        raise AssertionError("the influence was computed before the refusal")

    monkeypatch.setattr(evaluate_mod, "compute_influence", computed)
    nnp = os.path.join(results("logreg"), "results.nnp")
    out = tmp_path / "eval"
    with pytest.raises(SettingsError, match=r"weight decay 20"):
        evaluate(EvaluateRequest(
            {"model": nnp}, data7["train"], data7["val"], data7["val"], str(out), [0], [0],
            "last", InfluenceSettings(trials=1, lr=0.1, weight_decay=20.0, jobs=1),
        ))  # fmt: skip
    assert not out.exists()


def test_a_training_set_smaller_than_the_batch_is_refused_before_computing(
    results, data7, tmp_path, monkeypatch
):
    """The training-size check run and check make (one step needs a whole batch): evaluate
    makes it too, before the influence is computed, naming the file and --batch-size."""
    from sgd_influence_plugin import evaluate as evaluate_mod
    from sgd_influence_plugin.errors import DatasetError

    def computed(*a, **k):
        raise AssertionError("the influence was computed before the refusal")

    monkeypatch.setattr(evaluate_mod, "compute_influence", computed)
    nnp = os.path.join(results("logreg"), "results.nnp")
    n = sum(1 for _ in open(data7["train"])) - 1
    out = tmp_path / "eval"
    with pytest.raises(DatasetError, match=rf"{n} training rows.*--batch-size"):
        evaluate(EvaluateRequest(
            {"model": nnp}, data7["train"], data7["val"], data7["val"], str(out), [0], [0],
            "last", InfluenceSettings(trials=1, lr=0.1, batch_size=n + 1, jobs=1),
        ))  # fmt: skip
    assert not out.exists()


# ----------------------------------------------------------------------------------------
# The ownership rule, and everything checked before computing (issue 18, cases 1, 7, 12)
# ----------------------------------------------------------------------------------------


def _eval_argv(w, out, *extra):
    return [
        "evaluate",
        "--model",
        w["model"],
        "--train",
        w["train"],
        "--val",
        w["val"],
        "--test",
        w["val"],
        "--output-dir",
        str(out),
        "--ratios",
        "0,0.1",
        "--seeds",
        "0",
        "--trials",
        "1",
        "--quiet",
        *extra,
    ]


def _copy_csv(w, name, row=None, label=None):
    """A copy of the validation CSV in data/ named ``name``, with one label changed."""
    path = w["data"] / name
    shutil.copy(w["val"], path)
    if row is not None:
        rewrite_cell(path, row, 1, label)
    return str(path)


def _user_files(*names):
    def make(w):
        out = w["root"] / "eval"
        out.mkdir()
        for name in names:
            (out / name).write_text("the user's\n")
        return ["--output-dir", str(out)]

    return make


EVALUATE_REFUSED = {
    # issue 18, case 1: the test CSV is results.csv in the output folder
    "test CSV is the results file": (
        lambda w: ["--test", _copy_csv(w, "results.csv"), "--output-dir", str(w["data"])],
        r"results\.csv: refusing to overwrite the input .*results\.csv; choose another "
        r"--output-dir",
    ),
    "user's results.csv": (
        _user_files("results.csv"),
        r"eval/results\.csv: already exists and was not written by sgd-influence",
    ),
    "user's settings.yaml": (
        _user_files("settings.yaml"),
        r"eval/settings\.yaml: already exists and was not written",
    ),
    "user's summary.md": (
        _user_files("summary.md", "notes.txt"),
        r"eval/summary\.md: already exists and was not written",
    ),
    "output into an image folder": (
        lambda w: ["--output-dir", str(w["data"] / "train")],
        r"--output-dir .*train: lies in .*train, a folder of the dataset's images",
    ),
    # issue 18, case 7: labels
    "training label 10": (
        lambda w: label_edit("10")(w),
        r"train\.csv row 4, column 'y:label': label 10 is out of range .*\(0\.\.9\)",
    ),
    "training label 1e400": (
        lambda w: label_edit("1e400")(w),
        r"train\.csv row 4, column 'y:label': '1e400' is not a finite number",
    ),
    "test label 99": (
        lambda w: ["--test", _copy_csv(w, "test.csv", 5, "99")],
        r"test\.csv row 6, column 'y:label': label 99 is out of range",
    ),
    # issue 18, case 12: options that failed with a traceback, some after the whole computation
    "ratios empty": (lambda w: ["--ratios", ""], r"--ratios is empty"),
    "ratios nan": (lambda w: ["--ratios", "0,nan"], r"--ratios 0,nan: nan is not a share"),
    "ratios 1": (lambda w: ["--ratios", "1"], r"--ratios 1: 1 is not a share in \[0, 1\)"),
    "seeds -1": (lambda w: ["--seeds", "-1"], r"--seeds -1: -1 is not a whole number in 0\.\."),
    "seeds 0.5": (lambda w: ["--seeds", "0.5"], r"--seeds '0\.5': 0\.5 is not a whole number"),
    "seeds empty": (lambda w: ["--seeds", ","], r"--seeds is empty"),
    "output-dir is a file": (
        lambda w: ["--output-dir", w["train"]],
        r"--output-dir .*train\.csv: is a file, not a folder",
    ),
    "output-dir empty": (lambda w: ["--output-dir", ""], r"--output-dir is empty"),
    "test is the training CSV": (  # fuzz: measured test accuracy on the training rows
        lambda w: ["--test", w["train"]],
        r"train\.csv: --test is the same file as --train",
    ),
    "jobs -1": (lambda w: ["--jobs", "-1"], r"error: --jobs -1: must be >= 1"),  # was a traceback
}


@pytest.mark.parametrize("case", sorted(EVALUATE_REFUSED))
def test_evaluate_refuses_before_computing_and_changes_nothing(world, case, capsys):
    edit, pattern = EVALUATE_REFUSED[case]
    argv = _eval_argv(world, world["root"] / "eval") + edit(world)
    before = tree(world["root"])
    assert cli.main(argv) == 2
    one_line_error(capsys, pattern)
    assert tree(world["root"]) == before


def test_evaluate_replaces_only_its_own_results(world, capsys):
    out = world["root"] / "eval"
    assert cli.main(_eval_argv(world, out)) == 0
    names = sorted(os.listdir(out))
    assert names == sorted([ownership.LEDGER, "figure2.png", "results.csv", "settings.yaml",
                            "summary.md"])  # fmt: skip
    first_rows = csv_rows(out / "results.csv")
    # Its own files are replaced by the next run; a file the user edited is not.
    assert cli.main(_eval_argv(world, out, "--seeds", "1")) == 0
    assert csv_rows(out / "results.csv") != first_rows
    with open(out / "summary.md", "a") as f:
        f.write("my notes\n")
    before = tree(world["root"])
    assert cli.main(_eval_argv(world, out, "--seeds", "2")) == 2
    one_line_error(capsys, r"summary\.md: already exists and was not written by sgd-influence")
    assert tree(world["root"]) == before


def test_the_retraining_csv_holds_exactly_the_kept_rows_given_as_indices_or_a_mask(tmp_path):
    """``evaluate --retrain scratch`` retrains on ``write_kept_rows``'s CSV: each kept row once
    (file cells made absolute), shuffled by the seed; a bool mask names the same rows as
    their indices (iterating a mask used to write rows[True] / rows[False] over and over)."""
    from sgd_influence_plugin.nnabla_adapter.training import write_kept_rows

    src = tmp_path / "data"
    (src / "img").mkdir(parents=True)
    rows = []
    for j in range(6):
        (src / "img" / f"{j}.png").write_bytes(b"x")
        rows.append([f"img/{j}.png", str(j % 3)])
    header = ["x:image", "y:label"]
    keep = np.array([0, 2, 3, 5])
    mask = np.isin(np.arange(6), keep)
    out = []
    for k, given in enumerate((keep, mask)):
        work = tmp_path / f"w{k}"
        work.mkdir()
        path = write_kept_rows(str(src / "train.csv"), header, rows, given, 7, str(work))
        with open(path, newline="") as f:
            out.append(list(csv.reader(f)))
    assert out[0] == out[1] and out[0][0] == header
    written = out[0][1:]
    want = [[str(src / "img" / f"{j}.png"), str(j % 3)] for j in keep]
    assert sorted(written) == sorted(want)  # each kept row once, no other
    shuffled = keep[np.random.RandomState(7).permutation(4)]
    assert written == [[str(src / "img" / f"{j}.png"), str(j % 3)] for j in shuffled]
    with pytest.raises(ValueError, match="mask of 5 for 6 rows"):
        write_kept_rows(str(src / "train.csv"), header, rows, mask[:5], 7, str(tmp_path))
    with pytest.raises(ValueError, match="0..5"):
        write_kept_rows(str(src / "train.csv"), header, rows, np.array([6]), 7, str(tmp_path))


def test_the_label_noise_file_is_read_exactly_or_refused(tmp_path):
    """``--noise``: 1/0 or True/False per training row; anything else is refused naming the row
    (it used to count as 'not flipped' and give wrong precision figures), and an empty file
    is called a label-noise file, not a dataset without its header."""
    from sgd_influence_plugin.errors import InputError
    from sgd_influence_plugin.evaluate_inputs import read_noise

    path = tmp_path / "noise.csv"
    path.write_text("index,flipped\n0,1\n1,0\n2,True\n3,false\n")
    assert read_noise(str(path), 4).tolist() == [True, False, True, False]
    for text, pattern in (
        ("index,flipped\n0,1\n1,yes\n", r"noise\.csv row 2: flipped 'yes' is not 1 or 0"),
        ("index,flipped\n0,1\n1,0.9\n", r"row 2: flipped '0\.9' is not 1 or 0"),
        ("index,flipped\n0,1\n", r"1 rows but the training CSV has 2; give the sample"),
        ("index,label\n0,1\n1,0\n", r"no 'flipped' column; give the sample project's"),
        ("", r"noise\.csv: not a label-noise file .*'flipped' column of 1"),
    ):
        path.write_text(text)
        with pytest.raises(InputError, match=pattern):
            read_noise(str(path), 2)


def _console_cache(w):
    """The definition of ``w``'s result reading its datasets through caches beside the data
    (``cache_dir``, ``create_cache_explicitly``, ``overwrite_cache`` off), and the training
    cache made as ``nnabla_cli train`` makes it: every training row."""
    from nnabla.utils.create_cache import CreateCache

    from support.results import rewritten_definition

    def edit(proto):
        for d in proto.dataset:
            d.cache_dir = os.path.join(str(w["data"]), d.name + ".cache")
            d.create_cache_explicitly, d.overwrite_cache = True, False

    (w["root"] / "cached").mkdir()
    given = rewritten_definition(str(w["result"]), w["root"] / "cached", edit)
    cache = str(w["data"] / "Training.cache")
    os.makedirs(cache)
    made = CreateCache(w["train"], shuffle=True, rng=np.random.RandomState(0))
    made.create(cache, normalize=False)
    return given


def test_scratch_retraining_makes_its_own_cache_and_leaves_the_users(world):
    """A console definition reads each dataset through a cache beside the data. The
    retraining kept that cache: with ``overwrite_cache`` off nnabla_cli trained every removal
    on the cached rows, all of them (the harmful and random removals gave the same figures,
    exit 0), and with it on it would rewrite the user's cache with the kept rows. Now each
    retraining caches its own CSV in its work folder, and the user's data is as it was."""
    from sgd_influence_plugin.evaluate import _definition_text
    from sgd_influence_plugin.nnabla_adapter.training import train_from_scratch

    given = _console_cache(world)
    before = tree(world["data"])
    argv = _eval_argv(world, world["root"] / "eval", "--retrain", "scratch", "--ratios", "0,0.5")
    argv[1:3] = given
    assert cli.main(argv) == 0
    rows = csv_rows(world["root"] / "eval" / "results.csv")
    assert [r["method"] for r in rows] == ["none", "harmful", "random"]
    assert rows[1]["test_loss"] != rows[2]["test_loss"]
    # What nnabla_cli read: the cache it made holds the kept rows, and only them.
    header, *train_rows = list(csv.reader(open(world["train"])))
    keep = np.arange(0, 50, 3)
    work = world["root"] / "work"
    text = _definition_text({"config": given[1]})
    train_from_scratch(text, world["train"], world["val"], header, train_rows, keep, 0, str(work))
    cached = [np.load(str(f)) for f in sorted((work / "cache_0").glob("cache_*.npy"))]
    assert sum(len(c) for c in cached) == len(keep)
    assert tree(world["data"]) == before
