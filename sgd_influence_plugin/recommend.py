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
   rows), removed. Not relabelled to the model's class: that writes the model's own
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

Everything here except :func:`settle_epoch` / :func:`check_candidates` is numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import core

#: Probability levels of the given label at which suspects become candidates. The levels are
#: probabilities, so they mean the same for any network; the check, not the level, decides.
GIVEN_LABEL_LEVELS = (0.05, 0.1, 0.2, 0.5)
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
        harmful_all: bool (N,) influence < 0 in every trial.
        mask: bool (N,) suspects: ``harmful_all`` and ``suggested != given``.

    """

    given: np.ndarray
    suggested: np.ndarray
    confidence: np.ndarray
    p_given: np.ndarray
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
    harmful_all = np.all(np.asarray(trial_scores) < 0, axis=0)
    return Suspects(
        given=given,
        suggested=suggested,
        confidence=prob[rows, suggested],
        p_given=prob[rows, given],
        harmful_all=harmful_all,
        mask=harmful_all & (suggested != given),
    )


@dataclass
class Candidate:
    """One change of the training data that the check tries.

    Attributes:
        level: the given-label probability level tau.
        action: ``relabel`` (to the suggested class) or ``remove``.
        rows: int64 (K,) the changed rows, ascending.
        new_labels: int64 (K,) the suggested class of each (used by ``relabel``).
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

    def passes(self, z_bar: float) -> bool:
        """Lowers the held-out loss by at least ``z_bar`` standard errors."""
        return self.loss_change < 0 and self.z <= -z_bar

    def to_dict(self, z_bar: float) -> Dict:
        """For ``settings.yaml``."""
        return {
            "given_label_below": self.level,
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


def candidates(suspects: Suspects, levels: Sequence[float] = GIVEN_LABEL_LEVELS) -> List[Candidate]:
    """The nested candidate sets, removal of each distinct non-empty set."""
    out: List[Candidate] = []
    seen = set()
    for level in sorted(levels):
        rows = np.flatnonzero(suspects.mask & (suspects.p_given < level))
        key = rows.tobytes()
        if len(rows) == 0 or key in seen:
            continue
        seen.add(key)
        new = suspects.suggested[rows]
        out.append(Candidate(level, "remove", rows, new))
    return out


def paired_change(loss: np.ndarray, base: np.ndarray) -> Tuple[float, float]:
    """Mean of ``loss - base`` over held-out rows, and its standard error."""
    d = np.asarray(loss, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.inf
    return float(d.mean()), se


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
    (so of the same rows relabelled or removed, the check's better one), whose held-out loss
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
            "checked": [c.to_dict(z_bar) for c in self.checked],
            "check": dict(self.check),
            "rule": (
                "suspects = influence < 0 in every trial and the model predicts another class; "
                "candidates = suspects whose given label has probability below each level, "
                "removed; a candidate passes if one settling epoch on the changed "
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
        reason = (
            f"{chosen.action} {len(chosen.rows)} rows: harmful in every trial, the model "
            f"predicts another class and gives the given label under {chosen.level:g}; one "
            f"settling epoch on the changed data lowered the held-out validation loss by "
            f"{-chosen.loss_change:.3g} ({-chosen.z:.1f} standard errors)"
        )
    elif n_suspects == 0:
        reason = (
            "change nothing: no row is harmful in every trial with a label the model does not "
            "predict"
        )
    else:
        best = min(checked, key=lambda c: c.loss_change) if checked else None
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


# ----------------------------------------------------------------------------- the check


def settle_epoch(
    model,
    arrays: Mapping[str, np.ndarray],
    order: np.ndarray,
    lr: float,
    batch_size: int,
    weight_decay: float = 0.0,
    sample_weight: Optional[np.ndarray] = None,
    graphs: Optional[core.GraphCache] = None,
    progress: Optional[core.Progress] = None,
) -> None:
    """One epoch of plain SGD in place, the rate decaying linearly from ``lr`` to 0."""
    T = core.n_steps(len(order), batch_size)
    lrs = lr * (1.0 - np.arange(T, dtype=np.float64) / T)
    core.sgd_epoch(
        model, arrays, order, lrs, batch_size, weight_decay, sample_weight=sample_weight,
        graphs=graphs, progress=progress,
    )  # fmt: skip


def check_order(n: int, seed: int, rows: Optional[int] = None) -> np.ndarray:
    """The check epoch's sample order: the first ``min(n, rows)`` of a seeded permutation of
    ``n`` rows (all ``n`` when ``rows`` is None), int64. Every candidate uses the same order.
    """
    order = np.random.RandomState(seed).permutation(n)
    return order if rows is None or rows >= n else order[: int(rows)]


def check_candidates(
    model,
    train: Mapping[str, np.ndarray],
    heldout: Mapping[str, np.ndarray],
    label_column: str,
    cands: List[Candidate],
    lr: float,
    batch_size: int,
    weight_decay: float = 0.0,
    seed: int = 0,
    predict: Optional[Callable[[Mapping[str, np.ndarray]], np.ndarray]] = None,
    progress: Optional[core.Progress] = None,
    val_batch_size: int = 256,
    rows: Optional[int] = None,
    jobs: int = 1,
) -> List[Candidate]:
    """Fill each candidate's held-out result (in place; returns ``cands``).

    The model's trainable parameters are restored at the end. The epochs (one on the data as
    given, one per candidate) are independent and run in up to ``jobs`` forked worker
    processes (:mod:`.parallel`); the results are the same as one after another.

    Args:
        model: the model object :mod:`.core` describes, at the trained parameters.
        train / heldout: column -> (N, ...) float32 arrays; ``heldout`` rows were not used by
            the influence.
        label_column: the column a relabel changes.
        lr / batch_size / weight_decay: the check's epoch (see :func:`settle_epoch`).
        seed: seed of its sample order (the same order for every candidate).
        predict: optional ``arrays -> (N, C)`` class scores, for the accuracy change.
        rows: the epoch visits this many training rows, a seeded uniform sample
            (:func:`check_order`; None = all N). A candidate's changes apply to the rows it
            shares with the sample, so the share of changed rows is kept.
        jobs: worker processes for the epochs (1 = in this process).

    """
    from . import parallel

    theta0 = model.get_params()
    n = len(train[label_column])
    order = check_order(n, seed, rows)
    graphs = core.GraphCache(model, fused=False)
    held_labels = np.asarray(heldout[label_column]).reshape(-1).astype(np.int64)
    items: List[Optional[Candidate]] = [None, *cands]
    steps = core.n_steps(len(order), batch_size)
    done = [0] * len(items)

    def measure(c: Optional[Candidate], item_progress):
        model.set_params(theta0)
        arrays, weight = dict(train), None
        if c is not None and c.action == "relabel":
            lab = np.array(train[label_column], copy=True)
            lab.reshape(n, -1)[c.rows, 0] = c.new_labels
            arrays[label_column] = lab
        elif c is not None:
            weight = np.ones(n, dtype=np.float32)
            weight[c.rows] = 0.0
        settle_epoch(
            model, arrays, order, lr, batch_size, weight_decay, weight, graphs, item_progress
        )  # fmt: skip
        loss = core.per_sample_losses(model, heldout, val_batch_size)
        correct = None
        if predict is not None:
            out = np.asarray(predict(heldout)).reshape(len(held_labels), -1)
            correct = (out.argmax(axis=1) == held_labels).astype(np.float64)
        return loss, correct

    def on_progress(k: int, _stage: str, d: int, _total: int) -> None:
        if progress is not None:  # one stage for all the check's epochs, in steps
            done[k] = d
            progress("checking the recommendation", sum(done), len(items) * steps)

    try:
        results = parallel.run_parallel(measure, items, jobs=jobs, on_progress=on_progress)
    finally:
        model.set_params(theta0)
    base_loss, base_correct = results[0]
    for c, (loss, correct) in zip(cands, results[1:]):
        c.loss_change, c.standard_error = paired_change(loss, base_loss)
        c.heldout_loss = loss
        if correct is not None:
            c.accuracy_change = float(np.mean(correct - base_correct))
    return cands


# ----------------------------------------------------------------------------- one run

#: Added to the run's seed for the held-out split and for the check's sample order, so
#: neither coincides with a trial's epoch order (``RandomState(seed).permutation``).
SEED_OFFSET = 10_007
#: Training rows one check epoch visits at most (a seeded uniform sample; every row when the
#: training set is smaller). The check compares paired held-out losses, whose ratio to their
#: standard error does not depend on how far the epoch moves the parameters, only on the
#: share of changed rows, which a uniform sample keeps; so a sample bounds the check's cost
#: (one epoch per candidate) without changing its verdicts. Measured against whole epochs on
#: the 50,000-row protocol tasks in ``docs/recommendation.md``.
CHECK_ROWS = 10_000
#: Solvers whose rate is a plain-SGD step size, so the check can use it as it is.
SGD_SOLVERS = ("Sgd", "SgdW", "Momentum", "Nesterov")


def split_validation(n: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded halves of the validation rows: ``(for the influence, held out for the check)``,
    each int64 ascending; the held-out half is the smaller one when ``n`` is odd.
    """
    perm = np.random.RandomState(seed + SEED_OFFSET).permutation(n)
    held = n // 2
    return np.sort(perm[held:]).astype(np.int64), np.sort(perm[:held]).astype(np.int64)


def check_rate(solver_type: str, solver_lr: float, lambda_max: float) -> Tuple[float, str]:
    """The check epoch's starting rate, and where it came from.

    The console's own rate for SGD-type solvers (the check imitates more training as the
    console would do it); for adaptive solvers (Adam, ...) whose rate is no SGD step size,
    ``1 / lambda_max`` of the measured mini-batch Hessians (half the edge of stability).
    """
    if solver_type in SGD_SOLVERS and math.isfinite(solver_lr) and solver_lr > 0:
        return float(solver_lr), f"the console's rate ({solver_type})"
    if math.isfinite(lambda_max) and lambda_max > 0:
        return 1.0 / float(lambda_max), f"1 / lambda_max ({solver_type} has no SGD rate)"
    return math.nan, f"no rate: {solver_type} has no SGD rate and no curvature was measured"


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
    prob = as_probabilities(model.predict(train))
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
        "jobs": max(1, min(int(jobs), len(cands) + 1)) if cands else 0,
    }
    if cands:
        log(
            f"checking {len(cands)} candidate changes of {int(suspects.mask.sum())} suspect "
            f"rows on {n_held} held-out validation rows"
        )
        check_candidates(
            model, train, heldout, label_column, cands, lr, batch_size, weight_decay,
            seed=seed + SEED_OFFSET, predict=model.predict, progress=progress,
            rows=check_rows, jobs=jobs,
        )  # fmt: skip
    rec = build(suspects, cands, n_held, check)
    log("recommendation: " + rec.reason)
    return rec
