"""The recommendation protocol's report (experiments/recommendation_protocol.py):
paired differences against hand-computed values, confident learning against a brute-force
loop, the noise seed kept apart from the run's, and the ownership rule of its --out."""

import os
import sys

import numpy as np
import pytest

from sgd_influence_plugin import ownership
from sgd_influence_plugin.errors import OutputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import paper_protocol as pp  # noqa: E402
import recommendation_protocol as rp  # noqa: E402


def _task(out, setting, seed, rows):
    folder = os.path.join(rp.tasks_dir(out), f"{setting}_{seed}")
    os.makedirs(folder)
    pp.write_rows(os.path.join(folder, "detection.csv"), rp.DETECTION_KEYS, [])
    pp.write_rows(
        os.path.join(folder, "rows.csv"),
        rp.ROW_KEYS,
        [[setting, seed, m, n, 0, n, acc, loss, "nan", "nan", 1.0] for m, n, acc, loss in rows],
    )


def test_report_pairs_each_seed_with_its_own_none(tmp_path):
    a = rp.parse_args(["--out", str(tmp_path / "out")])
    _task(a, "uniform", 0, [("none", 0, 0.90, 0.40), ("recommended", 10, 0.91, 0.35)])
    _task(a, "uniform", 1, [("none", 0, 0.80, 0.50), ("recommended", 20, 0.84, 0.45)])
    rp.report(a)
    text = open(tmp_path / "out" / "summary.md").read()
    line = next(x for x in text.splitlines() if x.startswith("| recommended"))
    # Δ accuracy: +1 and +4 points -> +2.50 ± 2.12 (sample SD); Δ loss -0.05 both; 2 of 2.
    assert "| 10/20 (0+10/0+20) |" in line and "+2.50 ± 2.12" in line
    assert "| 2/2 |" in line and "-0.0500 ± 0.0000" in line
    assert ownership.written_by_tool(str(tmp_path / "out" / "summary.md"))
    rp.report(a)  # its own files are replaced


def test_report_gives_the_recommendations_gain_as_a_share_of_each_oracles(tmp_path):
    a = rp.parse_args(["--out", str(tmp_path / "out")])
    _task(
        a,
        "uniform",
        0,
        [
            ("none", 0, 0.90, 0.40),
            ("recommended", 10, 0.91, 0.38),
            ("oracle_remove", 50, 0.93, 0.36),
            ("oracle_correct", 50, 0.94, 0.30),
        ],
    )
    _task(a, "uniform", 1, [("none", 0, 0.80, 0.50), ("recommended", 20, 0.80, 0.52),
                            ("oracle_remove", 50, 0.81, 0.44)])  # fmt: skip
    rp.report(a)
    text = open(tmp_path / "out" / "summary.md").read()
    # remove, seeds 0 and 1: accuracy (+1 + 0) / (+3 + 1) = 0.25, loss (-0.02 + 0.02) / -0.1 = 0
    assert "Share of `oracle_remove`'s gain (2 seeds): test accuracy 0.25, test loss -0.00." in text
    # correct, seed 0 only: accuracy +1 / +4 = 0.25, loss -0.02 / -0.10 = 0.20
    assert "Share of `oracle_correct`'s gain (1 seeds): test accuracy 0.25, test loss 0.20." in text
    assert "Test loss below `none`'s: 1/2 seeds." in text
    _task(a, "confusable", 0, [("none", 0, 0.90, 0.40), ("recommended", 10, 0.91, 0.38),
                               ("oracle_remove", 50, 0.89, 0.41)])  # fmt: skip
    rp.report(a)
    text = open(tmp_path / "out" / "summary.md").read()
    assert (
        "test accuracy - (the oracle did not gain), test loss - (the oracle did not gain)" in text
    )
    assert any(x.startswith("| oracle_remove | 50/50 ") for x in text.splitlines())


