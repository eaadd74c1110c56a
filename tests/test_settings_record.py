"""The summary and ``STEM_settings.yaml`` state the rate the trials ran at (issue 34, case 12).

A trial found unstable runs again at a quarter of the rate. ``used.lr`` then is the rate the
trials really ran at (``lr_chosen`` keeps the one chosen before), and the summary's ``lr``
agrees with it and with each trial's own entry.
"""

from __future__ import annotations

import yaml

from sgd_influence_plugin import cli, trials


def test_a_retried_trial_makes_used_lr_its_rate(world_small, monkeypatch):
    w = world_small
    real = trials.trial_problem
    calls = {"n": 0}

    def first_attempt_unstable(*a, **k):
        calls["n"] += 1
        return "made unstable by the test" if calls["n"] == 1 else real(*a, **k)

    monkeypatch.setattr(trials, "trial_problem", first_attempt_unstable)
    out = w["root"] / "retry" / "influence.csv"
    assert cli.main(w["run"] + ["--output", str(out), "--lr", "0.01"]) == 0
    facts = yaml.safe_load((out.parent / "influence_settings.yaml").read_text())
    (trial,) = facts["trials"]
    assert trial["attempts"] == 2
    assert trial["lr"] == facts["used"]["lr"] == 0.01 / 4
    assert facts["used"]["lr_chosen"] == 0.01
    summary = (out.parent / "influence_summary.txt").read_text()
    assert f"lr: {0.01 / 4}\n" in summary


def test_without_retries_used_lr_is_the_chosen_rate(world_small):
    w = world_small
    facts = yaml.safe_load((w["influence"].parent / "influence_settings.yaml").read_text())
    assert facts["used"]["lr"] == facts["lr_selection"]["lr"]
    assert all(t["lr"] == facts["used"]["lr"] for t in facts["trials"])
    assert "lr_chosen" not in facts["used"]
