"""What to do with each training row (keep or remove; the model's class is shown as the label to
check), decided by the run and checked on validation rows the candidates were not chosen with.
Why not a fixed share, and the measurements behind each step, are in
``docs/recommendation.md``. The scores here are half A's (:mod:`.crossfit`): the influence
from one seeded half of the validation rows; the check measures on the other half, B.

1. **Suspects**: rows harmful in every trial (influence < 0: removing the row lowers the
   validation loss) *and* whose given label the model does not predict. Their suggested
   label is the model's class, their confidence its probability.
2. **Candidate changes**: for each level ``tau`` of :data:`GIVEN_LABEL_LEVELS`, the suspects
   whose given label has probability below ``tau`` (nested sets), and as many suspects in a
   second order, by the sum of their ranks among the suspects (:func:`combined_order`): the
   margin ``p(suggested) - p(given)``, the influence and, when the network has a feature
   layer, how few of the row's nearest validation rows share its label (:mod:`.neighbours`;
   half A of the validation rows, whose labels are trusted and were not fitted). A label
   moved to an unrelated class comes first in the first order, one moved to a look-alike
   class in the second; the check picks. Sets are removed, never relabelled to
   the model's class, which writes the model's own confusions into the labels (models
   retrained on such labels lost 1-1.3 points); a person may set ``relabel`` (:mod:`.cleanse`).
3. **The check** (:mod:`.heldout_check`): from the trained parameters, one epoch of SGD at the
   console's rate, decaying linearly to 0, on the data as given and on each candidate (same
   sample order), then each held-out validation row's loss. A candidate counts only if it
   lowers the mean held-out loss by :func:`z_required` paired standard errors, a Bonferroni
   bound: noise alone makes a run change anything with probability at most
   :data:`FAMILY_ALPHA`. The recommendation is the counting candidate with the fewest rows
   within one standard error of the best (the one-standard-error rule); if none counts,
   change nothing.

The suspects and candidates are :mod:`.suspects` (their names are importable from here too).
The rule is numpy only, but for :func:`recommend` and :func:`early_work`, which run it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import core
from . import neighbours as neighbours_mod
from .executor import LocalExecutor
from .heldout_check import (  # noqa: F401 - part of this module's interface
    CHECK_ROWS,
    SEED_OFFSET,
    SGD_SOLVERS,
    _check_epoch,
    check_candidates,
    check_order,
    check_rate,
    paired_change,
    settle_epoch,
    split_validation,
)
from .probabilities import as_probabilities
from .suspects import (  # noqa: F401 - part of this module's interface
    GIVEN_LABEL_LEVELS,
    ORDERS,
    Candidate,
    Suspects,
    candidates,
    combined_order,
    find_suspects,
)

#: The chance, at most, that noise alone makes a run recommend a change (one-sided, over all
#: the candidates it tries; see :func:`z_required`). On clean labels a LeNet-style case had a
#: 213-row candidate at z = -2.7 among 8: a 2-standard-error bar would have removed them.
FAMILY_ALPHA = 0.01
#: Fewer held-out rows than this cannot back a recommendation (the standard error of the
#: mean loss difference is then too rough): the recommendation is to change nothing.
MIN_HELDOUT = 100
ACTIONS = ("keep", "relabel", "remove")


def z_required(n_candidates: int, alpha: float = FAMILY_ALPHA) -> float:
    """Standard errors a candidate must lower the held-out loss by: the one-sided normal
    quantile at ``alpha / n_candidates`` (Bonferroni), e.g. 3.02 for 8 candidates.
    """
    return NormalDist().inv_cdf(1.0 - alpha / max(1, n_candidates))


def choose(checked: Sequence[Candidate]) -> Optional[Candidate]:
    """The recommended candidate, or None (change nothing).

    A candidate passes if it lowers the held-out loss by :func:`z_required` standard errors
    for ``len(checked)`` candidates. Among those, the best is the one with the lowest held-out
    loss; the choice is the one with the fewest changed rows, then the lower held-out loss
    (so of two sets of one size, the check's better one), whose held-out loss
    is within one paired standard error of the best's.
    """
    z_bar = z_required(len(checked))
    passing = [c for c in checked if c.passes(z_bar)]
    if not passing:
        return None
    best = min(passing, key=lambda c: c.loss_change)
    for c in sorted(passing, key=lambda c: (len(c.rows), c.loss_change)):
        if c is best:
            return c
        if c.heldout_loss is None or best.heldout_loss is None:
            continue
        gap, se = paired_change(c.heldout_loss, best.heldout_loss)
        if gap <= se:
            return c
    return best


@dataclass
class Recommendation:
    """The run's advice for every training row, and the evidence.

    Attributes:
        action: (N,) str, ``keep``, ``relabel`` or ``remove``.
        suggested: int64 (N,) the model's class for every row (the new label of ``relabel``
            rows); ``confidence``: float64 (N,) its probability.
        chosen: the candidate recommended, or None (change nothing).
        checked: every candidate tried, with its held-out result.
        n_heldout: validation rows the check measured on (half B: not used to choose the
            candidates).
        n_suspects: rows harmful in every trial whose label the model does not predict.
        reason: one sentence for the summary.
        check: what the check ran (rate, epochs, seed).
        available: False when the run cannot recommend (not a classifier, too few held-out
            rows); ``reason`` says why and every action is ``keep``.
        agreement: float64 (N,) each row's share of nearest validation rows with its label
            (:attr:`Suspects.agreement`), or None when not measured.

    """

    action: np.ndarray
    suggested: np.ndarray
    confidence: np.ndarray
    chosen: Optional[Candidate]
    checked: List[Candidate]
    n_heldout: int
    n_suspects: int
    reason: str
    check: Dict = field(default_factory=dict)
    available: bool = True
    agreement: Optional[np.ndarray] = None

    def counts(self) -> Dict[str, int]:
        """Rows per action."""
        return {a: int(np.sum(self.action == a)) for a in ACTIONS}

    def to_dict(self) -> Dict:
        """For ``settings.yaml``."""
        z_bar = z_required(len(self.checked))
        return {
            "available": self.available,
            "reason": self.reason,
            "counts": self.counts(),
            "suspects": self.n_suspects,
            "heldout_rows": self.n_heldout,
            "z_required": round(z_bar, 3) if self.checked else None,
            "chosen": self.chosen.to_dict(z_bar) if self.chosen else None,
            "checked": [
                {**c.to_dict(z_bar), "recommended": c is self.chosen} for c in self.checked
            ],
            "check": dict(self.check),
            "rule": (
                "suspects = influence < 0 in every trial and the model predicts another class; "
                "candidates = suspects whose given label has probability below each level, "
                "and as many suspects with the smallest sum of ranks (margin of the "
                "model's class over the given label, largest first; influence, most harmful "
                "first; where the network has a feature layer, the share of the row's nearest "
                "validation rows with its label, smallest first), removed; a candidate passes "
                "if one settling epoch on the changed "
                "data lowers the held-out validation loss by >= z_required standard errors "
                f"(Bonferroni: noise alone passes one with chance <= {FAMILY_ALPHA:g}); "
                "recommended = the passing candidate with the fewest rows within one standard "
                "error of the best; none passes = change nothing"
            ),
        }


def unavailable(n: int, reason: str, prob: Optional[np.ndarray] = None) -> Recommendation:
    """A recommendation that changes nothing, for runs that cannot decide; ``prob``: the
    classifier's probabilities (N, C), when there is one, so every row still shows the
    model's class (``suggested``, -1 without) and its probability.
    """
    return Recommendation(
        action=np.full(n, "keep", dtype=object),
        suggested=np.full(n, -1, dtype=np.int64) if prob is None else prob.argmax(axis=1),
        confidence=np.full(n, np.nan) if prob is None else prob.max(axis=1),
        chosen=None,
        checked=[],
        n_heldout=0,
        n_suspects=0,
        reason=reason,
        available=False,
    )


def build(suspects: Suspects, checked: List[Candidate], n_heldout: int, check: Dict):
    """The :class:`Recommendation` from checked candidates (pure)."""
    n = len(suspects.given)
    action = np.full(n, "keep", dtype=object)
    chosen = choose(checked)
    n_suspects = int(suspects.mask.sum())
    if chosen is not None:
        action[chosen.rows] = chosen.action
        as_many = f"(as many as give the given label under {chosen.level:g})"
        which = {
            "margin_and_influence": f"they are the {len(chosen.rows)} where it is surest of "
            f"its class and the influence is most harmful, the two ranks together {as_many}",
            "margin_influence_neighbours": f"they are the {len(chosen.rows)} where it is "
            "surest of its class, the influence is most harmful and the fewest of the nearest "
            f"validation rows share the label, the three ranks together {as_many}",
        }.get(chosen.order, f"the given label has probability under {chosen.level:g}")
        reason = (
            f"{chosen.action} {len(chosen.rows)} rows: harmful in every trial, the model "
            f"predicts another class, and {which}; one settling epoch on the changed data "
            f"lowered the held-out validation loss by {-chosen.loss_change:.3g} "
            f"({-chosen.z:.1f} standard errors)"
        )
    elif n_suspects == 0:
        reason = (
            "change nothing: no row is harmful in every trial with a label the model does not "
            "predict"
        )
    elif checked and not any(math.isfinite(c.loss_change) for c in checked):
        reason = (
            f"change nothing: {n_suspects} suspect rows, but the check's epochs gave no finite "
            f"held-out loss (one epoch at lr {check.get('lr', math.nan):g} from the trained "
            "model diverged), so no change could be checked; the scores are not affected"
        )
    else:
        finite = [c for c in checked if math.isfinite(c.loss_change)]
        best = min(finite, key=lambda c: c.loss_change) if finite else None
        reason = (
            f"change nothing: {n_suspects} suspect rows, but no change of them lowered the "
            f"held-out validation loss by {z_required(len(checked)):.2f} standard errors"
            + (
                f" (best: {best.action} {len(best.rows)}, {best.loss_change:+.3g}, z {best.z:+.1f})"
                if best is not None
                else ""
            )
        )
    return Recommendation(
        action=action,
        suggested=suspects.suggested,
        confidence=suspects.confidence,
        chosen=chosen,
        checked=checked,
        n_heldout=n_heldout,
        n_suspects=n_suspects,
        reason=reason,
        check=check,
        agreement=suspects.agreement,
    )


# ----------------------------------------------------------------------------- one run


def _check_key(lr, batch_size, weight_decay, seed, check_rows, n, reference, label) -> Tuple:
    """What the check's epoch on the data as given and the neighbours' agreement depend on:
    :func:`early_work`'s result is used by :func:`recommend` only when both computed the same
    key.
    """
    n_ref = None if reference is None else len(reference[label])
    return (
        float(lr),
        int(batch_size),
        float(weight_decay),
        seed + SEED_OFFSET,
        check_rows,
        n,
        n_ref,
    )


def training_signals(model, train, reference, label_column: str):
    """``(prob float64 (N, C), agreement float64 (N,) or None, neighbours: dict)``: the
    model's class probabilities on the training rows and their validation neighbours'
    agreement with the ``reference`` rows (:mod:`.neighbours`; the dict says what was
    measured, or why not), from one pass of the executor over the training rows.
    """
    n = len(train[label_column])
    why = neighbours_mod.why_not(model, n, reference, label_column)
    if why is not None:
        return as_probabilities(model.predict(train)), None, {"used": False, "why": why}
    out, feats = model.predict_with_features(train)
    labels = np.asarray(train[label_column]).reshape(n, -1)[:, 0]
    agreement, facts = neighbours_mod.model_agreement(model, feats, labels, reference, label_column)
    return as_probabilities(out), agreement, facts


def early_work(
    model,
    train: Mapping[str, np.ndarray],
    heldout: Mapping[str, np.ndarray],
    label_column: str,
    batch_size: int,
    weight_decay: float,
    seed: int,
    check_rows: Optional[int] = CHECK_ROWS,
    reference: Optional[Mapping[str, np.ndarray]] = None,
) -> Optional[Dict]:
    """What :func:`recommend` needs that the influence does not change, computed before it
    (e.g. in another process while the influence runs): the model's class probabilities on
    the training rows, their neighbours' agreement with the ``reference`` rows
    (:func:`.neighbours.model_agreement`) and the check's epoch on the data as given. None when the
    check's rate needs the measured curvature (an adaptive solver); :func:`recommend` then
    does it all.

    The model's trainable parameters are restored at the end.
    """
    solver = model.info.solver
    lr, _ = check_rate(solver.type, solver.lr, math.nan)
    if not math.isfinite(lr) or len(heldout[label_column]) < MIN_HELDOUT:
        return None
    theta0 = model.get_params()
    n = len(train[label_column])
    key = _check_key(lr, batch_size, weight_decay, seed, check_rows, n, reference, label_column)
    try:
        prob, agreement, neighbours = training_signals(model, train, reference, label_column)
        held_labels = np.asarray(heldout[label_column]).reshape(-1).astype(np.int64)
        base = _check_epoch(
            model, train, heldout, held_labels, label_column, None,
            check_order(n, seed + SEED_OFFSET, check_rows), lr, batch_size, weight_decay,
            core.GraphCache(model, fused=False), model.predict, 256,
        )  # fmt: skip
    finally:
        model.set_params(theta0)
    return {
        "key": key,
        "prob": prob,
        "base": base,
        "agreement": agreement,
        "neighbours": neighbours,
    }


def recommend(
    model,
    train: Mapping[str, np.ndarray],
    heldout: Mapping[str, np.ndarray],
    label_column: str,
    trial_scores: np.ndarray,
    batch_size: int,
    weight_decay: float,
    lambda_max: float,
    seed: int,
    progress: Optional[core.Progress] = None,
    log: Optional[Callable[[str], None]] = None,
    executor=None,
    check_rows: Optional[int] = CHECK_ROWS,
    early: Optional[Dict] = None,
    reference: Optional[Mapping[str, np.ndarray]] = None,
) -> Recommendation:
    """The whole rule for one run (see the module docstring).

    Args:
        model: the model object :mod:`.core` describes, at the trained parameters (restored
            at the end); its ``predict`` gives class probabilities (or logits).
        train: column -> (N, ...) float32, the training rows the scores belong to.
        heldout: column -> (V, ...) float32, validation rows the candidates were not chosen
            with (half B).
        label_column: the dataset column of the class label (0..C-1).
        trial_scores: float64 (M, N) each trial's influence from the ``reference`` rows
            alone (half A; negative = harmful), which choose and order the candidates.
        batch_size / weight_decay: the check epoch's (the replayed epoch's).
        lambda_max: the measured top curvature (for adaptive solvers' check rate).
        seed: the run's seed.
        executor: where the check's epochs run (:mod:`.executor`, the same results
            anywhere); None = in this process.
        check_rows: training rows each check epoch visits (see :data:`CHECK_ROWS`; None =
            all).
        early: :func:`early_work`'s result for these arguments, or None; the same result
            either way (it is used only when it was computed with this rate, batch size,
            weight decay, seed and sample).
        reference: column -> (V', ...) the validation rows ``trial_scores`` came from (half
            A; trusted labels), for the neighbours' agreement
            (:func:`.neighbours.model_agreement`); None: the ranks use the margin and the
            influence only.

    """
    log = log or (lambda msg: None)
    executor = executor or LocalExecutor(1)
    n = len(train[label_column])
    n_held = len(heldout[label_column])
    if n_held < MIN_HELDOUT:
        return unavailable(
            n,
            f"no recommendation: {n_held} held-out validation rows, at least {MIN_HELDOUT} "
            "are needed to check one (give a larger validation set)",
        )
    solver = model.info.solver
    lr, rate_source = check_rate(solver.type, solver.lr, lambda_max)
    if not math.isfinite(lr):
        return unavailable(n, f"no recommendation: {rate_source}")
    key = _check_key(lr, batch_size, weight_decay, seed, check_rows, n, reference, label_column)
    if early is not None and early.get("key") != key:
        early = None
    if early:
        prob, agreement, neighbours = early["prob"], early["agreement"], early["neighbours"]
    else:
        prob, agreement, neighbours = training_signals(model, train, reference, label_column)
    labels = np.asarray(train[label_column]).reshape(n, -1)[:, 0]
    suspects = find_suspects(labels, prob, trial_scores, agreement)
    cands = candidates(suspects)
    check = {
        "neighbours": neighbours,
        "lr": lr,
        "lr_source": rate_source,
        "schedule": "one epoch, rate decaying linearly to 0",
        "batch_size": int(batch_size),
        "weight_decay": float(weight_decay),
        "order_seed": seed + SEED_OFFSET,
        "rows_per_epoch": len(check_order(n, 0, check_rows)),
        "epochs_run": len(cands) + 1 if cands else 0,
        "jobs": min(executor.slots, len(cands) + 1) if cands else 0,
        "where": executor.where,
        # the epoch on the data as given: run beside the influence (early_work), or here
        "base_epoch": "beside the influence" if early else "after the influence",
    }
    if cands:
        log(
            f"checking {len(cands)} candidate changes of {int(suspects.mask.sum())} suspect "
            f"rows on {n_held} held-out validation rows"
        )
        check_candidates(
            model, train, heldout, label_column, cands, lr, batch_size, weight_decay,
            seed=seed + SEED_OFFSET, predict=model.predict, progress=progress,
            rows=check_rows, executor=executor, base=early["base"] if early else None,
        )  # fmt: skip
    rec = build(suspects, cands, n_held, check)
    log("recommendation: " + rec.reason)
    return rec
