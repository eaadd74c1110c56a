"""The recommendation (keep / relabel / remove per row): the rule against brute force, the
outputs that carry it (influence CSV, cleansed CSV, summary, report, the cleanse command),
the overrides, and the whole run on data with known flipped labels against the truth."""

import csv
import math
import os
import re

import numpy as np
import pytest
import yaml

from sgd_influence_plugin import cleanse, output
from sgd_influence_plugin import recommend as rc
from sgd_influence_plugin import recommendation as rn
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.errors import InputError, SettingsError
from sgd_influence_plugin.executor import LocalExecutor
from sgd_influence_plugin.nnabla_adapter import load_model
from sgd_influence_plugin.runner import RunRequest, run
from sgd_influence_plugin.settings import InfluenceSettings
from sgd_influence_plugin.table_columns import SCORE_COLUMNS
from support import fashion_mnist
from support.fashion_mnist import make_png_dataset
from support.netdef import NetSpec
from support.results import train_result

# ---- the rule, against brute force ---------------------------------------------------------


def _random_case(n=400, c=5, m=3, seed=0):
    rng = np.random.RandomState(seed)
    logits = rng.randn(n, c) * 3
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.randint(0, c, n)
    trials = rng.randn(m, n) + 0.3
    trials *= 1.0 / np.sqrt(np.mean(trials**2, axis=1, keepdims=True))  # equal trial scales
    return labels, prob, trials


def test_suspects_are_harmful_in_every_trial_and_disagree_with_the_model():
    labels, prob, trials = _random_case()
    s = rc.find_suspects(labels, prob, trials)
    for j in range(len(labels)):
        harmful = all(trials[m, j] < 0 for m in range(trials.shape[0]))
        pred = max(range(prob.shape[1]), key=lambda k: prob[j, k])
        assert s.mask[j] == (harmful and pred != labels[j])
        assert s.suggested[j] == pred and s.confidence[j] == prob[j, pred]
        assert s.p_given[j] == prob[j, labels[j]]
    assert 0 < s.mask.sum() < len(labels)


def test_candidates_are_nested_distinct_and_only_suspects():
    labels, prob, trials = _random_case(n=3000, m=2, seed=1)
    s = rc.find_suspects(labels, prob, trials)
    cands = rc.candidates(s)
    assert len(cands) >= 2 and {c.action for c in cands} == {"remove"}  # never relabel
    assert {c.order for c in cands} == {"given_label", "margin_and_influence"}
    suspects = [j for j in range(len(labels)) if s.mask[j]]
    # the other order, by brute force: how many suspects have a larger margin p(model's class)
    # - p(given), plus how many have a lower mean influence over the trials (more harmful);
    # the smallest sum first, ties by the larger margin, then the row
    margin = {j: prob[j].max() - prob[j, labels[j]] for j in suspects}
    mean_inf = {j: trials[:, j].mean() for j in suspects}  # equal trial scales: combine = mean
    place_m = {j: sum(margin[k] > margin[j] for k in suspects) for j in suspects}
    place_i = {j: sum(mean_inf[k] < mean_inf[j] for k in suspects) for j in suspects}
    combined = sorted(suspects, key=lambda j: (place_m[j] + place_i[j], -margin[j], j))
    assert rc.combined_order(s).tolist() == combined
    seen = []
    for c in cands:
        below = [j for j in suspects if prob[j, labels[j]] < c.level]
        expect = below if c.order == "given_label" else sorted(combined[: len(below)])
        assert c.rows.tolist() == expect
        assert c.new_labels.tolist() == [int(np.argmax(prob[j])) for j in expect]
        assert expect not in seen  # equal sets are tried once
        seen.append(expect)
    for order in rc.ORDERS:
        sets = [set(c.rows.tolist()) for c in cands if c.order == order]
        for a, b in zip(sets, sets[1:]):
            assert a < b  # nested within each order
    # Nothing is missing: every distinct non-empty set of both orders at every level is tried
    # (at the largest level both hold every suspect, so that one is tried once).
    distinct = []
    for level in rc.GIVEN_LABEL_LEVELS:
        below = [j for j in suspects if prob[j, labels[j]] < level]
        for rows in (below, sorted(combined[: len(below)])):
            if rows and rows not in distinct:
                distinct.append(rows)
    assert [c.rows.tolist() for c in cands] == distinct
    assert sum(c.order == "margin_and_influence" for c in cands) >= 2
    none = rc.find_suspects(labels, prob, np.abs(trials))  # nothing harmful
    assert rc.candidates(none) == []


