"""How the console trained a network: the optimizer's solver, its learning rate and weight
decay, and the training dataset's batch size (:class:`SolverConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class SolverConfig:
    """How the console trained the network (read from the optimizer's solver).

    Attributes:
        type: nnabla solver name, e.g. ``Sgd``, ``Momentum``, ``Adam``.
        lr: its base learning rate (``lr``, or ``alpha`` for the Adam family).
        weight_decay: L2 coefficient lambda; SGD adds lambda * theta to the gradient.
        batch_size: the training dataset's mini-batch size.

    """

    type: str
    lr: float
    weight_decay: float
    batch_size: int


def solver_config(opt, proto) -> SolverConfig:
    """The :class:`SolverConfig` of optimizer ``opt`` of the definition ``proto``: lr NaN for
    a solver type without a known rate field; the batch size of its dataset, else of its
    network, else 1.
    """
    s = opt.solver
    lr = float("nan")
    if s.type in _LR_FIELD:
        sub, lr_field = _LR_FIELD[s.type]
        if s.HasField(sub):
            # Protobuf stores float32: 0.1 reads back as 0.10000000149; keep what was typed.
            lr = float(f"{getattr(getattr(s, sub), lr_field):.7g}")
    batch_size = 0
    for d in proto.dataset:
        if d.name in opt.dataset_name:
            batch_size = int(d.batch_size)
    if not batch_size:
        for n in proto.network:
            if n.name == opt.network_name:
                batch_size = int(n.batch_size)
    return SolverConfig(
        type=s.type or "Sgd",
        lr=lr,
        weight_decay=float(f"{s.weight_decay:.7g}"),
        batch_size=batch_size or 1,
    )
