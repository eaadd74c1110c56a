"""The two-way (cross-fitted) check of a small validation set (issue 36, item 7).

With ``2 * MIN_HELDOUT`` validation rows or more, half A chooses the candidates and half B
checks them (:mod:`.recommend`, one-way). Below that, down to :data:`.recommend.MIN_TWO_WAY`
rows, one half is too few to back a standard error, so both halves do both jobs:

- the rule (:func:`.suspects.candidate_sets`: the given-label levels, both orders) is applied
  to half A's influence and neighbours, giving the set ``S_A`` of each *procedure* (a level
  and an order), and to half B's, giving ``S_B``;
- one settling epoch per distinct set (as in :mod:`.heldout_check`), and each validation row
  is measured for the set the *other* half chose: the rows of B after the epoch without
  ``S_A``, the rows of A after the epoch without ``S_B`` (:func:`pooled_losses`). No row is
  measured for a set it helped choose;
- the paired differences of both directions are pooled over every validation row, and the
  procedures are judged as one-way candidates are (the Bonferroni bar, the one-standard-error
  rule; :func:`.recommendation.choose`), except that a procedure passes only if *each*
  direction, on its own rows, also lowers the loss by the bar (an intersection-union test:
  valid however the two directions are correlated). The pooled bar alone changed clean
  training rows in 13 of 159 runs (generated patterns, 40-150 rows): the two directions'
  z are correlated (0.33-0.45: overlapping sets, one shared base epoch), which the pooled
  standard error takes for independent; docs/recommendation.md, "Small validation sets".

What passes is a procedure, as in cross-validation: "remove the suspects whose given label
is below 0.1", say. The rows then changed are what the procedure gives with every validation
row's influence and neighbours (the ``influence`` column's own scores), its refit on all the
rows; why that and not ``S_A``, ``S_B`` or their intersection is in docs/recommendation.md
("Small validation sets").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .executor import LocalExecutor
from .heldout_check import CHECK_ROWS, SEED_OFFSET, check_candidates, check_facts, paired_change
from .neighbours import training_signals
from .recommend import MIN_TWO_WAY, check_key, check_rate_or_why_not
from .recommendation import Recommendation, build, unavailable, z_required
from .suspects import Candidate, candidate_sets, find_suspects
from .target import given_classes


@dataclass
class PooledCandidate(Candidate):
    """A procedure of the rule checked two ways. ``rows`` are the rows it changes with every
    validation row's scores (what is written); ``rows_a`` / ``rows_b`` the sets half A's and
    half B's scores gave, each measured on the other half only; ``heldout_loss`` float64 (V,)
    each validation row's loss after the epoch on the set the other half chose.
    """

    rows_a: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rows_b: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    z_ab: float = math.nan  # half A's set measured on half B: mean over standard error
    z_ba: float = math.nan  # half B's set measured on half A

    def passes(self, z_bar: float) -> bool:
        """As a candidate, each direction on its own too (``z_ab`` and ``z_ba`` at most
        ``-z_bar``; NaN, e.g. an empty set, never passes), and it changes some rows when
        refit on every row.
        """
        each = self.z_ab <= -z_bar and self.z_ba <= -z_bar
        return len(self.rows) > 0 and each and super().passes(z_bar)

    def to_dict(self, z_bar: float) -> Dict:
        """For ``settings.yaml``: a candidate's record and the two halves' sets' sizes."""
        return {
            **super().to_dict(z_bar),
            "rows_chosen_by_half_a_checked_on_half_b": int(len(self.rows_a)),
            "rows_chosen_by_half_b_checked_on_half_a": int(len(self.rows_b)),
            "z_half_a_set_on_half_b": _round3(self.z_ab),
            "z_half_b_set_on_half_a": _round3(self.z_ba),
        }


def _round3(x: float):
    """``x`` to 3 decimals for YAML, or None when not finite."""
    return round(float(x), 3) if math.isfinite(x) else None


def direction_z(loss: np.ndarray, base: np.ndarray) -> float:
    """One direction's paired change over its standard error (NaN when it has none)."""
    change, se = paired_change(loss, base)
    return change / se if se > 0 and math.isfinite(se) else math.nan


def pooled_candidates(sus_a, sus_b, sus_all) -> List[PooledCandidate]:
    """The procedures to check: the rule's sets from half A, half B and every row
    (:func:`.suspects.candidate_sets`, paired by position), less those whose halves' sets are
    both empty or equal to an earlier procedure's.
    """
    out, seen = [], set()
    sets = zip(candidate_sets(sus_a), candidate_sets(sus_b), candidate_sets(sus_all))
    for (level, _, rows_a), (_, _, rows_b), (_, order, rows) in sets:
        key = (rows_a.tobytes(), rows_b.tobytes())
        if (len(rows_a) == 0 and len(rows_b) == 0) or key in seen:
            continue
        seen.add(key)
        suggested = sus_all.suggested[rows]
        pooled = PooledCandidate(level, "remove", rows, suggested, order)
        pooled.rows_a, pooled.rows_b = rows_a, rows_b
        out.append(pooled)
    return out