def test_the_orders_differ_where_the_model_is_sure_of_another_class_and_the_row_harms():
    # Row 0: given label 0.10, the model sure of another class (0.90), the most harmful;
    # row 1: given label 0.04, the model unsure among the others (0.32 each), harmful too;
    # row 2: given label 0.02, unsure, barely harmful; row 3's label is the model's.
    prob = np.array(
        [
            [0.10, 0.90, 0.00, 0.00],
            [0.04, 0.32, 0.32, 0.32],
            [0.02, 0.34, 0.32, 0.32],
            [0.90, 0.05, 0.03, 0.02],
        ]
    )
    labels = np.array([0, 0, 0, 0])
    s = rc.find_suspects(labels, prob, np.array([[-3.0, -2.0, -0.1, -5.0]]))
    # margins 0.80, 0.28, 0.32 -> places 0, 2, 1; influence -3, -2, -0.1 -> places 0, 1, 2
    assert rc.combined_order(s).tolist() == [0, 2, 1]  # sums 0, 3, 3: the larger margin first
    cands = rc.candidates(s, levels=(0.03, 0.05, 0.5))
    got = [(c.order, c.level, c.rows.tolist()) for c in cands]
    assert got == [
        ("given_label", 0.03, [2]),  # the lowest given-label probability
        ("margin_and_influence", 0.03, [0]),  # as many rows, the first of both signals
        ("given_label", 0.05, [1, 2]),
        ("margin_and_influence", 0.05, [0, 2]),
        ("given_label", 0.5, [0, 1, 2]),  # row 3's label is the model's: never a suspect
    ]
    assert "surest of another class and most harmful" in cands[1].describe()
    # The influence decides between rows of equal margin (equal values share a rank): the
    # more harmful first, whatever the row order.
    s = rc.find_suspects(labels[:3], prob[[1, 1, 1]], np.array([[-1.0, -4.0, -2.0]]))
    assert rc.combined_order(s).tolist() == [1, 2, 0]


def test_paired_change_is_the_mean_difference_and_its_standard_error():
    rng = np.random.RandomState(2)
    a, b = rng.rand(50), rng.rand(50)
    mean, se = rc.paired_change(a, b)
    d = [x - y for x, y in zip(a, b)]
    mu = sum(d) / len(d)
    sd = math.sqrt(sum((x - mu) ** 2 for x in d) / (len(d) - 1))
    assert mean == pytest.approx(mu, rel=1e-12) and se == pytest.approx(sd / math.sqrt(50))


def _checked(n_rows, shift, base, rng, noise=0.01, action="remove"):
    c = rc.Candidate(0.1, action, np.arange(n_rows), np.zeros(n_rows, dtype=np.int64))
    c.heldout_loss = base + shift + rng.randn(len(base)) * noise
    c.loss_change, c.standard_error = rc.paired_change(c.heldout_loss, base)
    return c


def test_the_bar_is_bonferroni_over_the_candidates():
    assert rn.z_required(1) == pytest.approx(2.326, abs=1e-3)  # one-sided 1%
    assert rn.z_required(8) == pytest.approx(3.023, abs=1e-3)  # 1% / 8
    rng = np.random.RandomState(9)
    base = rng.rand(2000)
    c = _checked(10, 0.0, base, rng, noise=0.0)
    c.loss_change, c.standard_error = -2.5, 1.0  # z = -2.5
    assert c.passes(rn.z_required(1)) and not c.passes(rn.z_required(8))
    assert rn.choose([c]) is c
    others = [_checked(10 + k, +0.01, base, rng) for k in range(7)]
    assert rn.choose([c] + others) is None  # the same evidence among 8 tries is not enough


def test_choose_takes_the_fewest_rows_within_one_standard_error_of_the_best():
    rng = np.random.RandomState(3)
    base = rng.rand(2000)
    small, mid, best, worse = (
        _checked(10, -0.05, base, rng),
        _checked(20, -0.0502, base, rng),
        _checked(30, -0.08, base, rng),
        _checked(5, +0.02, base, rng),
    )
    bar = rn.z_required(4)
    assert [c.passes(bar) for c in (small, mid, best, worse)] == [True, True, True, False]
    assert rn.choose([small, mid, best, worse]) is best  # 0.03 apart: far beyond 1 SE
    # Fewer rows and worse than the best by a third of a paired standard error: chosen.
    close = _checked(8, 0.0, base, rng)
    wiggle = rng.randn(len(base)) * 0.01
    wiggle -= wiggle.mean()
    gap_se = wiggle.std(ddof=1) / np.sqrt(len(base))
    close.heldout_loss = best.heldout_loss + wiggle + gap_se / 3
    close.loss_change, close.standard_error = rc.paired_change(close.heldout_loss, base)
    assert close.loss_change > best.loss_change
    assert rn.choose([small, mid, best, worse, close]) is close
    # Worse by two paired standard errors: the best stays.
    close.heldout_loss = best.heldout_loss + wiggle + 2 * gap_se
    close.loss_change, close.standard_error = rc.paired_change(close.heldout_loss, base)
    assert rn.choose([small, mid, best, worse, close]) is best
    assert rn.choose([worse]) is None
    # The same rows relabelled or removed, within a standard error of each other: the check's
    # better one, whichever action it is (no prior preference for either).
    remove = _checked(12, -0.06, base, rng)
    relabel = _checked(12, 0.0, base, rng, action="relabel")
    relabel.heldout_loss = remove.heldout_loss + wiggle + gap_se / 3
    relabel.loss_change, relabel.standard_error = rc.paired_change(relabel.heldout_loss, base)
    assert relabel.loss_change > remove.loss_change
    assert rn.choose([relabel, remove]) is remove
    relabel.heldout_loss = remove.heldout_loss - wiggle - gap_se / 3
    relabel.loss_change, relabel.standard_error = rc.paired_change(relabel.heldout_loss, base)
    assert relabel.loss_change < remove.loss_change
    assert rn.choose([remove, relabel]) is relabel
    # Fewer rows within a standard error still win over the better action on more rows.
    fewer = _checked(11, 0.0, base, rng, action="relabel")
    fewer.heldout_loss = relabel.heldout_loss + wiggle + gap_se / 3
    fewer.loss_change, fewer.standard_error = rc.paired_change(fewer.heldout_loss, base)
    assert rn.choose([remove, relabel, fewer]) is fewer
    insignificant = _checked(10, -0.0001, base, rng, noise=0.05)
    assert not insignificant.passes(rn.z_required(1)) and rn.choose([insignificant]) is None


