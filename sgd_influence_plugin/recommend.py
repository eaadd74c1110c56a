"""What to do with each training row (keep or remove; the model's class is shown as the label to
check), decided by the run and checked on validation rows the influence did not see.

Why not a fixed share: removing the top 5-10% by influence deletes good but hard samples on
clean data (it cost 2.7 points of accuracy when retrained from scratch on Fashion-MNIST) and
gains little on noisy data. The rule here (the measurements behind it are in
``docs/recommendation.md``):

1. **Suspects** are rows that are harmful in every trial (influence < 0: removing the row
   lowers the validation loss) *and* whose given label the model does not predict. Their
   suggested label is the model's class and its confidence that class's probability.
2. **Candidate changes**: for each level ``tau`` of :data:`GIVEN_LABEL_LEVELS`, the suspects
   whose given label has probability below ``tau`` (nested sets: small ``tau`` = the surest
   rows), and as many suspects taken in a second order that uses both signals of the run:
   the model's margin for another class, ``p(suggested) - p(given)``, and the influence,
   ranked among the suspects and the two ranks added (:func:`combined_order`). Which order
   finds the wrong labels better depends on the noise: a label moved to an unrelated class
   gets a probability near 0, one moved to a look-alike class does not, but the model still
   prefers the true class and the row still hurts the validation rows of that class. The
   check, not a guess, picks between them. Each set is removed, not
   relabelled to the model's class: that writes the model's own
   confusions into the labels (12-21% of such labels were wrong on the protocol's tasks, all
   in the directions the model confuses). The check, which starts from the same model, cannot
   see the harm, but a model retrained from scratch does: in the two protocol tasks where
   relabelling was chosen it lost 1.28 and 1.02 points (removing the same rows: -0.69 where
   measured). The suggested class stays in the output for a person to review; the
   ``relabel`` action is theirs to set (see :mod:`.cleanse`).
3. **The check**: from the trained parameters, one epoch of SGD at the console's rate,
   decaying linearly to 0, on the data as given and on each candidate (same sample order),
   then each held-out validation row's loss. The paired difference against the data as given
   decides: a candidate counts only if it lowers the mean held-out loss by at least
   :func:`z_required` standard errors, a Bonferroni bound over the candidates tried, so that
   noise alone makes a run change anything with probability at most :data:`FAMILY_ALPHA`. Of
   those, the recommendation is the one that changes
   the fewest rows while staying within one standard error of the best (the one-standard-error
   rule of model selection: a smaller change that is as good within the noise wins). If none
   counts, the recommendation is to change nothing.

The decaying rate matters: one epoch at a constant rate ends wherever the last mini-batches
threw the parameters (held-out loss 0.40 -> 0.71 on an unchanged sample CNN), which swamps
the effect of the changed rows; decaying to 0 settles it (0.40 -> 0.385), and the same
candidate then gives the same verdict for any sample order.

The check itself (the epochs and the held-out comparison) is :mod:`.heldout_check`; the
rule here is numpy only, but for :func:`recommend` and :func:`early_work`, which run it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import core
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

#: Probability levels of the given label at which suspects become candidates. The levels are
#: probabilities, so they mean the same for any network; the check, not the level, decides.
GIVEN_LABEL_LEVELS = (0.05, 0.1, 0.2, 0.5)
#: The orders in which suspects enter a candidate (see :func:`candidates`): ``given_label``,
#: the lowest probability of the given label first; ``margin_and_influence``, the smallest
#: sum of two ranks first: the margin of the model's class over the given label (largest
#: first) and the influence (most harmful first) (:func:`combined_order`).
ORDERS = ("given_label", "margin_and_influence")
#: The chance, at most, that noise alone makes a run recommend a change (one-sided, over all
#: the candidates it tries; see :func:`z_required`). On clean labels a LeNet-style case had a
#: 213-row candidate at z = -2.7 among 8: a 2-standard-error bar would have removed them.
FAMILY_ALPHA = 0.01
#: Fewer held-out rows than this cannot back a recommendation (the standard error of the
#: mean loss difference is then too rough): the recommendation is to change nothing.
MIN_HELDOUT = 100
ACTIONS = ("keep", "relabel", "remove")


@dataclass
class Suspects:
    """Per-row signals, training-CSV row order.

    Attributes:
        given: int64 (N,) the given labels.
        suggested: int64 (N,) the model's class (arg-max of its probabilities).
        confidence: float64 (N,) the model's probability of ``suggested``.
        p_given: float64 (N,) the model's probability of the given label.
        influence: float64 (N,) the trials' combined influence (:func:`.core.combine_trials`;
            change of the mean validation loss, negative = harmful).
        harmful_all: bool (N,) influence < 0 in every trial.
        mask: bool (N,) suspects: ``harmful_all`` and ``suggested != given``.

    """

    given: np.ndarray
    suggested: np.ndarray
    confidence: np.ndarray
    p_given: np.ndarray
    influence: np.ndarray
    harmful_all: np.ndarray
    mask: np.ndarray


def as_probabilities(output: np.ndarray) -> np.ndarray:
    """The classifier's output as probabilities, float64 (N, C).

    Rows that are already probabilities (non-negative, summing to 1 within 1e-3, e.g. a
    softmax output) are kept; anything else (logits) goes through a softmax.
    """
    out = np.asarray(output, dtype=np.float64).reshape(len(output), -1)
    if np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3):
        return out
    z = out - out.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def find_suspects(labels: np.ndarray, prob: np.ndarray, trial_scores: np.ndarray) -> Suspects:
    """Rows harmful in every trial whose given label the model does not predict.

    Args:
        labels: (N,) given labels, whole numbers in 0..C-1.
        prob: (N, C) the model's class probabilities at the trained parameters.
        trial_scores: (M, N) each trial's influence (negative = harmful).

    """
    given = np.asarray(labels).astype(np.int64).ravel()
    prob = np.asarray(prob, dtype=np.float64)
    rows = np.arange(len(given))
    suggested = prob.argmax(axis=1).astype(np.int64)
    trial_scores = np.asarray(trial_scores, dtype=np.float64).reshape(-1, len(given))
    harmful_all = np.all(trial_scores < 0, axis=0)
    return Suspects(
        given=given,
        suggested=suggested,
        confidence=prob[rows, suggested],
        p_given=prob[rows, given],
        influence=core.combine_trials(trial_scores)[0],
        harmful_all=harmful_all,
        mask=harmful_all & (suggested != given),
    )


@dataclass
class Candidate:
    """One change of the training data that the check tries.

    Attributes:
        level: the given-label probability level tau: the rows whose given label has
            probability below it (order ``given_label``), or that many rows
            (``margin_and_influence``).
        action: ``relabel`` (to the suggested class) or ``remove``.
        rows: int64 (K,) the changed rows, ascending.
        new_labels: int64 (K,) the suggested class of each (used by ``relabel``).
        order: which suspects come first, one of :data:`ORDERS`.
        loss_change: mean held-out loss after the check's epoch on this data minus on the data
            as given (negative = better); NaN until checked.
        standard_error: standard error of that mean over the held-out rows.
        accuracy_change: the same for held-out accuracy (share; positive = better).
        heldout_loss: float64 (V,) each held-out row's loss after the check's epoch (None
            until checked).

    """

    level: float
    action: str
    rows: np.ndarray
    new_labels: np.ndarray
    order: str = "given_label"
    loss_change: float = math.nan
    standard_error: float = math.nan
    accuracy_change: float = math.nan
    heldout_loss: Optional[np.ndarray] = None

    @property
    def z(self) -> float:
        """loss_change in standard errors (negative = better)."""
        if not self.standard_error > 0:
            return 0.0 if self.loss_change == 0 else math.copysign(math.inf, self.loss_change)
        return self.loss_change / self.standard_error

    def describe(self) -> str:
        """Which rows, in words (for the summary)."""
        if self.order == "margin_and_influence":
            return f"surest of another class and most harmful, as many as below {self.level:g}"
        return f"given label below {self.level:g}"

    def passes(self, z_bar: float) -> bool:
        """Lowers the held-out loss by at least ``z_bar`` standard errors."""
        return self.loss_change < 0 and self.z <= -z_bar

    def to_dict(self, z_bar: float) -> Dict:
        """For ``settings.yaml``."""
        return {
            "given_label_below": self.level,
            "order": self.order,
            "which": self.describe(),
            "action": self.action,
            "rows": int(len(self.rows)),
            "heldout_loss_change": _round(self.loss_change),
            "standard_error": _round(self.standard_error),
            "z": _round(self.z, 3),
            "heldout_accuracy_change": _round(self.accuracy_change),
            "passes": bool(self.passes(z_bar)),
        }


def _round(x: float, digits: int = 5) -> float:
    return float(f"{x:.{digits}g}") if math.isfinite(x) else float(x)


def combined_order(suspects: Suspects) -> np.ndarray:
    """The suspects' rows, int64 (S,), the likeliest wrong label first by both signals.

    Each suspect gets two ranks among the suspects: how many suspects have a larger margin
    of the model's class over the given label, ``p(suggested) - p(given)``, and how many are
    more harmful (a more negative influence). Rows of equal value share a rank. The order is
    by the sum of the two ranks; ties go to the larger margin, then to the earlier row. Ranks,
    not values, are added, so neither signal's units or scale weigh in.
    """
    sus = np.flatnonzero(suspects.mask)
    margin = suspects.confidence[sus] - suspects.p_given[sus]
    influence = suspects.influence[sus]
    larger_margin = len(sus) - np.searchsorted(np.sort(margin), margin, side="right")
    more_harmful = np.searchsorted(np.sort(influence), influence, side="left")
    # lexsort: the last key is the primary one; stable, so equal keys keep the row order
    return sus[np.lexsort((-margin, larger_margin + more_harmful))]


def candidates(suspects: Suspects, levels: Sequence[float] = GIVEN_LABEL_LEVELS) -> List[Candidate]:
    """The candidate sets, removal of each distinct non-empty set, level by level.

    At each level (ascending):

    - order ``given_label``: the suspects whose given label has probability below the level;
    - order ``margin_and_influence``: as many suspects, the first of :func:`combined_order`.

    Both families are nested. A set equal to one already listed is tried once (at the
    largest level both orders hold every suspect whose given label is below it).
    """
    out: List[Candidate] = []
    seen = set()
    combined = combined_order(suspects)
    for level in sorted(levels):
        rows = np.flatnonzero(suspects.mask & (suspects.p_given < level))
        for order, chosen in (
            ("given_label", rows),
            ("margin_and_influence", np.sort(combined[: len(rows)])),
        ):
            key = chosen.tobytes()
            if len(chosen) == 0 or key in seen:
                continue
            seen.add(key)
            out.append(Candidate(level, "remove", chosen, suspects.suggested[chosen], order))
    return out


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
        n_heldout: validation rows the check measured on (not used by the influence).
        n_suspects: rows harmful in every trial whose label the model does not predict.
        reason: one sentence for the summary.
        check: what the check ran (rate, epochs, seed).
        available: False when the run cannot recommend (not a classifier, too few held-out
            rows); ``reason`` says why and every action is ``keep``.

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
                "and as many suspects with the smallest sum of two ranks (margin of the "
                "model's class over the given label, largest first; influence, most harmful "
                "first), removed; a candidate passes if one settling epoch on the changed "
                "data lowers the held-out validation loss by >= z_required standard errors "
                f"(Bonferroni: noise alone passes one with chance <= {FAMILY_ALPHA:g}); "
                "recommended = the passing candidate with the fewest rows within one standard "
                "error of the best; none passes = change nothing"
            ),
        }


def unavailable(n: int, reason: str) -> Recommendation:
    """A recommendation that changes nothing, for runs that cannot decide."""
    return Recommendation(
        action=np.full(n, "keep", dtype=object),
        suggested=np.full(n, -1, dtype=np.int64),
        confidence=np.full(n, np.nan),
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
        which = (
            f"they are the {len(chosen.rows)} where it is surest of its class and the "
            f"influence is most harmful, the two ranks together (as many as give the given "
            f"label under {chosen.level:g})"
            if chosen.order == "margin_and_influence"
            else f"the given label has probability under {chosen.level:g}"
        )
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
    )


# ----------------------------------------------------------------------------- one run


def _check_key(lr, batch_size, weight_decay, seed, check_rows, n) -> Tuple:
    """What the check's epoch on the data as given depends on: :func:`early_work`'s result is
    used by :func:`recommend` only when both computed the same key.
    """
    return (float(lr), int(batch_size), float(weight_decay), seed + SEED_OFFSET, check_rows, n)


def early_work(
    model,
    train: Mapping[str, np.ndarray],
    heldout: Mapping[str, np.ndarray],
    label_column: str,
    batch_size: int,
    weight_decay: float,
    seed: int,
    check_rows: Optional[int] = CHECK_ROWS,
) -> Optional[Dict]:
    """What :func:`recommend` needs that the influence does not change, computed before it
    (e.g. in another process while the influence runs): the model's class probabilities on
    the training rows and the check's epoch on the data as given. None when the check's rate
    needs the measured curvature (an adaptive solver); :func:`recommend` then does it all.

    The model's trainable parameters are restored at the end.
    """
    solver = model.info.solver
    lr, _ = check_rate(solver.type, solver.lr, math.nan)
    if not math.isfinite(lr) or len(heldout[label_column]) < MIN_HELDOUT:
        return None
    theta0 = model.get_params()
    n = len(train[label_column])
    key = _check_key(lr, batch_size, weight_decay, seed, check_rows, n)
    try:
        prob = as_probabilities(model.predict(train))
        held_labels = np.asarray(heldout[label_column]).reshape(-1).astype(np.int64)
        base = _check_epoch(
            model, train, heldout, held_labels, label_column, None,
            check_order(n, seed + SEED_OFFSET, check_rows), lr, batch_size, weight_decay,
            core.GraphCache(model, fused=False), model.predict, 256,
        )  # fmt: skip
    finally:
        model.set_params(theta0)
    return {"key": key, "prob": prob, "base": base}


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
    jobs: int = 1,
    check_rows: Optional[int] = CHECK_ROWS,
    early: Optional[Dict] = None,
    cluster=None,
    cluster_resources: Optional[Dict] = None,
) -> Recommendation:
    """The whole rule for one run (see the module docstring).

    Args:
        model: the model object :mod:`.core` describes, at the trained parameters (restored
            at the end); its ``predict`` gives class probabilities (or logits).
        train: column -> (N, ...) float32, the training rows the scores belong to.
        heldout: column -> (V, ...) float32, validation rows the influence did not use.
        label_column: the dataset column of the class label (0..C-1).
        trial_scores: float64 (M, N) each trial's influence (negative = harmful).
        batch_size / weight_decay: the check epoch's (the replayed epoch's).
        lambda_max: the measured top curvature (for adaptive solvers' check rate).
        seed: the run's seed.
        jobs: worker processes for the check's epochs.
        check_rows: training rows each check epoch visits (see :data:`CHECK_ROWS`; None =
            all).
        early: :func:`early_work`'s result for these arguments, or None; the same result
            either way (it is used only when it was computed with this rate, batch size,
            weight decay, seed and sample).
        cluster: a connected :class:`~.cluster.Cluster` for the check's epochs (the same
            results), or None for ``jobs`` worker processes here; ``cluster_resources``: the
            Dask resources each epoch needs there.

    """
    log = log or (lambda msg: None)
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
    key = _check_key(lr, batch_size, weight_decay, seed, check_rows, n)
    if early is not None and early.get("key") != key:
        early = None
    prob = early["prob"] if early else as_probabilities(model.predict(train))
    labels = np.asarray(train[label_column]).reshape(n, -1)[:, 0]
    suspects = find_suspects(labels, prob, trial_scores)
    cands = candidates(suspects)
    check = {
        "lr": lr,
        "lr_source": rate_source,
        "schedule": "one epoch, rate decaying linearly to 0",
        "batch_size": int(batch_size),
        "weight_decay": float(weight_decay),
        "order_seed": seed + SEED_OFFSET,
        "rows_per_epoch": len(check_order(n, 0, check_rows)),
        "epochs_run": len(cands) + 1 if cands else 0,
        "jobs": (cluster.slots if cluster is not None else max(1, min(int(jobs), len(cands) + 1)))
        if cands
        else 0,
        "where": "cluster" if cluster is not None else "this machine",
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
            rows=check_rows, jobs=jobs, base=early["base"] if early else None, cluster=cluster,
            cluster_resources=cluster_resources,
        )  # fmt: skip
    rec = build(suspects, cands, n_held, check)
    log("recommendation: " + rec.reason)
    return rec