def pooled_losses(
    rows_a: np.ndarray,
    rows_b: np.ndarray,
    half_a: np.ndarray,
    half_b: np.ndarray,
    loss_after: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """float64 (V,): each validation row's loss after the epoch without the set the *other*
    half chose: the rows of ``half_b`` from ``loss_after(rows_a)`` (the set half A chose),
    the rows of ``half_a`` from ``loss_after(rows_b)``. ``loss_after(rows)`` gives every
    validation row's loss after the epoch without ``rows`` (the data as given for none).
    """
    out = np.full(len(half_a) + len(half_b), np.nan)
    out[half_b] = np.asarray(loss_after(rows_a), np.float64)[half_b]
    out[half_a] = np.asarray(loss_after(rows_b), np.float64)[half_a]
    return out


def recommend_two_way(
    model,
    train: Mapping[str, np.ndarray],
    val: Mapping[str, np.ndarray],
    halves: Sequence[np.ndarray],
    label_column: str,
    scores: Sequence[np.ndarray],
    batch_size: int,
    weight_decay: float,
    lambda_max: float,
    seed: int,
    progress=None,
    log: Optional[Callable[[str], None]] = None,
    executor=None,
    check_rows: Optional[int] = CHECK_ROWS,
    early: Optional[Dict] = None,
) -> Recommendation:
    """The rule checked two ways (see the module docstring).

    Args:
        val: column -> (V, ...) every validation row; ``halves``: ``(A, B)`` row indices.
        scores: ``(every row's, half A's, half B's)`` trial scores, float64 (M, N) each.
        early: :func:`.recommend.early_work`'s result with ``reference`` half A and
            ``more_references`` (half B, every row), or None. The others as ``recommend``.

    """
    log = log or (lambda msg: None)
    executor = executor or LocalExecutor(1)
    n, v = len(train[label_column]), len(val[label_column])
    lr, rate_source, why_not = check_rate_or_why_not(model, v, lambda_max, MIN_TWO_WAY)
    if why_not:
        return unavailable(n, why_not)
    refs = [{k: a[h] for k, a in val.items()} for h in halves] + [val]
    key = check_key(lr, batch_size, weight_decay, seed, check_rows, n, refs, label_column)
    early = early if early is not None and early.get("key") == key else None
    sus_a, sus_b, sus_all, pairs = _suspects(model, train, label_column, refs, scores, early)
    cands = pooled_candidates(sus_a, sus_b, sus_all)
    epochs = _distinct_sets(cands)
    facts = check_facts(
        pairs[2][1], lr, rate_source, batch_size, weight_decay, seed, n, check_rows, epochs,
        executor, early,
    )  # fmt: skip
    facts["design"] = design(len(halves[0]), len(halves[1]))
    if cands:
        log(f"checking {len(cands)} candidate changes two ways, pooled over {v} validation rows")
        base: list = []
        check_candidates(
            model, train, val, label_column, epochs, lr, batch_size, weight_decay,
            seed=seed + SEED_OFFSET, predict=model.predict, progress=progress,
            rows=check_rows, executor=executor, base=early["base"] if early else None,
            base_out=base,
        )  # fmt: skip
        _pool(cands, epochs, halves, base[0][0])
    rec = build(sus_all, cands, v, facts)
    rec.reason += _direction_note(rec, cands, v)
    log("recommendation: " + rec.reason)
    return rec


def _direction_note(rec: Recommendation, cands: List[PooledCandidate], v: int) -> str:
    """What the summary adds: the pooled rows of a change, or that the pooled bar was met but
    not by each direction on its own.
    """
    if rec.chosen is not None:
        return f"; checked two ways, pooled over all {v} validation rows"
    bar = z_required(len(cands)) if cands else math.inf
    if any(Candidate.passes(c, bar) for c in cands):
        return "; the best pooled change did not lower it in each half on its own"
    return ""


def _suspects(model, train, label_column: str, refs, scores, early):
    """``(half A's, half B's and every row's Suspects, [(agreement, neighbours' facts)] per
    reference)``, from :func:`.recommend.early_work`'s signals when given.
    """
    if early:
        prob = early["prob"]
        pairs = [(early["agreement"], early["neighbours"])] + list(early["more"])
    else:
        signals = training_signals(model, train, refs[0], label_column, *refs[1:])
        prob, pairs = signals[0], [signals[k : k + 2] for k in range(1, len(signals), 2)]
    labels = given_classes(train[label_column])
    order = (scores[1], scores[2], scores[0])  # half A's, half B's, every row's
    sus = [find_suspects(labels, prob, s, p[0]) for s, p in zip(order, pairs)]
    return (*sus, pairs)


def design(n_a: int, n_b: int) -> str:
    """The two-way check in words (the summary's ``check:`` line, ``settings.yaml``)."""
    return (
        f"two-way: changes chosen with half A ({n_a} rows) checked on half B ({n_b} rows) and "
        f"chosen with half B checked on half A, paired differences pooled over all "
        f"{n_a + n_b} validation rows"
    )


def _distinct_sets(cands: List[PooledCandidate]) -> List[Candidate]:
    """One candidate per distinct non-empty set of the halves (one epoch each)."""
    out: Dict[bytes, Candidate] = {}
    for c in cands:
        for rows in (c.rows_a, c.rows_b):
            if len(rows) and rows.tobytes() not in out:
                unused = np.full(len(rows), -1, np.int64)  # new labels: removal has none
                out[rows.tobytes()] = Candidate(c.level, "remove", rows, unused, c.order)
    return list(out.values())


def _pool(cands: List[PooledCandidate], epochs, halves, base: np.ndarray) -> None:
    """Each procedure's pooled held-out result (in place): :func:`pooled_losses` against the
    epoch on the data as given (``base``, every validation row).
    """
    by_set = {c.rows.tobytes(): c.heldout_loss for c in epochs}

    def loss_after(rows):
        return by_set[rows.tobytes()] if len(rows) else base

    for c in cands:
        c.heldout_loss = pooled_losses(c.rows_a, c.rows_b, halves[0], halves[1], loss_after)
        c.loss_change, c.standard_error = paired_change(c.heldout_loss, base)
        c.accuracy_change = math.nan
        b, a = halves[1], halves[0]
        c.z_ab = direction_z(c.heldout_loss[b], base[b])
        c.z_ba = direction_z(c.heldout_loss[a], base[a])
