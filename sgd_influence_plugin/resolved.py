"""The run's settings resolved against the model: what the replay will use and, once the
curvature is measured, at which rate.

:func:`resolve` fills in the solver's weight decay, batch size and rate (:class:`ResolvedSettings`);
:func:`choose_lr` measures the curvature and settles the rate (``auto``: the stable rate;
a rate given: kept, with a warning when it breaks the bounds); :func:`check_rates` refuses a
rate and weight decay that leave nothing to replay (:func:`.validation.check_replay_rate`
runs it before anything is computed, :func:`choose_lr` again on the rate it chose).
:mod:`.influence`, :mod:`.trials` and :mod:`.phases` read the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Collection, Dict, List, Optional, Tuple

import numpy as np

from . import core, replay_steps
from . import curvature as curvature_mod
from .errors import SettingsError
from .settings import MIN_LR, InfluenceSettings


@dataclass
class ResolvedSettings:
    """Settings with the model's defaults filled in (what the replay actually used).

    Attributes:
        lr: learning rate of the training phase's epoch and of the replay.
        weight_decay / batch_size: lambda and B of that epoch.
        lr_source: ``auto``, ``solver`` or ``given`` (a number from the user).
        solver_lr: the console's rate, per step on a mean gradient: the rate of its last
            update (``SolverConfig.lr``: a schedule's final rate, the definition's
            ``lr``/``alpha`` without one; NaN if it has none).
        solver_rate: which console rate ``solver_lr`` is, in words (e.g. ``the console's
            final rate (Cosine from 0.1)``; :meth:`SolverConfig.describe_rate`).
        console_schedule: the schedule read (:meth:`.Schedule.to_dict`, with
            ``update_interval``), or None.
        curvature: the measured :class:`~.curvature.Curvature` (None before measuring).
        lr_choice: the stable rate and the bound that set it (:class:`~.curvature.LrChoice`).
        warnings: messages for the user.
        replay_step: the replay step run (:func:`.replay_steps.step_for` of the one asked).

    """

    lr: float
    weight_decay: float
    batch_size: int
    lr_source: str = "solver"
    solver_lr: float = float("nan")
    solver_rate: str = "the console's rate"
    console_schedule: Optional[Dict] = None
    curvature: Optional[curvature_mod.Curvature] = None
    lr_choice: Optional[curvature_mod.LrChoice] = None
    warnings: List[str] = field(default_factory=list)
    replay_step: str = "fd"

    def lr_selection(self) -> Dict:
        """What decided the learning rate, for ``settings.yaml``."""
        out: Dict = {"source": self.lr_source, "solver_lr": self.solver_lr, "lr": self.lr}
        out["solver_rate"] = self.solver_rate
        if self.console_schedule is not None:
            out["console_schedule"] = dict(self.console_schedule)
        if self.lr_choice is not None:
            out["stable_lr"] = self.lr_choice.lr
            out["stable_lr_reason"] = self.lr_choice.limit
            out["bounds"] = dict(self.lr_choice.bounds)
        if self.curvature is not None:
            out["curvature"] = self.curvature.to_dict()
        return out


#: Most the weight decay alone may shrink the weights within the replayed epoch (a factor):
#: T steps multiply every weight by (1 - lr * lambda)^T. Below 1/10 the training phase ends
#: at a collapsed model (the loss near chance) whose scores measure the collapse, not the
#: data. Usual settings are far from it: lr 0.1, lambda 5e-4, T = 1875 shrink by 0.91.
MAX_DECAY_SHRINK = 10.0


def check_rates(lr: float, weight_decay: float, steps: int, chosen: str = "") -> None:
    """Refuse a learning rate and weight decay that leave nothing to replay.

    - ``lr > MIN_LR`` (see :data:`~sgd_influence_plugin.settings.MIN_LR`);
    - ``lr * weight_decay < 1``: otherwise each step multiplies every weight by
      ``1 - lr * weight_decay <= 0``, zeroing or flipping it whatever the gradient;
    - ``(1 - lr * weight_decay) ** steps >= 1 / MAX_DECAY_SHRINK`` (see
      :data:`MAX_DECAY_SHRINK`).

    Args:
        lr: the replayed epoch's rate; ``chosen``: how it was chosen, for the message
            (e.g. "--lr auto chose it: ..."), "" for a rate the user gave.
        weight_decay: lambda of the replayed epoch.
        steps: T, steps of one epoch.

    Raises:
        SettingsError: naming the rate, the weight decay and what to change.

    """
    how = f" ({chosen})" if chosen else ""
    if not lr > MIN_LR:
        fix = (
            "give a smaller --weight-decay (the automatic rate keeps lr * weight decay below 1)"
            if weight_decay > 0 and lr * weight_decay > 0.01
            else "give an --lr above it"
        )
        raise SettingsError(
            f"learning rate {lr:g}{how}: at most {MIN_LR:g}, too small to change float32 "
            f"parameters, so every score would be near 0; {fix}"
        )
    shrink = lr * weight_decay
    if shrink >= 1:
        raise SettingsError(
            f"learning rate {lr:g}{how} with weight decay {weight_decay:g}: each step would "
            f"multiply every weight by 1 - {shrink:.3g} <= 0, destroying the model; give a "
            "smaller --weight-decay (or --lr)"
        )
    factor = math.exp(steps * math.log1p(-shrink))
    if factor < 1 / MAX_DECAY_SHRINK:
        raise SettingsError(
            f"learning rate {lr:g}{how} with weight decay {weight_decay:g}: the decay alone "
            f"would shrink every weight to {factor:.3g} of its size in the {steps} steps of an "
            f"epoch, collapsing the model; give a smaller --weight-decay (or --lr)"
        )


def replay_epoch(settings: InfluenceSettings, solver) -> Tuple[float, int]:
    """The replayed epoch's ``(weight decay, batch size)``: the settings' where given, else the
    solver's (:class:`~sgd_influence_plugin.nnabla_adapter.SolverConfig`), as given (not yet
    converted or checked). The one rule for :func:`resolve` and for the checks before it
    (:func:`.validation.check_loaded`).
    """
    wd = settings.weight_decay if settings.weight_decay is not None else solver.weight_decay
    bs = settings.batch_size if settings.batch_size is not None else solver.batch_size
    return wd, bs


def resolve(model, settings: InfluenceSettings) -> ResolvedSettings:
    """Fill weight decay, batch size and (for ``lr: solver`` or a number) the rate.

    With ``lr: auto`` the rate is provisional (the solver's) until :func:`choose_lr` has
    measured the curvature.

    Raises:
        SettingsError: the definition has no learning rate where one is needed.

    """
    settings.validate()
    solver = model.info.solver
    warnings = list(getattr(model.info, "warnings", ()))  # the definition's optimizers
    solver_lr = float(solver.lr)
    if settings.lr in ("auto", "solver"):
        # auto: at most the largest rate the console used (its base rate: the curvature
        # decides, as without a schedule); solver: the rate where its training ended.
        peak = float(getattr(solver, "peak_lr", solver_lr))
        source, lr = settings.lr, (peak if settings.lr == "auto" else solver_lr)
        if not (np.isfinite(lr) and lr > 0):
            if settings.lr == "solver":
                raise SettingsError(
                    f"{model.info.source}: solver '{solver.type}' has no usable learning rate; "
                    "pass one with --lr, or use --lr auto"
                )
            lr = math.inf  # auto: the curvature alone decides
    else:
        source, lr = "given", float(settings.lr)
    if solver.type not in ("Sgd", "SgdW"):
        warnings.append(
            f"the console trained with {solver.type} (lr {solver_lr:g}); the training phase and "
            "the replay model plain SGD (see lr_selection in the settings for the rate)"
        )
    schedule = getattr(solver, "schedule", None)
    warnings += schedule_warnings(solver)
    used = replay_steps.step_for(model, settings.replay_step)
    warnings += straight_through_warnings(model, settings.replay_step, used)
    wd, bs = replay_epoch(settings, solver)
    return ResolvedSettings(
        lr=float(lr),
        weight_decay=float(wd),
        batch_size=int(bs),
        lr_source=source,
        solver_lr=solver_lr,
        solver_rate=solver.describe_rate(),
        console_schedule=None
        if schedule is None
        else {**schedule.to_dict(), "update_interval": solver.update_interval},
        warnings=warnings,
        replay_step=used,
    )


def straight_through_warnings(model, step: str, used: str) -> List[str]:
    """What the user is told about the network's straight-through layers
    (:data:`.replay_steps.STRAIGHT_THROUGH`) when the replay step ``step`` is asked and
    ``used`` runs (:func:`.replay_steps.step_for`): [] for none.
    """
    layers = replay_steps.straight_through_layers(model)
    if not layers:
        return []
    net = f"{model.info.source}: {model.info.network}"
    shown = ", ".join(_layer(name, kind) for name, kind in layers[:3])
    rough = (
        "the loss itself jumps where a binarization flips, which no gradient sees, so the "
        "scores are rough: measure them with sgd-influence check before removing rows"
    )
    if step == "fd" and used == "exact":
        return [
            f"{net}: {shown} trains by a straight-through gradient, which the fd replay step "
            "does not see (it differences the step itself): the replay runs the exact step "
            f"(--replay_step exact) instead; {rough} (docs/method.md)"
        ]
    once = [_layer(n, kind) for n, kind in layers if not replay_steps.STRAIGHT_THROUGH[kind]]
    if once and step != "fd":
        return []  # the exact step is refused in one line (choose_lr)
    if not once:
        return [f"{net}: {shown} trains by a straight-through gradient; {rough} (docs/method.md)"]
    return [
        f"{net}: nnabla cannot differentiate the straight-through gradient of "
        f"{', '.join(once[:3])} twice, so the fd replay step differences its quantized "
        "forward instead of the "
        f"gradient the training used; {rough} (docs/method.md)"
    ]


def _layer(name: str, kind: str) -> str:
    return kind if name == kind else f"{name} ({kind})"


def schedule_warnings(solver) -> List[str]:
    """What the user is told about the console's schedule and ``update_interval`` (a
    :class:`~sgd_influence_plugin.nnabla_adapter.SolverConfig`): [] for neither.
    """
    out, sched = [], solver.schedule
    if sched is not None and not sched.constant:
        out.append(
            f"the console's learning rate followed a schedule ({sched.describe()}) and ended at "
            f"{sched.final_lr:g}: the check's epoch (and --lr solver) start from that final "
            "rate, where the console's training ended; --lr auto stays at most the base rate "
            "(docs/method.md)"
        )
    if solver.update_interval > 1:
        out.append(
            f"the console summed the gradients of {solver.update_interval} mini-batches per "
            f"update (update_interval): the tool's epochs take {solver.batch_size} rows per step "
            f"at rate {solver.lr:g} and weight decay {solver.weight_decay:g} on their mean, "
            "the same update (docs/method.md)"
        )
    return out


#: Feature columns whose spreads differ by more than this factor get a warning
#: (:func:`feature_spread_warning`). The raw tables of issue 36 spread 109x (Titanic), 2,334x
#: (wine) and 253,000x (breast cancer), where sorting by loss found more wrong labels than the
#: influence; standardized, they spread 1x and the influence found as many or more
#: (docs/method.md, "What a score estimates").
MAX_FEATURE_SPREAD = 10.0


def dominant_row_warning(losses: np.ndarray, where: str, row: Callable[[int], int]):
    """A warning when one validation row carries more than half of the validation loss (the
    scores then mostly measure the influence on that row), else None.

    Args:
        losses: (V,) each validation row's loss at the trained parameters (finite).
        where: the validation CSV, for the message.
        row: index -> the row's number in the CSV, for the message.

    """
    losses = np.asarray(losses, dtype=np.float64)
    total = float(np.sum(losses))
    if len(losses) < 2 or not total > 0:
        return None
    k = int(np.argmax(losses))
    share = float(losses[k]) / total
    if share <= 0.5:
        return None
    return (
        f"{where} row {row(k)} carries {share:.0%} of the validation loss (its loss "
        f"{losses[k]:.3g}, the median {np.median(losses):.3g}), so the scores mostly measure "
        "the influence on that row: check its numbers, or leave it out of the validation CSV"
    )


def feature_spread_warning(
    input_shapes: Dict[str, tuple], arrays: Dict[str, np.ndarray], skip: Collection[str] = ()
):
    """A warning when a table's feature columns differ widely in scale, else None.

    Args:
        input_shapes: column -> sample shape, as the model reads them; the columns with a
            one-dimensional shape of two or more values (a table's ``x__0`` ... ``x__D-1``)
            are checked, images and per-sample CSVs are not.
        arrays: column -> (N, ...) float32 training arrays.
        skip: columns that are no features, e.g. the word indices an Embed reads
            (``ModelInfo.word_indices``): a text's last places hold 0 (the text has ended) in
            most rows, so their spread is small, and standardizing indices breaks the Embed.

    Returns:
        One sentence naming the column, its largest and smallest spread (standard deviation
        over the training rows; constant features ignored) and what to do, or None.

    """
    for col, shape in input_shapes.items():
        if len(shape) != 1 or shape[0] < 2 or col not in arrays or col in skip:
            continue
        spread = np.asarray(arrays[col], dtype=np.float64).reshape(len(arrays[col]), -1).std(0)
        live = np.flatnonzero(spread > 0)
        if len(live) < 2:
            continue
        hi, lo = live[np.argmax(spread[live])], live[np.argmin(spread[live])]
        ratio = spread[hi] / spread[lo]
        if ratio > MAX_FEATURE_SPREAD:
            return (
                f"the features of {col} differ {ratio:,.0f}x in spread ({col}__{hi}: standard "
                f"deviation {spread[hi]:.3g}, {col}__{lo}: {spread[lo]:.3g}); with unscaled "
                "features the influence follows the largest ones, and sorting by the loss "
                "column finds more wrong labels: standardize the features and retrain for "
                "scores that are about the rows (docs/method.md)"
            )
    return None


def choose_lr(
    model,
    train: Dict[str, np.ndarray],
    settings: InfluenceSettings,
    run: ResolvedSettings,
    log: Optional[Callable[[str], None]] = None,
    helper=None,
) -> ResolvedSettings:
    """Measure the curvature at the model's parameters and settle ``run.lr`` (in place).

    ``auto``: the stable rate of :func:`.curvature.stable_lr`, at most the largest rate the
    console used (``SolverConfig.peak_lr``, its base rate). A rate the user gave (or
    ``solver``) is kept, with a warning before the run when it breaks the stability bounds,
    naming the stable value. ``helper``:
    a second process for part of the measurement (see :func:`.curvature.measure`), or None.
    """
    log = log or (lambda msg: None)
    n = len(next(iter(train.values())))
    steps = core.n_steps(n, run.batch_size)
    operator, kind, why = curvature_mod.hvp_operator(model, min(run.batch_size, n))
    if kind == "fd" and settings.replay_step == "exact":  # no second derivative: one line
        msg = "needs second derivatives: use --replay_step fd (the default, first derivatives)"
        raise SettingsError(f"{model.info.source}: {why}; the exact replay step {msg}")
    curv = curvature_mod.measure(
        model, train, run.batch_size, settings.seed, graphs=operator, helper=helper
    )
    cap = run.lr if run.lr_source == "auto" else math.inf
    choice = curvature_mod.stable_lr(
        curv, steps, cap=cap, weight_decay=run.weight_decay,
        cap_words=model.info.solver.describe_rate(base=True),
    )  # fmt: skip
    run.curvature, run.lr_choice = curv, choice
    if run.lr_source == "auto":
        if not math.isfinite(choice.lr) or choice.lr <= 0:
            raise SettingsError(
                f"{model.info.source}: no learning rate in the definition and the curvature "
                "sets no bound; pass one with --lr"
            )
        run.lr = choice.lr
        check_rates(run.lr, run.weight_decay, steps, f"--lr auto chose it: {choice.limit}")
        log(f"replay learning rate {run.lr:g} (auto: {choice.limit})")
        return run
    check_rates(run.lr, run.weight_decay, steps)
    if curvature_mod.breaks_rule(run.lr, curv, steps, run.weight_decay):
        msg = (
            f"lr={run.lr:g} is above the stable rate {choice.lr:g} measured for this model "
            f"({choice.limit}); the final-parameters replay may blow up (unstable trials are "
            "retried at a quarter of the rate). --lr auto picks the stable rate"
        )
        run.warnings.append(msg)
        log("warning: " + msg)
    return run
