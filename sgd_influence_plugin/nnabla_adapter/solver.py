"""How the console trained a network: the optimizer's solver, its learning rate and its
schedule (:mod:`.schedule`), weight decay, the training dataset's batch size and the
optimizer's ``update_interval`` (:class:`SolverConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .schedule import Schedule, read_schedule

#: Solver type -> (its parameter message field, the learning-rate field in it).
_LR_FIELD = {
    "Sgd": ("sgd_param", "lr"),
    "SgdW": ("sgdw_param", "lr"),
    "Momentum": ("momentum_param", "lr"),
    "Nesterov": ("nesterov_param", "lr"),
    "Lars": ("lars_param", "lr"),
    "RMSprop": ("rmsprop_param", "lr"),
    "RMSpropGraves": ("rmsprop_graves_param", "lr"),
    "Adagrad": ("adagrad_param", "lr"),
    "Adadelta": ("adadelta_param", "lr"),
    "Adam": ("adam_param", "alpha"),
    "AdamW": ("adamw_param", "alpha"),
    "Adamax": ("adamax_param", "alpha"),
    "AdaBelief": ("adabelief_param", "alpha"),
    "AdaBound": ("adabound_param", "alpha"),
    "AMSGrad": ("amsgrad_param", "alpha"),
    "AMSBound": ("amsbound_param", "alpha"),
    "Lamb": ("lamb_param", "eta"),
    "Lion": ("lion_param", "lr"),
}
#: Solvers whose step is linear in the gradient: ``update_interval`` k sums k mini-batch
#: gradients into one step, which is a step k times the rate on their mean.
LINEAR_SOLVERS = ("Sgd", "SgdW", "Momentum", "Nesterov")


@dataclass(frozen=True)
class SolverConfig:
    """How the console trained the network (read from the optimizer's solver), as one plain
    SGD step on a mean gradient: what "the console's rate" means everywhere in the tool.

    With ``update_interval`` k > 1 ``nnabla_cli train`` sums the gradients of k mini-batches
    of B and steps once, adding lambda * theta once: a step on the mean gradient of k * B
    rows at k times the rate (for :data:`LINEAR_SOLVERS`) with weight decay lambda / k, which
    is what ``lr``, ``weight_decay`` and ``batch_size`` hold; k = 1 leaves them as typed.

    Attributes:
        type: nnabla solver name, e.g. ``Sgd``, ``Momentum``, ``Adam``.
        lr: the rate of the console's last update, on the mean gradient (the schedule's
            ``final_lr``, times k for a linear solver); the base rate without a schedule
            (``lr``, or ``alpha`` for the Adam family). NaN: none.
        weight_decay: L2 coefficient lambda on the mean gradient (the definition's / k).
        batch_size: rows per update: the training dataset's mini-batch size times k.
        schedule: the console's learning-rate schedule (:class:`.schedule.Schedule`); None
            where none was read (a config built by hand).
        update_interval: k, mini-batches per update.

    """

    type: str
    lr: float
    weight_decay: float
    batch_size: int
    schedule: Optional[Schedule] = None
    update_interval: int = 1

    @property
    def peak_lr(self) -> float:
        """The largest rate the console used, per step on a mean gradient: the schedule's
        base rate (times k for a linear solver, as ``lr``), or ``lr`` where no schedule was
        read. The cap of ``--lr auto``.
        """
        if self.schedule is None or self.schedule.constant:
            return self.lr
        k = self.update_interval if self.type in LINEAR_SOLVERS else 1
        return self.schedule.base_lr * k

    def describe_rate(self, base: bool = False) -> str:
        """Which console rate ``lr`` (``base``: :attr:`peak_lr`) is, for messages and the
        summary: ``the console's rate`` (``the console's own rate``), or e.g. ``the console's
        final rate (Cosine from 0.1)`` (``the console's base rate (...)``), ``... x 4
        (update_interval 4)``.
        """
        words = "the console's own rate" if base else "the console's rate"
        if self.schedule is not None and not self.schedule.constant:
            which = "base" if base else "final"
            words = f"the console's {which} rate ({self.schedule.describe()})"
        if self.update_interval > 1:
            times = f"x {self.update_interval} " if self.type in LINEAR_SOLVERS else ""
            words += f" {times}(update_interval {self.update_interval})"
        return words


def solver_config(opt, proto) -> SolverConfig:
    """The :class:`SolverConfig` of optimizer ``opt`` of the definition ``proto``: lr NaN for
    a solver type without a known rate field, else the schedule's final rate
    (:func:`.schedule.read_schedule`); the batch size of its dataset, else of its network,
    else 1; all three per update (``update_interval``).
    """
    s = opt.solver
    lr, stored = float("nan"), float("nan")
    if s.type in _LR_FIELD:
        sub, lr_field = _LR_FIELD[s.type]
        if s.HasField(sub):
            # Protobuf stores float32: 0.1 reads back as 0.10000000149; keep what was typed.
            stored = getattr(getattr(s, sub), lr_field)
            lr = float(f"{stored:.7g}")
    schedule = read_schedule(opt, proto, lr, stored)
    k = max(1, int(opt.update_interval))
    batch_size = 0
    for d in proto.dataset:
        if d.name in opt.dataset_name:
            batch_size = int(d.batch_size)
    if not batch_size:
        for n in proto.network:
            if n.name == opt.network_name:
                batch_size = int(n.batch_size)
    kind = s.type or "Sgd"
    per_update = k if kind in LINEAR_SOLVERS else 1
    return SolverConfig(
        type=kind,
        lr=schedule.final_lr * per_update,
        weight_decay=float(f"{s.weight_decay:.7g}") / k,
        batch_size=(batch_size or 1) * k,
        schedule=schedule,
        update_interval=k,
    )
