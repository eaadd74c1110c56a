"""The check of a recommendation: from the trained parameters, one settling epoch on the data
as given and on each candidate change, then the loss of held-out validation rows the
candidates were not chosen with (half B), compared row by row (see :mod:`.recommend`, which
decides from it).

Everything here but the epochs (:func:`settle_epoch`, :func:`check_candidates` and its
unit :func:`check_epoch_unit`) is numpy only; a candidate is any object with
``action`` (``relabel`` or ``remove``), ``rows``, ``new_labels`` and the result fields
:class:`.recommend.Candidate` has.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from . import core
from .executor import LocalExecutor, unit_graphs
from .probabilities import as_probabilities
from .target import given_classes, with_classes

if TYPE_CHECKING:  # pragma: no cover
    from .suspects import Candidate

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
    """Seeded halves of the validation rows: ``(A, B)``: A chooses and orders the candidates
    (:mod:`.crossfit`), B is held out for the check; each int64 ascending; the held-out half
    is the smaller one when ``n`` is odd.
    """
    perm = np.random.RandomState(seed + SEED_OFFSET).permutation(n)
    held = n // 2
    return np.sort(perm[held:]).astype(np.int64), np.sort(perm[:held]).astype(np.int64)


def check_rate(
    solver_type: str, solver_lr: float, lambda_max: float, words: str = "the console's rate"
) -> Tuple[float, str]:
    """The check epoch's starting rate (per step on a mean gradient), and where it came from.

    The console's own rate for SGD-type solvers (the check imitates more training as the
    console would do it: from where its training ended, so at the rate of its last update,
    ``SolverConfig.lr``, which ``words`` names, e.g. ``the console's final rate (Cosine from
    0.1)``); for adaptive solvers (Adam, ...) whose rate is no SGD step size,
    ``1 / lambda_max`` of the measured mini-batch Hessians (half the edge of stability).
    """
    if solver_type in SGD_SOLVERS and math.isfinite(solver_lr) and solver_lr > 0:
        return float(solver_lr), f"{words} ({solver_type})"
    if math.isfinite(lambda_max) and lambda_max > 0:
        return 1.0 / float(lambda_max), f"1 / lambda_max ({solver_type} has no SGD rate)"
    return math.nan, f"no rate: {solver_type} has no SGD rate and no curvature was measured"


def paired_change(loss: np.ndarray, base: np.ndarray) -> Tuple[float, float]:
    """Mean of ``loss - base`` over held-out rows, and its standard error."""
    d = np.asarray(loss, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.inf
    return float(d.mean()), se


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


def _check_epoch(
    model, train, heldout, held_labels, label_column, c, order, lr, batch_size, weight_decay,
    graphs, predict, val_batch_size, progress=None,
):  # fmt: skip
    """One check epoch from the model's current parameters on the data as given (``c`` None)
    or changed by candidate ``c``: ``(held-out losses, held-out correct or None)``.
    """
    n = len(train[label_column])
    arrays, weight = dict(train), None
    if c is not None and c.action == "relabel":
        arrays[label_column] = with_classes(train[label_column], c.rows, c.new_labels)
    elif c is not None:
        weight = np.ones(n, dtype=np.float32)
        weight[c.rows] = 0.0
    settle_epoch(model, arrays, order, lr, batch_size, weight_decay, weight, graphs, progress)
    loss = core.per_sample_losses(model, heldout, val_batch_size)
    correct = None
    if predict is not None:
        out = as_probabilities(np.asarray(predict(heldout)))  # binary: (V, 1) -> (V, 2)
        correct = (out.argmax(axis=1) == held_labels).astype(np.float64)
    return loss, correct


def check_epoch_unit(item, progress, model, train, heldout):
    """One check epoch as a unit of an executor (:mod:`.executor`): :func:`_check_epoch` from
    the parameters the shared model has (restored after).

    Args:
        item: ``(candidate or None, order, lr, batch_size, weight_decay, label_column,
            val_batch_size, with_accuracy)``; ``with_accuracy``: also the held-out rows'
            correctness, by the model's own ``predict``.
        model / train / heldout: shared by every epoch of the check.

    Returns:
        ``(held-out losses, held-out correct or None)``, as :func:`_check_epoch`.

    """
    c, order, lr, batch_size, weight_decay, label_column, val_batch_size, with_accuracy = item
    theta0 = model.get_params()
    held_labels = given_classes(heldout[label_column])
    try:
        return _check_epoch(
            model, train, heldout, held_labels, label_column, c, order, lr, batch_size,
            weight_decay, unit_graphs(model), model.predict if with_accuracy else None,
            val_batch_size, progress,
        )  # fmt: skip
    finally:
        model.set_params(theta0)


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
    executor=None,
    base: Optional[Tuple[np.ndarray, Optional[np.ndarray]]] = None,
    base_out: Optional[list] = None,
) -> List[Candidate]:
    """Fill each candidate's held-out result (in place; returns ``cands``).

    The model's parameters are restored at the end. The epochs (one on the data as given, one
    per candidate) are units of ``executor`` (:func:`check_epoch_unit`), as one after another.

    Args:
        model: the model object :mod:`.core` describes, at the trained parameters.
        train / heldout: column -> (N, ...) float32; ``heldout``: rows that chose no candidate.
        label_column: the column a relabel changes.
        lr / batch_size / weight_decay: the check's epoch (see :func:`settle_epoch`).
        seed: seed of its sample order (the same order for every candidate).
        predict: None, or ``model.predict`` for the accuracy change (the epochs may run in
            other processes, each with its own copy of the model, whose predict they use).
        rows: the epoch visits this many training rows, a seeded uniform sample (None = all;
            :func:`check_order`), so a candidate's share of changed rows is kept.
        executor: where the epochs run (:mod:`.executor`); None = in this process.
        base: the epoch on the data as given, ``(held-out losses, held-out correct or None)``,
            if already computed with these arguments (:func:`early_work`); None = here.
        base_out: a list ``base`` is appended to (given or computed; :mod:`.pooled_check`).

    Raises:
        ValueError: ``predict`` is another callable than the model's own.

    """
    if predict is not None and predict != model.predict:
        raise ValueError("predict: give model.predict or None; the epochs use the model's own")
    executor = executor or LocalExecutor(1)
    order = check_order(len(train[label_column]), seed, rows)
    items: List[Optional[Candidate]] = ([] if base is not None else [None]) + list(cands)
    spec = (order, lr, batch_size, weight_decay, label_column, val_batch_size)
    results = _run_epochs(model, (train, heldout), items, spec, predict, executor, progress)
    if base is None:
        base, results = results[0], results[1:]
    if base_out is not None:
        base_out.append(base)
    base_loss, base_correct = base
    for c, (loss, correct) in zip(cands, results):
        c.loss_change, c.standard_error = paired_change(loss, base_loss)
        c.heldout_loss = loss
        if correct is not None:
            c.accuracy_change = float(np.mean(correct - base_correct))
    return cands


def check_again(
    model,
    train: Mapping[str, np.ndarray],
    heldout: Mapping[str, np.ndarray],
    label_column: str,
    chosen: Candidate,
    lr: float,
    batch_size: int,
    weight_decay: float = 0.0,
    seed: int = 0,
    **check_args,
) -> Candidate:
    """The chosen candidate checked once more in a second sample order (``seed + 1``; the
    check's first order is ``seed``): a copy of ``chosen`` with this epoch's held-out result
    (``chosen`` is not changed). Two epochs, the data as given and the change, as units of
    the executor (side by side where it has two slots).

    Why: the row standard error of :func:`paired_change` counts the held-out rows, not the
    settling epoch's own randomness, which moves every held-out row's loss together. On
    small networks that made clean runs pass 6% of the time instead of 1%; a change whose
    gain is the path of one sample order does not pass again in another
    (``docs/recommendation.md``, "The one-way check's epoch noise").

    Args:
        check_args: as :func:`check_candidates` (``predict``, ``progress``,
            ``val_batch_size``, ``rows``, ``executor``); not ``base``.

    """
    again = dataclasses.replace(
        chosen, loss_change=math.nan, standard_error=math.nan, accuracy_change=math.nan,
        heldout_loss=None,
    )  # fmt: skip
    check_candidates(
        model, train, heldout, label_column, [again], lr, batch_size, weight_decay,
        seed=seed + 1, **check_args,
    )  # fmt: skip
    return again


def _run_epochs(model, data: tuple, items: list, spec: tuple, predict, executor, progress):
    """One check epoch per item (a candidate, or None for the data as given) as units of
    ``executor`` (:func:`check_epoch_unit`, ``spec`` the rest of their items), the model's
    parameters restored after; ``progress`` sees them as one stage, in steps.
    """
    theta0 = model.get_params()
    units = [(c, *spec, predict is not None) for c in items]
    order, _, batch_size = spec[:3]
    steps = core.n_steps(len(order), batch_size)
    done = [0] * len(units)

    def on_progress(k: int, _stage: str, d: int, _total: int) -> None:
        if progress is not None:  # one stage for all the check's epochs, in steps
            done[k] = d
            progress("checking the recommendation", sum(done), len(units) * steps)

    try:
        return executor.map(
            check_epoch_unit, units, shared=(model, *data), on_progress=on_progress, name="check"
        )
    finally:
        model.set_params(theta0)


def check_facts(
    neighbours, lr, rate_source, batch_size, weight_decay, seed, n, check_rows, cands,
    executor, early,
) -> Dict:  # fmt: skip
    """What the check ran, for ``settings.yaml`` (:attr:`.recommendation.Recommendation.check`)."""
    return {
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