def test_build_changes_nothing_when_no_candidate_passes():
    labels, prob, trials = _random_case(seed=4)
    s = rc.find_suspects(labels, prob, trials)
    rng = np.random.RandomState(0)
    cands = rc.candidates(s)
    base = rng.rand(300)
    for c in cands:
        c.heldout_loss = base + 0.01
        c.loss_change, c.standard_error = rc.paired_change(c.heldout_loss, base)
    rec = rn.build(s, cands, 300, {})
    assert rec.chosen is None and set(rec.action) == {"keep"}
    assert rec.reason.startswith("change nothing") and f"{int(s.mask.sum())} suspect" in rec.reason
    cands[1].heldout_loss = base - 0.05
    cands[1].loss_change, cands[1].standard_error = rc.paired_change(cands[1].heldout_loss, base)
    rec = rn.build(s, cands, 300, {})
    assert rec.chosen is cands[1] and rec.counts()["remove"] == len(cands[1].rows)
    assert sorted(np.flatnonzero(rec.action == "remove")) == cands[1].rows.tolist()
    # The reason and the settings name the order the chosen rows were taken in.
    for order, words in (
        ("margin_and_influence", "where it is surest of its class and the influence"),
        ("given_label", "probability under"),
    ):
        c = next(c for c in cands if c.order == order)
        for other in cands:
            other.heldout_loss = base + (-0.05 if other is c else 0.01)
            other.loss_change, other.standard_error = rc.paired_change(other.heldout_loss, base)
        rec = rn.build(s, cands, 300, {})
        assert rec.chosen is c and words in rec.reason
        assert rec.to_dict()["chosen"]["order"] == order
    # With the neighbours' agreement, the ranked order is the three-rank one, and says so.
    s3 = rc.find_suspects(labels, prob, trials, agreement=rng.rand(len(labels)))
    c3 = next(c for c in rc.candidates(s3) if c.order == "margin_influence_neighbours")
    c3.heldout_loss = base - 0.05
    c3.loss_change, c3.standard_error = rc.paired_change(c3.heldout_loss, base)
    rec = rn.build(s3, [c3], 300, {})
    assert rec.chosen is c3 and "fewest of the nearest validation rows share" in rec.reason
    assert rec.to_dict()["chosen"]["order"] == "margin_influence_neighbours"
    assert rec.agreement is s3.agreement  # what the influence CSV writes per row


def test_a_choice_that_does_not_pass_again_in_a_second_order_changes_nothing():
    labels, prob, trials = _random_case(seed=4)
    s = rc.find_suspects(labels, prob, trials)
    cands = rc.candidates(s)
    base = np.random.RandomState(0).rand(300)
    noise = np.random.RandomState(1).randn(300) * 0.01

    def result(c, shift):
        c.heldout_loss = base + shift + noise
        c.loss_change, c.standard_error = rc.paired_change(c.heldout_loss, base)
        return c

    for k, c in enumerate(cands):
        result(c, -0.005 if k == 1 else 0.01)
    bar = rn.z_required(len(cands))
    assert rn.choose(cands) is cands[1] and cands[1].z < -bar
    for shift, held in ((-0.005, True), (-0.0015, False), (0.003, False)):
        again = result(rc.Candidate(**{**vars(cands[1]), "heldout_loss": None}), shift)
        rec = rn.build(s, cands, 300, {"lr": 0.1}, again)
        assert (rec.chosen is cands[1]) == held, (shift, again.z, rec.reason)
        assert rec.to_dict()["check"]["second_order"]["z"] == pytest.approx(again.z, rel=5e-3)
        assert rec.to_dict()["check"]["second_order"]["passes"] == held
        if held:
            assert rec.counts()["remove"] == len(cands[1].rows)
            assert f"by {-again.z:.1f} in a second sample order" in rec.reason
        else:
            assert set(rec.action) == {"keep"} and rec.reason.startswith("change nothing")
            assert "again in a second sample order" in rec.reason
            assert f"z {cands[1].z:+.1f}" in rec.reason and f"z {again.z:+.1f}" in rec.reason
    # Without a second order (the two-way check's design), the first check decides.
    assert rn.build(s, cands, 300, {}).chosen is cands[1]


