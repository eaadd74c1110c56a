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
   console's final rate, decaying linearly to 0, on the data as given and on each candidate (same
   sample order), then each held-out validation row's loss. A candidate counts only if it
   lowers the mean held-out loss by :func:`z_required` paired standard errors, a Bonferroni
   bound over the candidates. The recommendation is the counting candidate with the fewest
   rows within one standard error of the best (the one-standard-error rule), provided it
   passes the same bar again in a second sample order (:func:`.heldout_check.check_again`:
   the row standard error does not count the epoch's own noise); otherwise change nothing.

Suspects and candidates: :mod:`.suspects`; the check: :mod:`.heldout_check`; the record and
the rule deciding from the checked candidates (numpy only): :mod:`.recommendation`. Here, for
one run: :func:`split_for_check`, :func:`recommend` and :func:`early_work`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import core
from .executor import LocalExecutor
from .heldout_check import (  # noqa: F401 - part of this module's interface
    CHECK_ROWS,
    SEED_OFFSET,
    SGD_SOLVERS,
    _check_epoch,
    check_again,
    check_candidates,
    check_facts,
    check_order,
    check_rate,
    paired_change,
    settle_epoch,
    split_validation,
)
from .neighbours import training_signals  # noqa: F401 - part of this module's interface
from .probabilities import as_probabilities  # noqa: F401 - part of this module's interface
from .recommendation import Recommendation, build, choose, unavailable
from .suspects import (  # noqa: F401 - part of this module's interface
    GIVEN_LABEL_LEVELS,
    ORDERS,
    Candidate,
    Suspects,
    candidates,
    combined_order,
    find_suspects,
)
from .target import given_classes
from .tiny_inputs import too_few_to_recommend

#: Fewer held-out rows than this cannot back a recommendation (the standard error of the
#: mean loss difference is then too rough): the recommendation is to change nothing.
MIN_HELDOUT = 100
#: Below ``2 * MIN_HELDOUT`` validation rows the check is two-way (:mod:`.pooled_check`):
#: each half chooses candidates the other half checks, and the paired differences of both
#: are pooled over every row. Fewer validation rows than this back no change at all: the
#: false-change rate and the power measured on clean and noisy tables (docs/recommendation.md,
#: "Small validation sets").
MIN_TWO_WAY = 40


# ----------------------------------------------------------------------------- one run


@dataclass
class CheckSplit:
    """The validation rows' roles in a run (:func:`split_for_check`). The influence itself
    uses every validation row either way.

    Attributes:
        candidates_val: the arrays the candidates are chosen with (half A), or every row.
        heldout: the arrays the check measures on (half B), or None: no recommendation.
        why_not: why there is no recommendation ("" when there is one).
        first: half A's row indices (the candidates' replay), or None.
        label: the class label column the recommendation reads, or None.
        second: half B's row indices when the check is two-way (fewer than
            ``2 * MIN_HELDOUT`` rows, :mod:`.pooled_check`: ``heldout`` is then every row,
            each measured for the candidates the other half chose), else None.
        second_val: half B's arrays (two-way: its candidates' neighbours), else None.

    """

    candidates_val: Dict[str, np.ndarray]
    heldout: Optional[Dict[str, np.ndarray]] = None
    why_not: str = ""
    first: Optional[np.ndarray] = None
    label: Optional[str] = None
    second: Optional[np.ndarray] = None
    second_val: Optional[Dict[str, np.ndarray]] = None

    @property
    def replayed(self):
        """The halves whose gradients each trial replays beside ``u`` (``candidate_rows`` of
        :func:`.influence.compute_influence`): half A, both halves (two-way), or None.
        """
        return self.first if self.second is None else (self.first, self.second)


def is_classifier(info) -> bool:
    """One class label column and an executor network that outputs class scores."""
    return bool(len(info.label_classes) == 1 and info.runtime_network)


def model_probabilities(model, train: Mapping[str, np.ndarray]) -> Optional[np.ndarray]:
    """A classifier's class probabilities float64 (N, C) on the training rows, which a run
    that does not recommend still shows (:func:`.recommendation.unavailable`); None for a
    network that is no classifier (:func:`is_classifier`).
    """
    return as_probabilities(model.predict(train)) if is_classifier(model.info) else None


def split_for_check(wanted: bool, info, train, val, seed: int) -> CheckSplit:
    """Half A of the validation rows (seeded, :func:`.heldout_check.split_validation`) to
    choose the candidates, half B held out to check them; below ``2 * MIN_HELDOUT`` rows
    (down to :data:`MIN_TWO_WAY`) each half also checks what the other chose (two-way,
    :mod:`.pooled_check`); or every row and why there is no recommendation (``wanted``
    False: turned off). The recommendation needs a classifier (:func:`is_classifier`) and
    enough validation rows. A regression gets none: removing its worst-fitted rows passed
    the check's settling epoch on a real console result and then made the retrained model
    worse (docs/recommendation.md).

    Args:
        info: the model's :class:`~sgd_influence_plugin.nnabla_adapter.ModelInfo`.
        train / val: the decoded :class:`~sgd_influence_plugin.dataset.Dataset` s.
        seed: the run's seed.

    """
    if not wanted:
        why = "no recommendation: turned off"
    elif not is_classifier(info):
        why = (
            "no recommendation: it needs a classifier (one class label and an executor "
            "network that outputs class scores"
            + (f"; the labels are not classes: {info.class_note}" if info.class_note else "")
            + "); remove_ratio leaves out a share of the most harmful rows instead"
        )
    elif too_few_to_recommend(train.size):
        why = too_few_to_recommend(train.size)
    elif val.size < MIN_TWO_WAY:
        why = (
            f"no recommendation: {val.size} validation rows; at least {MIN_TWO_WAY} are "
            "needed to check a change (two halves that choose and check each other). Add "
            f"{MIN_TWO_WAY - val.size} labelled rows to the validation CSV (for example from "
            "the training CSV), or look at the most harmful rows and cleanse a share of them "
            "with remove_ratio"
        )
    else:
        first, held = split_validation(val.size, seed)
        pick = lambda idx: {k: v[idx] for k, v in val.arrays.items()}  # noqa: E731
        label = info.target_column or next(iter(info.label_classes), None)
        if val.size >= 2 * MIN_HELDOUT:
            return CheckSplit(pick(first), pick(held), "", first, label)
        return CheckSplit(pick(first), dict(val.arrays), "", first, label, held, pick(held))
    return CheckSplit(val.arrays, None, why, None, None)


def check_key(lr, batch_size, weight_decay, seed, check_rows, n, references, label) -> Tuple:
    """What the check's epoch on the data as given and the neighbours' agreement depend on:
    :func:`early_work`'s result is used by :func:`recommend` only when both computed the same
    key.
    """
    n_ref = tuple(None if r is None else len(r[label]) for r in references)
    return (
        float(lr),
        int(batch_size),
        float(weight_decay),
        seed + SEED_OFFSET,
        check_rows,
        n,
        n_ref,
    )


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
    more_references: Sequence[Mapping[str, np.ndarray]] = (),
) -> Optional[Dict]:
    """What :func:`recommend` needs that the influence does not change, computed before it
    (e.g. in another process while the influence runs): the model's class probabilities on
    the training rows, their neighbours' agreement with the ``reference`` rows
    (:func:`.neighbours.model_agreement`) and the check's epoch on the data as given. None when the
    check's rate needs the measured curvature (an adaptive solver); :func:`recommend` then
    does it all. With ``more_references`` (a two-way check's, :mod:`.pooled_check`) also the
    agreement with each (``more``: a list of ``(agreement, neighbours)``).

    The model's trainable parameters are restored at the end.
    """
    solver = model.info.solver
    lr, _ = check_rate(solver.type, solver.lr, math.nan, solver.describe_rate())
    if not math.isfinite(lr) or len(heldout[label_column]) < MIN_TWO_WAY:
        return None
    theta0 = model.get_params()
    n = len(train[label_column])
    refs = [reference, *more_references]
    key = check_key(lr, batch_size, weight_decay, seed, check_rows, n, refs, label_column)
    try:
        signals = training_signals(model, train, reference, label_column, *more_references)
        prob, agreement, neighbours = signals[:3]
        held_labels = given_classes(heldout[label_column])
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
        "more": [signals[k : k + 2] for k in range(3, len(signals), 2)],
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
        executor: where the check's epochs run (:mod:`.executor`); None = in this process.
        check_rows: training rows each check epoch visits (:data:`CHECK_ROWS`; None = all).
        early: :func:`early_work`'s result, or None: the same result either way (it is used
            only if computed with this rate, batch size, weight decay, seed and sample).
        reference: column -> (V', ...) the validation rows ``trial_scores`` came from (half
            A; trusted labels), for the neighbours' agreement (:mod:`.neighbours`); None: the
            ranks use the margin and the influence only.

    """
    log = log or (lambda msg: None)
    executor = executor or LocalExecutor(1)
    n, n_held = len(train[label_column]), len(heldout[label_column])
    lr, rate_source, why_not = check_rate_or_why_not(model, n_held, lambda_max)
    if why_not:
        return unavailable(n, why_not)
    key = check_key(lr, batch_size, weight_decay, seed, check_rows, n, [reference], label_column)
    early = early if early is not None and early.get("key") == key else None
    suspects, neighbours = _suspects(model, train, label_column, trial_scores, reference, early)
    cands = candidates(suspects)
    check = _check(
        model, train, heldout, label_column, suspects, cands, (lr, rate_source), batch_size,
        weight_decay, seed, progress, check_rows, executor, early, neighbours, log, reference,
    )  # fmt: skip
    rec = build(suspects, cands, n_held, *check)
    log("recommendation: " + rec.reason)
    return rec


def _check(
    model, train, heldout, label_column, suspects, cands, rate, batch_size, weight_decay, seed,
    progress, check_rows, executor, early, neighbours, log, reference=None,
) -> Tuple[Dict, Optional[Candidate]]:  # fmt: skip
    """The candidates checked, if any (:func:`.heldout_check.check_candidates`: their results
    set on each; the epoch on the data as given taken from ``early`` when there), at ``rate``
    = ``(lr, where it comes from)``, and the choice checked again (:func:`_again`); returns
    ``(what the check ran (:func:`check_facts`), the choice in the second order or None)``.
    """
    lr, rate_source = rate
    n, n_held = len(train[label_column]), len(heldout[label_column])
    facts = check_facts(
        neighbours, lr, rate_source, batch_size, weight_decay, seed, n, check_rows, cands,
        executor, early,
    )  # fmt: skip
    chose = "" if reference is None else f" ({len(reference[label_column])} rows)"
    facts["design"] = (
        f"one-way: changes chosen with half A{chose}, checked on half B ({n_held} held-out rows)"
    )
    if cands:
        log(
            f"checking {len(cands)} candidate changes of {int(suspects.mask.sum())} suspect "
            f"rows on {len(heldout[label_column])} held-out validation rows"
        )
        check_candidates(
            model, train, heldout, label_column, cands, lr, batch_size, weight_decay,
            seed=seed + SEED_OFFSET, predict=model.predict, progress=progress,
            rows=check_rows, executor=executor, base=early["base"] if early else None,
        )  # fmt: skip
    again = _again(
        model, train, heldout, label_column, choose(cands), lr, batch_size, weight_decay,
        seed, progress, check_rows, executor, facts, log,
    )  # fmt: skip
    return facts, again


def _again(
    model, train, heldout, label_column, chosen, lr, batch_size, weight_decay, seed, progress,
    check_rows, executor, facts, log,
):  # fmt: skip
    """The chosen candidate checked again in a second sample order (the check's seed + 1;
    :func:`.heldout_check.check_again`), ``facts`` updated; None when nothing was chosen.
    """
    if chosen is None:
        return None
    log(f"checking the chosen change ({len(chosen.rows)} rows) again in a second order")
    facts.update(epochs_run=facts["epochs_run"] + 2, second_order_seed=seed + SEED_OFFSET + 1)
    return check_again(
        model, train, heldout, label_column, chosen, lr, batch_size, weight_decay,
        seed=seed + SEED_OFFSET, predict=model.predict, progress=progress, rows=check_rows,
        executor=executor,
    )  # fmt: skip


def check_rate_or_why_not(
    model, n_held: int, lambda_max: float, least: int = MIN_HELDOUT
) -> Tuple[float, str, str]:
    """``(the check's rate, where it comes from, "")``, or a sentence saying why the run
    cannot recommend (fewer held-out rows than ``least``, no rate for the check) as the
    third item.
    """
    if n_held < least:
        return (
            math.nan,
            "",
            (
                f"no recommendation: {n_held} held-out validation rows, at least {least} "
                "are needed to check one (give a larger validation set)"
            ),
        )
    solver = model.info.solver
    lr, rate_source = check_rate(solver.type, solver.lr, lambda_max, solver.describe_rate())
    if not math.isfinite(lr):
        return lr, rate_source, f"no recommendation: {rate_source}"
    return lr, rate_source, ""


def _suspects(model, train, label_column: str, trial_scores, reference, early):
    """``(Suspects, the neighbours' facts)``: from :func:`early_work`'s signals when given,
    else from :func:`training_signals` now.
    """
    if early:
        prob, agreement, neighbours = early["prob"], early["agreement"], early["neighbours"]
    else:
        prob, agreement, neighbours = training_signals(model, train, reference, label_column)
    labels = given_classes(train[label_column])
    return find_suspects(labels, prob, trial_scores, agreement), neighbours
