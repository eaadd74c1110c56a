"""The recommendation as a record, and the rule that decides it from checked candidates (numpy
only): :func:`choose` (the Bonferroni bar of :func:`z_required`, then the one-standard-error
rule), :func:`build` (the :class:`Recommendation` and the sentence that says why) and
:func:`unavailable` (a run that cannot decide). How a run gets its candidates and their check
is :mod:`.recommend`; the reasons behind each step are in ``docs/recommendation.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Dict, List, Optional, Sequence

import numpy as np

from .heldout_check import paired_change
from .suspects import Candidate, Suspects

#: The chance, at most, that noise alone makes a run recommend a change (one-sided, over all
#: the candidates it tries; see :func:`z_required`). On clean labels a LeNet-style case had a
#: 213-row candidate at z = -2.7 among 8: a 2-standard-error bar would have removed them.
FAMILY_ALPHA = 0.01
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
                "error of the best, if it passes again in a second sample order (one-way "
                "check); none passes = change nothing"
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


def build(
    suspects: Suspects,
    checked: List[Candidate],
    n_heldout: int,
    check: Dict,
    again: Optional[Candidate] = None,
):
    """The :class:`Recommendation` from checked candidates (pure).

    ``again``: the chosen candidate checked once more in a second sample order
    (:func:`.heldout_check.check_again`), or None where the design needs no second order
    (the two-way check, whose directions are separate epochs). A choice that does not pass
    the same bar again is not recommended.
    """
    n = len(suspects.given)
    action = np.full(n, "keep", dtype=object)
    chosen = choose(checked)
    n_suspects = int(suspects.mask.sum())
    z_bar = z_required(len(checked))
    if again is not None:
        check = dict(check, second_order=again.to_dict(z_bar))
    if chosen is not None and again is not None and not again.passes(z_bar):
        reason = (
            f"change nothing: the best change ({chosen.action} {len(chosen.rows)} of "
            f"{n_suspects} suspect rows, z {chosen.z:+.1f}) did not lower the held-out "
            f"validation loss by {z_bar:.2f} standard errors again in a second sample order "
            f"(z {again.z:+.1f}), so its gain was the path of one epoch, not the rows"
        )
        chosen = None
    elif chosen is not None:
        action[chosen.rows] = chosen.action
        reason = _chosen_reason(chosen, again)
    else:
        reason = _nothing_reason(checked, n_suspects, check)
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


def _chosen_reason(chosen: Candidate, again: Optional[Candidate]) -> str:
    """The summary's sentence for a recommended change."""
    as_many = f"(as many as give the given label under {chosen.level:g})"
    which = {
        "margin_and_influence": f"they are the {len(chosen.rows)} where it is surest of "
        f"its class and the influence is most harmful, the two ranks together {as_many}",
        "margin_influence_neighbours": f"they are the {len(chosen.rows)} where it is "
        "surest of its class, the influence is most harmful and the fewest of the nearest "
        f"validation rows share the label, the three ranks together {as_many}",
    }.get(chosen.order, f"the given label has probability under {chosen.level:g}")
    return (
        f"{chosen.action} {len(chosen.rows)} rows: harmful in every trial, the model "
        f"predicts another class, and {which}; one settling epoch on the changed data "
        f"lowered the held-out validation loss by {-chosen.loss_change:.3g} "
        f"({-chosen.z:.1f} standard errors)"
        + (f", and by {-again.z:.1f} in a second sample order" if again is not None else "")
    )


def _nothing_reason(checked: List[Candidate], n_suspects: int, check: Dict) -> str:
    """The summary's sentence when no candidate passed (or none was tried)."""
    if n_suspects == 0:
        return (
            "change nothing: no row is harmful in every trial with a label the model does not "
            "predict"
        )
    if checked and not any(math.isfinite(c.loss_change) for c in checked):
        return (
            f"change nothing: {n_suspects} suspect rows, but the check's epochs gave no finite "
            f"held-out loss (one epoch at lr {check.get('lr', math.nan):g} from the trained "
            "model diverged), so no change could be checked; the scores are not affected"
        )
    finite = [c for c in checked if math.isfinite(c.loss_change)]
    best = min(finite, key=lambda c: c.loss_change) if finite else None
    return (
        f"change nothing: {n_suspects} suspect rows, but no change of them lowered the "
        f"held-out validation loss by {z_required(len(checked)):.2f} standard errors"
        + (
            f" (best: {best.action} {len(best.rows)}, {best.loss_change:+.3g}, z {best.z:+.1f})"
            if best is not None
            else ""
        )
    )