def test_a_check_whose_epochs_diverged_says_so_and_changes_nothing():
    labels, prob, trials = _random_case(seed=4)
    s = rc.find_suspects(labels, prob, trials)
    cands = rc.candidates(s)
    base = np.random.RandomState(0).rand(300)

    def result(c, loss):
        c.heldout_loss = loss
        c.loss_change, c.standard_error = rc.paired_change(loss, base)

    for c in cands:
        result(c, np.full(300, np.nan))
    rec = rn.build(s, cands, 300, {"lr": 0.5})
    assert rec.chosen is None and set(rec.action) == {"keep"}
    assert "no finite held-out loss" in rec.reason and "lr 0.5" in rec.reason
    # One diverged and one clearly better: the better one; a diverged one is never chosen.
    result(cands[0], base - 0.05)
    assert rn.build(s, cands, 300, {}).chosen is cands[0]
    # None passes: the best named in the reason is a finite one.
    result(cands[0], base + 0.01)
    rec = rn.build(s, cands, 300, {})
    assert rec.chosen is None and "no change of them lowered" in rec.reason
    assert "nan" not in rec.reason and "+0.01" in rec.reason


def test_validation_halves_are_disjoint_seeded_and_cover_every_row():
    a, b = rc.split_validation(101, 5)
    assert len(b) == 50 and len(a) == 51 and not set(a) & set(b)
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(101))
    a2, b2 = rc.split_validation(101, 5)
    assert a.tolist() == a2.tolist() and b.tolist() == b2.tolist()
    assert rc.split_validation(101, 6)[1].tolist() != b.tolist()


def test_probabilities_are_kept_and_logits_softmaxed():
    p = np.array([[0.2, 0.8], [0.5, 0.5]])
    assert rc.as_probabilities(p) is not p and np.array_equal(rc.as_probabilities(p), p)
    logits = np.array([[0.0, math.log(3.0)]])
    np.testing.assert_allclose(rc.as_probabilities(logits), [[0.25, 0.75]])


def test_check_rate_uses_the_console_rate_for_sgd_and_the_curvature_otherwise():
    assert rc.check_rate("Sgd", 0.05, 10.0)[0] == 0.05
    assert rc.check_rate("Momentum", 0.01, 10.0)[0] == 0.01
    assert rc.check_rate("Adam", 0.001, 8.0)[0] == 0.125
    assert math.isnan(rc.check_rate("Adam", 0.001, float("nan"))[0])


# ---- the outputs ------------------------------------------------------------------------


def _recommendation(n, relabel, remove, suggested):
    """A Recommendation that relabels ``relabel`` and removes ``remove`` (row indices)."""
    action = np.full(n, "keep", dtype=object)
    action[relabel], action[remove] = "relabel", "remove"
    chosen = rc.Candidate(0.1, "relabel", np.array(relabel), suggested[relabel])
    chosen.loss_change, chosen.standard_error = -0.5, 0.1
    other = rc.Candidate(0.2, "remove", np.array(remove), suggested[remove], "margin_and_influence")
    other.loss_change, other.standard_error = 0.03, 0.01
    return rn.Recommendation(
        action=action,
        suggested=suggested,
        confidence=np.linspace(0.5, 0.99, n),
        chosen=chosen,
        checked=[chosen, other],
        n_heldout=100,
        n_suspects=len(relabel) + len(remove),
        reason="relabel 3 rows: made up for the test",
    )


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def known(data7, tmp_path):
    train = load_dataset(data7["train"], {"x": (1, 7, 7), "y": (1,)})
    scores = np.random.RandomState(7).randn(train.size) * 1e-3
    given = np.array([int(train.cell(i, "y:label")) for i in range(train.size)])
    suggested = (given + 1) % 10
    relabel, remove = [4, 11, 30], [2, 41]
    rec = _recommendation(train.size, relabel, remove, suggested)
    return train, scores, rec, relabel, remove, suggested, tmp_path / "out" / "influence.csv"


def _same_file(cell, csv_path, train, j):
    """The image cell (relative to ``csv_path``'s folder) names training row j's image."""
    here = os.path.realpath(os.path.join(os.path.dirname(str(csv_path)), cell))
    return here == os.path.realpath(os.path.join(train.folder, train.cell(j, "x:image")))