def test_report_lists_the_seeds_in_numeric_order(tmp_path):
    a = rp.parse_args(["--out", str(tmp_path / "out")])
    for seed, n in ((10, 30), (2, 20), (1, 10)):
        _task(a, "uniform", seed, [("none", 0, 0.9, 0.4), ("recommended", n, 0.9, 0.4)])
    rp.report(a)
    text = open(tmp_path / "out" / "summary.md").read()
    line = next(x for x in text.splitlines() if x.startswith("| recommended"))
    assert "| 10/20/30 (" in line  # seeds 1, 2, 10; a text sort gives 1, 10, 2


def test_report_refuses_files_it_did_not_write(tmp_path):
    a = rp.parse_args(["--out", str(tmp_path / "out")])
    _task(a, "clean", 0, [("none", 0, 0.9, 0.3)])
    (tmp_path / "out" / "summary.md").write_text("mine\n")
    with pytest.raises(OutputError):
        rp.report(a)
    assert (tmp_path / "out" / "summary.md").read_text() == "mine\n"
    b = rp.parse_args(["--out", str(tmp_path / "other")])
    os.makedirs(tmp_path / "other" / "tasks")  # not made by the protocol
    with pytest.raises(OutputError, match="tasks: a folder this protocol did not make"):
        rp.check_out(b)


def test_confident_learning_matches_a_loop():
    rng = np.random.RandomState(0)
    prob = rng.dirichlet(np.ones(4) * 0.5, size=300)
    given = rng.randint(0, 4, 300)
    flags = rp.confident_learning(prob, given)
    t = [np.mean([prob[i, j] for i in range(300) if given[i] == j]) for j in range(4)]
    for i in range(300):
        above = [j for j in range(4) if prob[i, j] >= t[j]]
        pick = max(above, key=lambda j: prob[i, j]) if above else None
        assert flags[i] == (pick is not None and pick != given[i])
    assert 0 < flags.sum() < 300


def test_noise_is_not_the_first_rows_of_the_runs_first_epoch():
    labels = np.arange(5000) % 10
    for setting in ("uniform", "confusable"):
        flipped = np.flatnonzero(rp.noisy_labels(labels, setting, 0.1, 0) != labels)
        first = np.random.RandomState(0).permutation(5000)[: len(flipped)]
        assert len(set(flipped) & set(first)) < 0.2 * len(flipped)  # ~10% by chance


def test_a_retraining_is_reused_only_for_the_same_actions():
    """The retraining of a recommendation is cached by folder name: relabelling and removing
    the same rows (whose action names share their first letters) must not share one."""
    relabel = np.array(["keep", "relabel", "keep"], dtype=object)
    remove = np.array(["keep", "remove", "keep"], dtype=object)
    assert rp.recommended_folder(relabel) != rp.recommended_folder(remove)
    assert rp.recommended_folder(remove) == rp.recommended_folder(remove.copy())
    other_row = np.array(["remove", "keep", "keep"], dtype=object)
    assert rp.recommended_folder(remove) != rp.recommended_folder(other_row)
    top = np.zeros(6, bool)
    top[[1, 4]] = True
    moved = np.zeros(6, bool)
    moved[[1, 5]] = True
    assert rp.removal_folder("top10", top) == rp.removal_folder("top10", top.copy())
    assert rp.removal_folder("top10", top) != rp.removal_folder("top10", moved)


