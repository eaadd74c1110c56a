"""The console's learning-rate schedule, read by nnabla's own code: the rate ``nnabla_cli
train`` gave the last update of the training (:func:`read_schedule` -> :class:`Schedule`).

``nnabla_cli train`` runs ``max_epoch * iter_per_epoch`` iterations (one mini-batch each; one
process, so nnabla's ``comm_size`` is 1) and updates the parameters at every
``update_interval``-th, each time at ``scheduler.get_learning_rate(iteration)``: the schedule
(``lr_scheduler_type`` Polynomial, Cosine, Exponential or Step, or the older ``lr_decay`` every
``lr_decay_interval`` iterations, with an optional linear warm-up) is built here by nnabla's
``load._create_optimizer`` from the optimizer's own definition, so its classes and its reading
of the fields are nnabla's, not a copy of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

from ..errors import NetworkDefinitionError

#: nnabla scheduler class -> the name the summary and settings.yaml give it.
_KINDS = {
    "PolynomialScheduler": "Polynomial",
    "CosineScheduler": "Cosine",
    "StepScheduler": "Step",
    "ExponentialScheduler": "Exponential",
}


@dataclass(frozen=True)
class Schedule:
    """The console's learning-rate schedule and where it ended.

    Attributes:
        kind: ``constant``, ``Polynomial``, ``Cosine``, ``Exponential``, ``Step`` or
            ``lr_decay`` (the older ``lr_decay`` / ``lr_decay_interval`` fields), with
            `` with linear warm-up`` appended when the definition has one.
        base_lr: the solver's rate as typed (``lr``, or ``alpha``), per update.
        final_lr: the rate of the training's last update (per update; ``base_lr`` when the
            schedule is constant or nothing was trained), rounded to 7 digits as the base is.
        iterations: mini-batches ``nnabla_cli train`` ran (``max_epoch * iter_per_epoch``,
            at most the optimizer's ``end_iter``).
        last_update: the iteration (from 0) of the last update, -1 when there was none.

    """

    kind: str
    base_lr: float
    final_lr: float
    iterations: int
    last_update: int

    @property
    def constant(self) -> bool:
        """Whether the rate never changed (the console's default)."""
        return self.kind == "constant"

    def describe(self) -> str:
        """E.g. ``Cosine from 0.1`` (``constant 0.1`` when it never changed)."""
        how = "constant" if self.constant else f"{self.kind} from"
        return f"{how} {self.base_lr:g}"

    def to_dict(self) -> Dict:
        """What ``settings.yaml`` records (``lr_selection: console_schedule``)."""
        return {
            "kind": self.kind,
            "base_lr": self.base_lr,
            "final_lr": self.final_lr,
            "iterations": self.iterations,
            "last_update_iteration": self.last_update,
        }


def _nnabla_scheduler(opt, init_lr_proto: float):
    """The scheduler ``nnabla_cli train`` builds for optimizer ``opt``, by nnabla's own
    ``_create_optimizer`` on a copy whose solver is a plain Sgd with the same rate (nnabla
    reads the schedule the same way for every solver; the copy also serves solver types
    nnabla's loader lacks).
    """
    from nnabla.ext_utils import get_extension_context
    from nnabla.utils import load, nnabla_pb2

    o = nnabla_pb2.Optimizer()
    o.CopyFrom(opt)
    o.solver.type = "Sgd"
    o.solver.sgd_param.lr = init_lr_proto
    try:
        return load._create_optimizer(get_extension_context("cpu"), o, None).scheduler
    except (NotImplementedError, ValueError) as e:
        kind = opt.solver.lr_scheduler_type
        raise NetworkDefinitionError(
            f"optimizer '{opt.name}': learning-rate schedule '{kind}' is not one nnabla_cli "
            f"train runs ({type(e).__name__}: {e})"
        ) from e


def _kind(opt, scheduler) -> str:
    """The schedule's name from nnabla's scheduler object (see :attr:`Schedule.kind`)."""
    warm = type(scheduler).__name__ == "LinearWarmupScheduler"
    inner = scheduler.scheduler if warm else scheduler
    kind = _KINDS.get(type(inner).__name__, type(inner).__name__)
    if kind == "Exponential" and inner.gamma == 1.0:
        kind = "constant"
    elif kind == "Exponential" and opt.solver.lr_scheduler_type == "":
        kind = "lr_decay"
    if warm:
        kind += " with linear warm-up"
    return kind


def read_schedule(opt, proto, base_lr: float, init_lr_proto: float) -> Schedule:
    """The schedule of optimizer ``opt`` of definition ``proto``, and its final rate.

    Args:
        base_lr: the solver's rate as the tool reads it (7 digits; NaN: none, then no
            schedule is read and the final rate is NaN too).
        init_lr_proto: the same rate as the definition stores it (float32), which nnabla's
            scheduler starts from.

    Raises:
        NetworkDefinitionError: a schedule ``nnabla_cli train`` refuses (e.g. ``Custom``).

    """
    tc = proto.training_config
    iterations = int(tc.max_epoch) * int(tc.iter_per_epoch)
    if opt.end_iter > 0:
        iterations = min(iterations, int(opt.end_iter))
    interval = max(1, int(opt.update_interval))
    last = (iterations // interval) * interval - 1
    if base_lr != base_lr:  # NaN: the solver has no rate the tool reads
        return Schedule("unknown", base_lr, base_lr, iterations, last)
    scheduler = _nnabla_scheduler(opt, init_lr_proto)
    kind = _kind(opt, scheduler)
    if kind == "constant" or last < 0:
        return Schedule(kind, base_lr, base_lr, iterations, last)
    final = float(f"{scheduler.get_learning_rate(last):.7g}")
    return Schedule(kind, base_lr, final, iterations, last)