def test_influence_csv_and_cleansed_csv_apply_the_recommendation(known):
    train, scores, rec, relabel, remove, suggested, out = known
    content = output.RunContent(scores, train, ["x", "y"], {}, recommendation=rec)
    paths = output.write_influence_output(str(out), content, report=True)
    rows = _rows(paths.csv)
    assert list(rows[0]) == ["x:image", "y:label"] + SCORE_COLUMNS + ["original"]
    for r in rows:  # every cell of a row belongs to the same training row
        j = int(r["datasource_index"])
        assert r["action"] == rec.action[j] and r["suggested_label"] == str(suggested[j])
        assert float(r["confidence"]) == pytest.approx(rec.confidence[j], abs=1e-4)
        assert r["y:label"] == train.cell(j, "y:label") and _same_file(r["x:image"], out, train, j)
    assert [float(r["influence"]) for r in rows] == sorted(scores.tolist())
    cleansed = _rows(paths.cleansed)
    assert len(cleansed) == train.size - len(remove)
    kept = [j for j in range(train.size) if j not in remove]
    for r, j in zip(cleansed, kept):  # same order as the training CSV, removed rows left out
        assert _same_file(r["x:image"], paths.cleansed, train, j)
        want = str(suggested[j]) if j in relabel else train.cell(j, "y:label")
        assert r["y:label"] == want
    summary = open(paths.summary).read()
    assert "RECOMMENDATION" in summary and "keep 45, relabel 3, remove 2 of 50 rows" in summary
    assert "why: relabel 3 rows: made up for the test" in summary
    # Each changed row is counted under its given label, its action and the model's class.
    for j in relabel + remove:
        act = "relabel" if j in relabel else "remove"
        given = train.cell(j, "y:label")
        assert re.search(rf"  {given} -> {act}, model: {suggested[j]}: \d+", summary), summary
    assert "next: retrain on influence_cleansed.csv (beside this file)" in summary
    # The class pairs, counted by hand from the changed rows (given label, model's class).
    pairs = {}
    for j in relabel + remove:
        key = tuple(sorted((int(train.cell(j, "y:label")), int(suggested[j]))))
        pairs[key] = pairs.get(key, 0) + 1
    for (a, b), k in pairs.items():
        line = f"  {a} <-> {b}: {k} row{'s' if k > 1 else ''}"
        assert line in summary.split("concentrate on")[1], summary
    page = open(paths.report, encoding="utf-8").read()
    assert "concentrate on these class pairs" in page
    assert "<h2>Recommendation</h2>" in page and "keep 45, relabel 3, remove 2" in page
    # Every change the check tried, with its result, the recommended one marked.
    tried = page.split("Changes the check tried")[1].split("</table>")[0]
    rows = tried.split("<tr>")[2:]
    assert len(rows) == 2 and "relabel 3" in rows[0] and "given label below 0.1" in rows[0]
    assert "-5.0" in rows[0] and "yes" in rows[0] and "recommended" in rows[0]
    assert (
        "remove 2" in rows[1]
        and "surest of another class and most harmful, as many as below 0.2" in rows[1]
    )
    assert "+3.0" in rows[1] and "no" in rows[1] and "recommended" not in rows[1]
    changed = page.split("Rows to change")[1].split("<h2>")[0]
    assert changed.count('class="tile"') == 5  # the five changed rows, with both labels
    assert changed.count("model: ") == 5 and "relabel</span>" in changed


def test_remove_ratio_overrides_the_recommendation(known):
    train, scores, rec, relabel, remove, suggested, out = known
    content = output.RunContent(scores, train, ["x", "y"], {}, recommendation=rec, remove_ratio=0.1)
    paths = output.write_influence_output(str(out), content)
    cleansed = _rows(paths.cleansed)
    dropped = set(np.argsort(scores, kind="stable")[:5].tolist())
    kept = [j for j in range(train.size) if j not in dropped]
    assert len(cleansed) == len(kept)
    for r, j in zip(cleansed, kept):  # no relabelling under the override
        assert r["y:label"] == train.cell(j, "y:label")
        assert _same_file(r["x:image"], paths.cleansed, train, j)


def test_cleanse_command_applies_the_action_column_or_the_override(known, data7, tmp_path):
    train, scores, rec, relabel, remove, suggested, out = known
    content = output.RunContent(scores, train, ["x", "y"], {}, recommendation=rec)
    paths = output.write_influence_output(str(out), content)
    target = tmp_path / "elsewhere" / "clean.csv"
    os.makedirs(target.parent)
    done = cleanse.cleanse(paths.csv, data7["train"], str(target))
    assert done["removed"] == sorted(remove)
    assert done["relabelled"] == {j: str(suggested[j]) for j in sorted(relabel)}
    assert open(target).read().replace(
        os.path.relpath(train.folder, str(target.parent)), "X"
    ) == open(paths.cleansed).read().replace(os.path.relpath(train.folder, str(out.parent)), "X")
    over = cleanse.cleanse(paths.csv, data7["train"], str(tmp_path / "elsewhere" / "c2.csv"), 3)
    assert over["removed"] == sorted(np.argsort(scores, kind="stable")[:3].tolist())
    assert over["relabelled"] == {}
    # A damaged action column is refused before anything is written.
    text = open(paths.csv).read().replace(",relabel,", ",rename,", 1)
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    with pytest.raises(InputError, match=r"bad.csv row \d+: action 'rename'"):
        cleanse.cleanse(str(bad), data7["train"], str(tmp_path / "elsewhere" / "c3.csv"))
    assert not os.path.exists(tmp_path / "elsewhere" / "c3.csv")
    with pytest.raises(SettingsError, match="at most one"):
        cleanse.cleanse(paths.csv, data7["train"], str(tmp_path / "c4.csv"), 3, 0.1)


