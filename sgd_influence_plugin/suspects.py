"""Who is suspected of a wrong label, and the candidate changes the check tries (numpy only;
:mod:`.recommend` checks them and decides). Each step's reasons are in
``docs/recommendation.md``.

- :func:`find_suspects`: rows harmful in every trial whose given label the model does not
  predict, with every signal of the run (:class:`Suspects`).
- :func:`combined_order`: the suspects by the sum of their ranks in the margin, the influence
  and, when measured, the validation neighbours' agreement (:mod:`.neighbours`).
- :func:`candidates`: the nested sets of suspects, in both orders, as :class:`Candidate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import core

#: Probability levels of the given label at which suspects become candidates. The levels are
#: probabilities, so they mean the same for any network; the check, not the level, decides.
GIVEN_LABEL_LEVELS = (0.05, 0.1, 0.2, 0.5)
#: The orders in which suspects enter a candidate (see :func:`candidates`): ``given_label``,
#: the lowest probability of the given label first; ``margin_and_influence``, the smallest
#: sum of two ranks first: the margin of the model's class over the given label (largest
#: first) and the influence (most harmful first) (:func:`combined_order`);
#: ``margin_influence_neighbours``, the same with a third rank, the share of the row's nearest
#: validation rows that share its label (fewest first), used when the network has a feature
#: layer to measure it in (:mod:`.neighbours`).
ORDERS = ("given_label", "margin_and_influence", "margin_influence_neighbours")


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
        agreement: float64 (N,) in [0, 1], the share of the row's nearest validation rows
            (in the network's feature space) whose label is the given label
            (:func:`.neighbours.label_agreement`; low = a likely wrong label), or None when
            it could not be measured.

    """

    given: np.ndarray
    suggested: np.ndarray
    confidence: np.ndarray
    p_given: np.ndarray
    influence: np.ndarray
    harmful_all: np.ndarray
    mask: np.ndarray
    agreement: Optional[np.ndarray] = None


def find_suspects(
    labels: np.ndarray,
    prob: np.ndarray,
    trial_scores: np.ndarray,
    agreement: Optional[np.ndarray] = None,
) -> Suspects:
    """Rows harmful in every trial whose given label the model does not predict.

    Args:
        labels: (N,) given labels, whole numbers in 0..C-1.
        prob: (N, C) the model's class probabilities at the trained parameters.
        trial_scores: (M, N) each trial's influence (negative = harmful).
        agreement: (N,) each row's share of nearest validation rows with its label, or None
            (see :attr:`Suspects.agreement`).

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
        agreement=None if agreement is None else np.asarray(agreement, np.float64).reshape(-1),
    )


@dataclass
class Candidate:
    """One change of the training data that the check tries.

    Attributes:
        level: the given-label probability level tau: the rows whose given label has
            probability below it (order ``given_label``), or that many rows (the rank
            orders).
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
        if self.order == "margin_influence_neighbours":
            return (
                "surest of another class, most harmful and least like their validation "
                f"neighbours, as many as below {self.level:g}"
            )
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
    """The suspects' rows, int64 (S,), the likeliest wrong label first by all the signals.

    Each suspect gets a rank among the suspects per signal: how many suspects have a larger
    margin of the model's class over the given label, ``p(suggested) - p(given)``; how many
    are more harmful (a more negative influence); and, when ``suspects.agreement`` is known,
    how many have fewer nearest validation rows sharing their label. Rows of equal value
    share a rank. The order is by the sum of the ranks; ties go to the larger margin, then to
    the earlier row. Ranks, not values, are added, so no signal's units or scale weigh in.
    """
    sus = np.flatnonzero(suspects.mask)
    margin = suspects.confidence[sus] - suspects.p_given[sus]
    total = _smaller(-margin) + _smaller(suspects.influence[sus])
    if suspects.agreement is not None:
        total = total + _smaller(suspects.agreement[sus])
    # lexsort: the last key is the primary one; stable, so equal keys keep the row order
    return sus[np.lexsort((-margin, total))]


def _smaller(values: np.ndarray) -> np.ndarray:
    """Each value's rank, int64: how many values are smaller (equal values share a rank)."""
    return np.searchsorted(np.sort(values), values, side="left")


def candidate_sets(
    suspects: Suspects, levels: Sequence[float] = GIVEN_LABEL_LEVELS
) -> List[Tuple[float, str, np.ndarray]]:
    """Every ``(level, order, rows)`` the rule builds, empty and repeated sets included.

    They come in the order :func:`candidates` tries them, so two halves' sets pair up by
    position (the two-way check of :mod:`.pooled_check` pairs them). At each level
    (ascending):

    - order ``given_label``: the suspects whose given label has probability below the level;
    - order ``margin_and_influence`` (``margin_influence_neighbours`` when the suspects
      carry the neighbours' agreement): as many suspects, the first of
      :func:`combined_order`.
    """
    out: List[Tuple[float, str, np.ndarray]] = []
    combined = combined_order(suspects)
    ranked = "margin_and_influence" if suspects.agreement is None else ORDERS[2]
    for level in sorted(levels):
        rows = np.flatnonzero(suspects.mask & (suspects.p_given < level))
        out += [(level, "given_label", rows), (level, ranked, np.sort(combined[: len(rows)]))]
    return out


def candidates(suspects: Suspects, levels: Sequence[float] = GIVEN_LABEL_LEVELS) -> List[Candidate]:
    """The candidate sets, removal of each distinct non-empty set of :func:`candidate_sets`.

    Both families are nested. A set equal to one already listed is tried once (at the
    largest level both orders hold every suspect whose given label is below it).
    """
    out: List[Candidate] = []
    seen = set()
    for level, order, chosen in candidate_sets(suspects, levels):
        key = chosen.tobytes()
        if len(chosen) == 0 or key in seen:
            continue
        seen.add(key)
        out.append(Candidate(level, "remove", chosen, suspects.suggested[chosen], order))
    return out
