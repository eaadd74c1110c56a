"""The one settings object of a run; written as ``settings.yaml`` beside every result."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Union

import numpy as np
import yaml

from .errors import SettingsError
from .io_utils import atomic_write
from .options import ScoreArguments, choices, default
from .replay_steps import REPLAY_STEPS
from .target import TARGETS

#: What ``cache`` accepts.
CACHE_MODES = choices("cache")


def is_number(x) -> bool:
    """A real number (numpy's too), not a bool."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


#: Named learning-rate choices (besides a positive number).
LR_CHOICES = ("auto", "solver")
#: Largest seed numpy's RandomState takes.
MAX_SEED = 2**32 - 1
#: Most trials a run accepts. Each trial is a whole training epoch plus its replay, so M
#: trials take M times as long; averaging M trials lowers the noise of one trial by
#: 1/sqrt(M) only, so past a few dozen nothing changes the ranking, and 1000 trials of even a
#: tiny model take hours. A larger number is a typing error, not a request.
MAX_TRIALS = 1000
#: Most epochs of the training phase: each is a whole epoch before the replayed one, and their
#: sample orders are drawn up front (1e9 epochs asked for 24 GB and the kernel killed the run).
MAX_EPOCHS = 10000
#: Default number of trials (independent sample orders) averaged; see docs/measurements.md.
DEFAULT_TRIALS = default("trials")
#: Smallest learning rate accepted (exclusive). The parameters are float32, whose resolution
#: is 2**-24 (6e-8) of a value: a step lr * g changes a weight of size w only if
#: lr * |g| > 6e-8 * |w|, so at lr <= 1e-12 a gradient would need |g| > 6e4 |w| to move any
#: weight at all. The training phase then leaves the parameters where they are, and the
#: replay's scores (proportional to lr) shrink towards 0 and, near 1e-45, underflow float32 to
#: exactly 0: a ranking of zeros that looks like a result.
MIN_LR = 1e-12
#: Compute contexts: ``cpu``, or ``cudnn``/``cuda`` with an optional device number. Nothing
#: else (e.g. ``cpu:half``: half precision is not implemented, and was silently ignored).
CONTEXT = re.compile(r"^(cpu|(cudnn|cuda)(:\d+)?)$")


def parse_lr(text: Union[str, float]) -> Union[str, float]:
    """``auto``, ``solver`` or a positive number, from a command line or dialog value.

    Raises:
        SettingsError: anything else.

    """
    if isinstance(text, str):
        word = text.strip().lower()
        if word in LR_CHOICES:
            return word
        try:
            value = float(word)
        except ValueError:
            raise SettingsError(
                f"learning rate '{text}': give auto (a stable rate chosen from the measured "
                "curvature), solver (the network definition's rate) or a positive number"
            ) from None
    else:
        value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise SettingsError(f"learning rate {text}: must be a positive number, auto or solver")
    if value <= MIN_LR:
        raise SettingsError(
            f"learning rate {text}: too small to change float32 parameters (at most {MIN_LR:g} "
            "leaves every weight where it is and every score near 0); give a rate above "
            f"{MIN_LR:g}, or auto"
        )
    return value


def check_context(context) -> str:
    """``cpu`` or ``cudnn[:DEVICE]`` (see :data:`CONTEXT`).

    Raises:
        SettingsError: anything else, e.g. ``cpu:half``.

    """
    if not isinstance(context, str) or not CONTEXT.match(context.strip()):
        half = (
            " (half precision is not supported: the replay needs float32)"
            if isinstance(context, str) and "half" in context
            else ""
        )
        raise SettingsError(
            f"--context {context}: use cpu, or cudnn[:DEVICE] with a device number, e.g. "
            f"cudnn:0{half}"
        )
    return context.strip()


@dataclass
class InfluenceSettings(ScoreArguments):
    """Everything that decides the scores, checked (:meth:`validate`).

    Its fields (their names, types, defaults and help) are declared once, in
    :class:`.options.ScoreArguments`; a None means the network definition's or the data's
    value, as the help says.
    """

    def validate(self, flags: Optional[Mapping[str, Optional[str]]] = None) -> InfluenceSettings:
        """Raise :class:`SettingsError` for an out-of-range value; returns self (``lr`` parsed
        in place). The one home of every settings rule: the CLI, the console plugin and the
        Python API all come here.

        Args:
            flags: field name -> how the calling interface spells the option in messages
                (e.g. ``{"batch_size": "--batch_size"}``); missing or None = the field name.

        """
        flags = flags or {}

        def name(field: str) -> str:
            return flags.get(field) or field

        self._check_rate(name)
        self._check_counts(name)
        self._check_choices(name)
        return self

    def _check_rate(self, name: Callable[[str], str]) -> None:
        """``lr`` (parsed in place) and ``weight_decay``; ``name`` spells an option."""
        if self.lr is None or isinstance(self.lr, bool):
            raise SettingsError(f"{name('lr')} {self.lr}: give auto, solver or a positive number")
        self.lr = parse_lr(self.lr)
        if self.weight_decay is not None and not (
            is_number(self.weight_decay)
            and math.isfinite(self.weight_decay)
            and self.weight_decay >= 0
        ):
            raise SettingsError(
                f"{name('weight_decay')} {self.weight_decay}: the weight decay must be a finite "
                "number >= 0"
            )

    def _check_counts(self, name: Callable[[str], str]) -> None:
        """The whole-number settings: sizes, epochs (at most :data:`MAX_EPOCHS`), trials (at
        most :data:`MAX_TRIALS`), retries, and the seed (its trials' seeds within numpy's
        range).
        """
        for field, what, low in (
            ("batch_size", "the mini-batch size", 1),
            ("epochs", "the number of epochs", 1),
            ("trials", "the number of trials", 1),
            ("val_batch_size", "the validation batch size", 1),
            ("retries", "the number of retries", 0),
        ):
            value = getattr(self, field)
            if field == "batch_size" and value is None:
                continue
            if not (is_number(value) and int(value) == value and value >= low):
                raise SettingsError(
                    f"{name(field)} {value}: {what} must be a whole number >= {low}"
                )
        if self.epochs > MAX_EPOCHS:
            raise SettingsError(
                f"{name('epochs')} {self.epochs}: give at most {MAX_EPOCHS} epochs; each is a "
                "whole training epoch before the replayed one (default 1)"
            )
        if self.trials > MAX_TRIALS:
            raise SettingsError(
                f"{name('trials')} {self.trials}: give at most {MAX_TRIALS} trials; each is a "
                "whole training epoch and its replay, and averaging more than a few dozen no "
                f"longer changes the ranking (default {DEFAULT_TRIALS})"
            )
        top = MAX_SEED - (self.trials - 1)
        if not (is_number(self.seed) and int(self.seed) == self.seed and 0 <= self.seed <= top):
            seed = name("seed")
            why = (
                f" (the {self.trials} trials use seeds {seed} to {seed} + {self.trials - 1})"
                if self.trials > 1
                else ""
            )
            raise SettingsError(
                f"{seed} {self.seed}: give a whole number in 0..{top}{why}; numpy's seeds lie in "
                f"0..{MAX_SEED}"
            )

    def _check_choices(self, name: Callable[[str], str]) -> None:
        """The context (normalised in place), the cache mode, jobs, target and replay step."""
        self.context = check_context(self.context)
        if self.cache not in CACHE_MODES:
            raise SettingsError(
                f"{name('cache')} {self.cache!r}: choose one of {', '.join(CACHE_MODES)}"
            )
        if self.jobs is not None and not (
            is_number(self.jobs) and int(self.jobs) == self.jobs and self.jobs >= 1
        ):
            raise SettingsError(
                f"{name('jobs')} {self.jobs}: must be >= 1 (or empty for the usable cores)"
            )
        if self.target not in TARGETS:
            raise SettingsError(
                f"{name('target')} {self.target!r}: choose one of {', '.join(TARGETS)}"
            )
        if self.replay_step not in REPLAY_STEPS:
            raise SettingsError(
                f"{name('replay_step')} {self.replay_step!r}: choose one of "
                f"{', '.join(REPLAY_STEPS)}"
            )

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