def test_no_recommendation_means_keep_and_an_unchanged_cleansed_csv(data7, tmp_path):
    train = load_dataset(data7["train"], {"x": (1, 7, 7), "y": (1,)})
    scores = np.linspace(-1, 1, train.size)
    out = tmp_path / "influence.csv"
    rec = rn.unavailable(train.size, "no recommendation: made up")
    content = output.RunContent(scores, train, ["x", "y"], {}, recommendation=rec)
    paths = output.write_influence_output(str(out), content)
    rows = _rows(paths.csv)
    assert {r["action"] for r in rows} == {"keep"} and {r["suggested_label"] for r in rows} == {""}
    cleansed = _rows(paths.cleansed)
    assert [r["y:label"] for r in cleansed] == [train.cell(j, "y:label") for j in range(50)]
    assert "next: nothing to change" in open(paths.summary).read()


# ---- the whole run on data with known flips ----------------------------------------------


@pytest.fixture(scope="module")
def flipped_world(tmp_path_factory):
    """1,200 training rows (10% labels flipped to another class, seeded), 400 clean
    validation rows, an MLP trained on them by nnabla_cli; and the same with clean labels."""
    root = tmp_path_factory.mktemp("flips")
    data = make_png_dataset(root / "data", 1200, 400, size=14, seed=5)
    noisy_csv, flipped = fashion_mnist.write_noisy_train(data, 0.1, 1234)
    out = {}
    for name, train_csv in (("clean", data["train"]), ("noisy", noisy_csv)):
        d = dict(data, train=train_csv)
        spec = NetSpec(arch="mlp", batch_size=32, lr=0.1, max_epoch=15, seed=3)
        out[name] = (train_result(root / name, d, spec), d)
    return out, flipped


def _run(folder, data, out):
    req = RunRequest(
        output=str(out),
        model=os.path.join(folder, "results.nnp"),
        train=data["train"],
        val=data["val"],
        settings=InfluenceSettings(jobs=1),
    )
    paths, _ = run(req)
    return paths


def _nearest_share(feats, labels, ref, ref_labels, k):
    """Per row, the share of its k most cosine-similar reference rows with its label (loop)."""
    out = []
    for f, y in zip(feats.astype(np.float64), labels):
        sim = ref.astype(np.float64) @ f / (np.linalg.norm(ref, axis=1) * np.linalg.norm(f))
        out.append(np.mean(ref_labels[np.argsort(-sim, kind="stable")[:k]] == y))
    return np.array(out)


def test_on_known_flips_the_changed_rows_are_the_flips(flipped_world, tmp_path):
    worlds, flipped = flipped_world
    folder, data = worlds["noisy"]
    paths = _run(folder, data, tmp_path / "noisy" / "influence.csv")
    rows = _rows(paths.csv)
    changed = np.zeros(len(flipped), bool)
    for r in rows:
        changed[int(r["datasource_index"])] = r["action"] != "keep"
    precision = flipped[changed].mean()
    recall = changed[flipped].mean()
    assert changed.sum() > 0, open(paths.summary).read()
    assert precision >= 0.8 and recall >= 0.4, (precision, recall, open(paths.summary).read())
    facts = yaml.safe_load(open(paths.settings))
    rec = facts["recommendation"]
    assert rec["counts"]["relabel"] + rec["counts"]["remove"] == changed.sum()
    assert rec["chosen"]["passes"] and rec["chosen"]["z"] <= -rec["z_required"]
    # ... and passed again in a second sample order, two more epochs
    again = rec["check"]["second_order"]
    assert again["passes"] and again["z"] <= -rec["z_required"] and again["z"] != rec["chosen"]["z"]
    assert again["rows"] == rec["chosen"]["rows"] == changed.sum()
    assert rec["check"]["epochs_run"] == len(rec["checked"]) + 3
    assert "in a second sample order" in rec["reason"]
    assert (
        f"checked again in a second sample order: remove {again['rows']} rows: held-out loss "
        f"{again['heldout_loss_change']:+.4g} (z {again['z']:+.1f}), passes"
    ) in open(paths.summary).read()
    from sgd_influence_plugin.report import checked_table

    table = checked_table(rec)
    assert "the chosen change again, in a second sample order" in table
    assert table.count("<tr>") == len(rec["checked"]) + 2  # the header, each, the second order
    assert rec["z_required"] == pytest.approx(rn.z_required(len(rec["checked"])), abs=1e-3)
    marked = [c for c in rec["checked"] if c["recommended"]]  # exactly the chosen one
    assert len(marked) == 1 and {k: marked[0][k] for k in rec["chosen"]} == rec["chosen"]
    # the influence from all 400 rows; the candidates from half A, the check on half B
    assert facts["validation_rows"] == {
        "influence": 400,
        "candidates": 200,
        "heldout_for_check": 200,
    }
    # The third rank: the influence's 200 validation rows, in the MLP's 64 hidden units.
    assert rec["check"]["neighbours"] == {
        "used": True, "feature": rec["check"]["neighbours"]["feature"], "width": 64,
        "reference_rows": 200, "k": 14,
    }  # fmt: skip
    assert {c["order"] for c in rec["checked"]} == {"given_label", "margin_influence_neighbours"}
    assert rec["check"]["design"] == (
        "one-way: changes chosen with half A (200 rows), checked on half B (200 held-out rows)"
    )
    assert "check: one-way" in open(paths.summary).read()
    # Each row's neighbour_agreement: its 14 nearest rows of the candidates' validation half
    # (not the held-out half), by a plain loop over the MLP's features.
    model = load_model(model=os.path.join(folder, "results.nnp"))
    shapes = model.info.input_shapes
    train = load_dataset(data["train"], shapes).arrays
    val = load_dataset(data["val"], shapes).arrays
    first, _ = rc.split_validation(400, 0)
    some = np.arange(0, 1200, 97)
    ref = model.features({k: v[first] for k, v in val.items()})
    feats = model.features({k: v[some] for k, v in train.items()})
    want = _nearest_share(feats, train["y"][some].ravel(), ref, val["y"][first].ravel(), 14)
    got = {int(r["datasource_index"]): float(r["neighbour_agreement"]) for r in rows}
    np.testing.assert_allclose([got[i] for i in some], want, atol=5e-4)  # written with 3 digits
    # The cleansed CSV is what the recommendation says, row for row.
    cleansed = _rows(paths.cleansed)
    assert len(cleansed) == 1200 - rec["counts"]["remove"]
    summary = open(paths.summary).read()
    assert re.search(r"keep \d+, relabel \d+, remove \d+ of 1200 rows", summary)