def test_the_flips_diagnostic_removes_exactly_the_rows_whose_label_differs_from_the_pool(
    tmp_path, monkeypatch
):
    import retrain_candidate as rcand

    pool = tmp_path / "pool"
    os.makedirs(pool)
    header = ["x:image", "y:label"]
    pp.write_rows(str(pool / "train.csv"), header, [[f"train/{i}.png", i % 3] for i in range(6)])
    # the task's rows: a shuffled subset with absolute paths, rows 1 and 3 relabelled
    order, given = [4, 0, 5, 2], [1, 1, 2, 0]  # truths 1, 0, 2, 2
    task = tmp_path / "task.csv"
    pp.write_rows(
        str(task), header, [[str(pool / f"train/{i}.png"), y] for i, y in zip(order, given)]
    )
    monkeypatch.chdir(tmp_path)  # the pool given relative, as on the command line
    assert rcand.flipped_rows(str(task), "pool").tolist() == [False, True, False, True]
    given_read, truth = rcand.task_labels(str(task), "pool")
    assert given_read.tolist() == given and truth.tolist() == [1, 0, 2, 2]
    flipped = truth != given_read
    # the oracles: every flip gets its true class; or only the flips among given rows
    assert rcand.fixed_labels(truth, flipped).tolist() == [-1, 0, -1, 2]
    among = np.array([True, True, True, False])  # e.g. the recommendation's removed rows
    assert rcand.fixed_labels(truth, flipped, among).tolist() == [-1, 0, -1, -1]


def test_a_diagnostic_is_recorded_once_per_removal_and_reported_against_its_seeds_none(tmp_path):
    import retrain_candidate as rcand

    a = rp.parse_args(["--out", str(tmp_path / "out")])
    _task(a, "uniform", 0, [("none", 0, 0.90, 0.40)])
    _task(a, "uniform", 1, [("none", 0, 0.80, 0.50)])
    flipped = np.array([True, True, False, False])
    task0 = os.path.join(a.out, "tasks", "uniform_0")
    task1 = os.path.join(a.out, "tasks", "uniform_1")
    rcand.record(task0, "flips", flipped, flipped, 0.95, 0.30)  # replaced below
    rcand.record(task0, "flips", flipped, flipped, 0.91, 0.35)
    removed = np.array([True, False, True, False])  # one flip of two, one good row
    rcand.record(task0, "given_label 0.2 (v4)", removed, flipped, 0.89, 0.45)
    rcand.record(task1, "flips", flipped, flipped, 0.83, 0.44)
    unfinished = os.path.join(a.out, "tasks", "uniform_2")
    rcand.record(unfinished, "flips", flipped, flipped, 0.9, 0.3)
    assert not os.path.exists(unfinished)
    rows = rp.collect(a, rp.DIAGNOSTICS)
    assert [(r["seed"], r["method"]) for r in rows] == [
        ("0", "flips"), ("0", "given_label 0.2 (v4)"), ("1", "flips"),
    ]  # fmt: skip
    assert (float(rows[1]["precision"]), float(rows[1]["recall"])) == (0.5, 0.5)
    rp.report(a)
    text = open(tmp_path / "out" / "summary.md").read()
    line = next(x for x in text.splitlines() if x.startswith("| diagnostic: flips"))
    # Δ accuracy: +1 and +3 points -> +2.00 ± 1.41 (sample SD, n - 1); Δ loss -0.05 and -0.06
    # -> -0.0550 ± 0.0071; 2 wins of 2.
    assert "+2.00 ± 1.41" in line and "| 2/2 |" in line and "-0.0550 ± 0.0071" in line
    line = next(x for x in text.splitlines() if x.startswith("| diagnostic: given_label"))
    assert "-1.00" in line and "| 0/1 |" in line


def test_the_removed_good_rows_diagnostic_splits_the_recommendation_by_the_true_flips():
    import check_removed_good_rows as crg

    removed = np.array([False, True, True, False, True, False, False, False])
    flipped = np.array([True, True, False, False, False, False, True, False])
    sets = crg.removals(removed, flipped, seed=3)
    assert sets["recommended"].tolist() == [1, 2, 4]
    assert sets["flips"].tolist() == [1]
    assert sets["good"].tolist() == [2, 4]
    rnd = sets["random_good"]
    assert len(rnd) == 2 and not flipped[rnd].any() and list(rnd) == sorted(set(rnd))


