"""The regression's removal candidates: the most harmful rows harmful in every trial."""

import numpy as np

from sgd_influence_plugin.removal import MIN_ROWS, SHARES, removal_candidates


def test_candidates_take_the_most_harmful_rows_harmful_in_every_trial():
    rng = np.random.RandomState(0)
    n = 400
    trials = rng.normal(size=(3, n))
    trials[:, :40] = -np.linspace(5, 1, 40)  # rows 0..39: harmful in every trial, 0 the most
    trials[1, 40:] = np.abs(trials[1, 40:])  # no other row is harmful in every trial
    cands = removal_candidates(trials)
    assert [c.level for c in cands] == list(SHARES)
    for c in cands:
        k = max(MIN_ROWS, round(c.level * n))
        assert c.action == "remove" and list(c.rows) == list(range(k))  # top k, ascending
    sizes = [len(c.rows) for c in cands]
    assert sizes == sorted(set(sizes))  # no candidate twice


def test_too_few_harmful_rows_give_no_candidate():
    trials = np.ones((2, 100))
    trials[:, :2] = -1.0  # two suspects: fewer than MIN_ROWS
    assert removal_candidates(trials) == []
    trials[:, :10] = -np.arange(10, 0, -1)
    cands = removal_candidates(trials)
    assert [len(c.rows) for c in cands] == [3, 5, 10]  # capped at the 10 suspects