def test_on_clean_labels_it_changes_next_to_nothing(flipped_world, tmp_path):
    worlds, _ = flipped_world
    folder, data = worlds["clean"]
    paths = _run(folder, data, tmp_path / "clean" / "influence.csv")
    rows = _rows(paths.csv)
    changed = sum(r["action"] != "keep" for r in rows)
    assert changed <= 12, open(paths.summary).read()  # at most 1% of the rows


def test_no_recommend_gives_the_scores_every_validation_row(flipped_world, tmp_path):
    worlds, _ = flipped_world
    folder, data = worlds["noisy"]
    req = RunRequest(
        output=str(tmp_path / "off" / "influence.csv"),
        model=os.path.join(folder, "results.nnp"),
        train=data["train"],
        val=data["val"],
        settings=InfluenceSettings(jobs=1, trials=1),
        recommend=False,
    )
    paths, result = run(req)
    facts = yaml.safe_load(open(paths.settings))
    assert facts["validation_rows"] == {"influence": 400, "candidates": 0, "heldout_for_check": 0}
    assert facts["recommendation"]["reason"] == "no recommendation: turned off"
    assert {r["action"] for r in _rows(paths.csv)} == {"keep"}
    assert len(_rows(paths.cleansed)) == 1200


def test_check_epochs_match_a_plain_loop_in_workers_and_on_a_row_sample(flipped_world):
    """The check against its definition: from the trained parameters, one decaying-rate epoch
    over the seeded row sample, on the data as given and on each candidate, compared row by
    row on the held-out rows. Forked workers and a sample of the rows change nothing else."""
    from sgd_influence_plugin import core
    from sgd_influence_plugin.nnabla_adapter import load_model

    worlds, _ = flipped_world
    folder, data = worlds["noisy"]
    model = load_model(model=os.path.join(folder, "results.nnp"))
    train = load_dataset(data["train"], model.info.input_shapes).arrays
    held = load_dataset(data["val"], model.info.input_shapes).arrays
    label = next(iter(model.info.label_classes))
    rows = np.arange(0, 1200, 37)
    new = (np.asarray(train[label]).reshape(-1)[rows].astype(np.int64) + 1) % 10

    def cands():
        return [rc.Candidate(0.1, "relabel", rows, new), rc.Candidate(0.1, "remove", rows, new)]

    theta0 = model.get_params()
    kw = dict(lr=0.05, batch_size=32, seed=7, predict=model.predict)
    serial = rc.check_candidates(model, train, held, label, cands(), rows=300, **kw)
    two = LocalExecutor(2)
    forked = rc.check_candidates(model, train, held, label, cands(), executor=two, rows=300, **kw)
    whole = rc.check_candidates(model, train, held, label, cands(), **kw)
    for a, b in zip(serial, forked):
        np.testing.assert_array_equal(a.heldout_loss, b.heldout_loss)
    assert all(np.array_equal(v, theta0[k]) for k, v in model.get_params().items())

    order = np.random.RandomState(7).permutation(1200)[:300]
    np.testing.assert_array_equal(rc.check_order(1200, 7, 300), order)
    assert len(rc.check_order(1200, 7, 5000)) == 1200

    def loop(arrays, weight=None, order=order):  # the oracle: the epoch written out
        model.set_params(theta0)
        lrs = 0.05 * (1.0 - np.arange(10) / 10)  # 300 rows / 32 = 10 steps, decaying to 0
        core.sgd_epoch(model, arrays, order, lrs, 32, sample_weight=weight)
        out = core.per_sample_losses(model, held)
        model.set_params(theta0)
        return out

    base = loop(train)
    relabelled = dict(train, **{label: np.array(train[label], copy=True)})
    relabelled[label].reshape(1200, -1)[rows, 0] = new
    weight = np.ones(1200, np.float32)
    weight[rows] = 0
    for c, want in zip(serial, (loop(relabelled), loop(train, weight))):
        np.testing.assert_allclose(c.heldout_loss, want, rtol=1e-5, atol=1e-6)
        assert c.loss_change == pytest.approx(np.mean(want - base), abs=1e-6)
    # A sample of 300 rows is not the whole epoch: the sample size must reach the epoch.
    assert not np.allclose(whole[0].heldout_loss, serial[0].heldout_loss)
    # The chosen change checked again: the same change in the order of seed + 1, against
    # the data as given in that order; the first result is left as it was.
    first = serial[1].heldout_loss.copy()
    again = rc.check_again(model, train, held, label, serial[1], rows=300, executor=two, **kw)
    order2 = np.random.RandomState(8).permutation(1200)[:300]
    want = loop(train, weight, order2)
    np.testing.assert_allclose(again.heldout_loss, want, rtol=1e-5, atol=1e-6)
    assert again.loss_change == pytest.approx(np.mean(want - loop(train, None, order2)), abs=1e-6)
    assert again is not serial[1] and np.array_equal(serial[1].heldout_loss, first)
    assert again.rows is serial[1].rows and again.action == "remove"
    assert all(np.array_equal(v, theta0[k]) for k, v in model.get_params().items())


