"""The recommendation for a model with no classes (a regression): remove the most harmful rows,
checked like any other change.

A regression has no "model predicts another class", so its suspects are the rows harmful in
every trial, most harmful first. The candidates remove the top 1%, 2%, 5% and 10% of the
training rows among them (at least :data:`MIN_ROWS`); each is checked by the same settling
epoch and held-out loss comparison as a classifier's (:mod:`.heldout_check`), and the same
rule chooses (:func:`.recommend.choose`): a candidate must lower the held-out loss by the
Bonferroni bar, the smallest within one standard error of the best wins, and none passing
means change nothing.
"""

from __future__ import annotations

import math
from typing import List, Mapping, Optional

import numpy as np

from . import core
from .heldout_check import SEED_OFFSET, check_candidates, check_rate
from .recommend import MIN_HELDOUT, Recommendation, choose, unavailable, z_required
from .suspects import Candidate

#: Shares of the training rows the candidates remove (of the rows harmful in every trial).
SHARES = (0.01, 0.02, 0.05, 0.1)
#: A candidate removes at least this many rows; fewer suspects: no candidate.
MIN_ROWS = 3
#: What the settings file says the rule is.
RULE = (
    "suspects = influence < 0 in every trial; candidates = the most harmful suspects, as many "
    f"as {', '.join(f'{s:.0%}' for s in SHARES)} of the training rows (at least {MIN_ROWS}), "
    "removed; a candidate passes if one settling epoch on the changed data lowers the "
    "held-out validation loss by >= z_required standard errors; recommended = the passing "
    "candidate with the fewest rows within one standard error of the best; none passes = "
    "change nothing"
)


def removal_candidates(trial_scores: np.ndarray) -> List[Candidate]:
    """The candidates of the module docstring from ``trial_scores`` float64 (M, N)
    (negative = harmful); each removes rows in ascending order, ``level`` its share.
    """
    scores, _ = core.combine_trials(trial_scores)
    harmful = np.all(np.asarray(trial_scores) < 0, axis=0)
    ranked = [int(j) for j in np.argsort(scores, kind="stable") if harmful[j]]
    n = len(scores)
    out: List[Candidate] = []
    for share in SHARES:
        k = min(len(ranked), max(MIN_ROWS, int(round(share * n))))
        if k < MIN_ROWS or (out and len(out[-1].rows) == k):
            continue
        rows = np.array(sorted(ranked[:k]), dtype=np.int64)
        out.append(Candidate(share, "remove", rows, np.zeros(k, np.int64), "influence"))
    return out


def recommend_removal(
    model,
    train: Mapping[str, np.ndarray],
    heldout: Mapping[str, np.ndarray],
    target: str,
    trial_scores: np.ndarray,
    batch_size: int,
    weight_decay: float,
    lambda_max: float,
    seed: int,
    progress: Optional[core.Progress] = None,
    jobs: int = 1,
) -> Recommendation:
    """The checked removal for a model without classes (see the module docstring).

    Args:
        model: the model object :mod:`.core` describes, at the trained parameters (restored
            at the end).
        train / heldout: column -> (N, ...) / (V, ...) float32; ``heldout`` rows were not
            used by the influence.
        target: the column the loss compares with (``ModelInfo.target_column``).
        trial_scores: float64 (M, N), each trial's influence (negative = harmful).
        batch_size / weight_decay / lambda_max / seed: as for :func:`.recommend.recommend`.

    """
    n, n_held = len(train[target]), len(heldout[target])
    if n_held < MIN_HELDOUT:
        return unavailable(n, f"no recommendation: {n_held} held-out validation rows, at least "
                           f"{MIN_HELDOUT} are needed to check one")  # fmt: skip
    solver = model.info.solver
    lr, rate_source = check_rate(solver.type, solver.lr, lambda_max)
    if not math.isfinite(lr):
        return unavailable(n, f"no recommendation: {rate_source}")
    cands = removal_candidates(trial_scores)
    if cands:
        check_candidates(
            model, train, heldout, target, cands, lr, batch_size, weight_decay,
            seed=seed + SEED_OFFSET, progress=progress, jobs=jobs,
        )  # fmt: skip
    suspects = int(np.sum(np.all(np.asarray(trial_scores) < 0, axis=0)))
    chosen = choose(cands) if cands else None
    action = np.full(n, "keep", dtype=object)
    if chosen is not None:
        action[chosen.rows] = "remove"
        reason = (
            f"remove {len(chosen.rows)} rows: the most harmful {chosen.level:.0%}; removing "
            f"them lowered the held-out validation loss by {-chosen.loss_change:.3g} "
            f"({-chosen.z:.1f} standard errors, {z_required(len(cands)):.2f} needed)"
        )
    else:
        reason = (
            f"change nothing: {suspects} rows harmful in every trial, but no removal of them "
            "lowered the held-out validation loss by "
            f"{z_required(max(1, len(cands))):.2f} standard errors"
        )
    return Recommendation(
        action=action,
        suggested=np.full(n, -1, dtype=np.int64),
        confidence=np.full(n, np.nan),
        chosen=chosen,
        checked=cands,
        n_heldout=n_held,
        n_suspects=suspects,
        reason=reason,
        check={"lr": lr, "lr_source": rate_source, "schedule": "one epoch, rate decaying "
               "linearly to 0", "batch_size": int(batch_size), "weight_decay": weight_decay,
               "order_seed": seed + SEED_OFFSET, "epochs_run": len(cands) + 1 if cands else 0},
        rule=RULE,
    )  # fmt: skip