def test_recommended_flips_keeps_the_good_rows_the_recommendation_removed(tmp_path):
    import retrain_candidate as rcand

    folder = tmp_path / "influence_v9"
    os.makedirs(folder)
    # the influence CSV is sorted by influence, not by row: the action must follow the index
    pp.write_rows(
        str(folder / "influence.csv"),
        ["x:image", "y:label", "influence", "action", "datasource_index"],
        [["c.png", 1, -3.0, "remove", 2], ["a.png", 0, -2.0, "remove", 0],
         ["d.png", 1, -1.0, "keep", 3], ["b.png", 0, 5.0, "keep", 1]],
    )  # fmt: skip
    removed = rcand.recommended_rows(str(tmp_path), "v9", 4)
    assert removed.tolist() == [True, False, True, False]
    flipped = np.array([False, True, True, True])
    assert (removed & flipped).tolist() == [False, False, True, False]


def test_methods_must_keep_the_baseline_and_the_recommendation(capsys):
    assert rp.parse_args([]).methods == rp.METHODS
    assert rp.parse_args(["--methods", "none, recommended"]).methods == ("none", "recommended")
    for bad in ("recommended,top10", "none,top10", "none,recommended,top5"):
        with pytest.raises(SystemExit):
            rp.parse_args(["--methods", bad])
        assert "--methods" in capsys.readouterr().err


def test_relabel_sure_relabels_only_the_confident_removed_rows_and_keeps_their_images(tmp_path):
    import retrain_candidate as rcand

    folder = tmp_path / "influence_v9"
    os.makedirs(folder)
    # sorted by influence, not by row: the action must follow datasource_index
    pp.write_rows(
        str(folder / "influence.csv"),
        ["x:image", "y:label", "influence", "suggested_label", "confidence", "action",
         "datasource_index"],
        [["c.png", 1, -3.0, 4, 0.95, "remove", 2], ["a.png", 0, -2.0, 7, 0.79, "remove", 0],
         ["e.png", 3, -1.5, 5, 0.80, "remove", 4], ["d.png", 1, -1.0, 2, 0.99, "keep", 3],
         ["b.png", 0, 5.0, 0, 0.90, "keep", 1]],
    )  # fmt: skip
    removed, new = rcand.relabel_sure(str(tmp_path), "v9", 5, 0.8)
    assert removed.tolist() == [True, False, False, False, False]  # 0.79 < 0.8: removed
    assert new.tolist() == [-1, -1, 4, -1, 5]  # a kept row is never relabelled
    train = tmp_path / "train.csv"
    rows = [[f"{c}.png", i] for i, c in enumerate("abcde")]
    pp.write_rows(str(train), ["x:image", "y:label"], rows)
    rcand.write_relabelled(str(train), "y", new, str(tmp_path / "relabelled.csv"))
    _, rows = rp.read_csv_table(str(tmp_path / "relabelled.csv"))
    assert [list(r) for r in rows] == [
        ["a.png", "0"], ["b.png", "1"], ["c.png", "4"], ["d.png", "3"], ["e.png", "5"],
    ]  # fmt: skip


def test_a_relabelling_diagnostic_records_how_many_rows_it_relabelled(tmp_path):
    import retrain_candidate as rcand

    a = rp.parse_args(["--out", str(tmp_path / "out")])
    _task(a, "uniform", 0, [("none", 0, 0.90, 0.40)])
    task0 = os.path.join(a.out, "tasks", "uniform_0")
    changed = np.array([True, True, True, False])
    flipped = np.array([True, False, True, True])
    rcand.record(task0, "relabel_sure 0.8 (v5)", changed, flipped, 0.91, 0.39, n_relabel=2)
    (row,) = rp.collect(a, rp.DIAGNOSTICS)
    assert (row["n_changed"], row["n_relabel"], row["n_remove"]) == ("3", "2", "1")
    assert (float(row["precision"]), float(row["recall"])) == pytest.approx((2 / 3, 2 / 3))