def _noisy_run(worlds, tmp_path, jobs: int, **request):
    """The run on the noisy world with ``jobs`` processes, written to ``tmp_path/j<jobs>``:
    its output paths."""
    folder, data = worlds["noisy"]
    req = RunRequest(
        output=str(tmp_path / f"j{jobs}" / "influence.csv"),
        model=os.path.join(folder, "results.nnp"),
        train=data["train"],
        val=data["val"],
        settings=InfluenceSettings(jobs=jobs),
        **request,
    )
    return run(req)[0]


def test_work_done_early_in_a_helper_gives_the_same_run(flipped_world, tmp_path, monkeypatch):
    """With two cores the run computes the training losses, the probabilities and the check's
    epoch on the data as given in a helper process while the influence runs: the CSV and the
    recommendation are those of a run that does it all in one process."""
    worlds, _ = flipped_world
    outs, given_base = {}, []
    real = rc.check_candidates

    def spy(*args, **kwargs):
        given_base.append(kwargs.get("base") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(rc, "check_candidates", spy)
    for jobs in (1, 2):
        paths = _noisy_run(worlds, tmp_path, jobs)
        facts = yaml.safe_load(open(paths.settings))
        outs[jobs] = (open(paths.csv).read(), facts["recommendation"], facts["timings_seconds"])
    assert outs[1][0] == outs[2][0]  # every score, loss, suggestion and action
    wheres = []
    for rec in (outs[1][1], outs[2][1]):
        rec["check"].pop("jobs")  # the worker processes the check had, 1 or 2
        wheres.append(rec["check"].pop("base_epoch"))
    assert wheres == ["after the influence", "beside the influence"]
    assert outs[1][1] == outs[2][1]  # every candidate's held-out result
    assert outs[1][2]["replay_processes"] == 1 and outs[2][2]["replay_processes"] == 2
    assert given_base == [False, True]  # one process computed it; two took it from the helper


def test_without_a_recommendation_the_helper_computes_the_models_classes(
    flipped_world, tmp_path, monkeypatch
):
    """``--no-recommend`` with two cores: the model's class probabilities (the suggested
    label and confidence columns) come from the helper that computes the losses beside the
    influence, not from this process after it; the CSV is that of one process."""
    import sgd_influence_plugin.runner as runner_mod

    worlds, _ = flipped_world
    here, csvs = [], {}
    real = runner_mod.model_probabilities

    def spy(model, train):
        here.append(os.getpid())  # a forked helper appends to its own copy
        return real(model, train)

    monkeypatch.setattr(runner_mod, "model_probabilities", spy)
    for jobs in (1, 2):
        del here[:]
        csvs[jobs] = open(_noisy_run(worlds, tmp_path, jobs, recommend=False).csv).read()
        assert here == ([os.getpid()] if jobs == 1 else [])
    assert csvs[1] == csvs[2]
    rows = _rows(str(tmp_path / "j2" / "influence.csv"))
    assert all(r["suggested_label"] != "" for r in rows)
