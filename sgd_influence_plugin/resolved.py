"""What the replay actually used: the settings with the model's defaults filled in and the
measured curvature (:func:`.influence.resolve` fills it; :mod:`.phases` and
:mod:`.influence` read it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from . import curvature as curvature_mod


@dataclass
class ResolvedSettings:
    """Settings with the model's defaults filled in (what the replay actually used).

    Attributes:
        lr: learning rate of the training phase's epoch and of the replay.
        weight_decay / batch_size: lambda and B of that epoch.
        lr_source: ``auto``, ``solver`` or ``given`` (a number from the user).
        solver_lr: the network definition's rate (``lr``/``alpha``; NaN if it has none).
        curvature: the measured :class:`~.curvature.Curvature` (None before measuring).
        lr_choice: the stable rate and the bound that set it (:class:`~.curvature.LrChoice`).
        warnings: messages for the user.

    """

    lr: float
    weight_decay: float
    batch_size: int
    lr_source: str = "solver"
    solver_lr: float = float("nan")
    curvature: Optional[curvature_mod.Curvature] = None
    lr_choice: Optional[curvature_mod.LrChoice] = None
    warnings: List[str] = field(default_factory=list)

    def lr_selection(self) -> Dict:
        """What decided the learning rate, for ``settings.yaml``."""
        out: Dict = {"source": self.lr_source, "solver_lr": self.solver_lr, "lr": self.lr}
        if self.lr_choice is not None:
            out["stable_lr"] = self.lr_choice.lr
            out["stable_lr_reason"] = self.lr_choice.limit
            out["bounds"] = dict(self.lr_choice.bounds)
        if self.curvature is not None:
            out["curvature"] = self.curvature.to_dict()
        return out
