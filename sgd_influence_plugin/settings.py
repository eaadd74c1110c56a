"""The one settings object of a run; written as ``settings.yaml`` beside every result."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import yaml

from .errors import SettingsError
from .io_utils import atomic_write

CACHE_MODES = ("final", "all")


@dataclass
class InfluenceSettings:
    """Everything that decides the scores.

    Attributes:
        lr: learning rate eta of the replayed SGD epoch; None = the network definition's
            solver rate (``lr``, or ``alpha`` for Adam-type solvers).
        weight_decay: L2 coefficient lambda; None = the solver's ``weight_decay``.
        batch_size: mini-batch size B of the replayed epoch; None = the training dataset's.
        epochs: K, SGD epochs the training phase runs from the trained parameters; the last
            one is replayed.
        trials: M, independent training-plus-replay runs (order seeds ``seed``,
            ``seed + 1``, ...) whose scores are averaged.
        seed: seed of the first trial's sample order.
        cache: ``final`` (Suzuki et al.: keep only the final parameters) or ``all`` (Hara et al.:
            also keep the parameters before every step of the last epoch).
        context: ``cpu`` or ``cudnn[:DEVICE]``.
        val_batch_size: batch size for the validation gradient (no effect on the result).

    """

    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    batch_size: Optional[int] = None
    epochs: int = 1
    trials: int = 1
    seed: int = 0
    cache: str = "final"
    context: str = "cpu"
    val_batch_size: int = 256

    def validate(self) -> InfluenceSettings:
        """Raise :class:`SettingsError` for out-of-range values; returns self."""
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise SettingsError(f"lr={self.lr}: the learning rate must be a positive number")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise SettingsError(f"weight_decay={self.weight_decay}: must be >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise SettingsError(f"batch_size={self.batch_size}: must be >= 1")
        if self.epochs < 1:
            raise SettingsError(f"epochs={self.epochs}: must be >= 1")
        if self.trials < 1:
            raise SettingsError(f"trials={self.trials}: must be >= 1")
        if self.cache not in CACHE_MODES:
            raise SettingsError(f"cache={self.cache!r}: choose one of {', '.join(CACHE_MODES)}")
        if self.val_batch_size < 1:
            raise SettingsError(f"val_batch_size={self.val_batch_size}: must be >= 1")
        return self

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict (YAML-safe)."""
        return dataclasses.asdict(self)


def write_yaml(path: str, data: Dict[str, Any]) -> None:
    """Write ``data`` as YAML, atomically."""
    with atomic_write(path) as f:
        yaml.safe_dump(data, f, sort_keys=False, default_flow_style=False)


def read_yaml(path: str) -> Dict[str, Any]:
    """Read a YAML mapping."""
    with open(path) as f:
        return yaml.safe_load(f) or {}
