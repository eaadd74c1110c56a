"""Every check of a run's options and loaded inputs, before anything is computed.

:func:`~sgd_influence_plugin.runner.run` calls, in this order:

1. :func:`check_options`: the numbers and the choice of model files, from the request alone;
2. :func:`.places.check_output_places`: the output CSV and its companions, the cache folder,
   against the input files and the folders of the images the CSVs name (after the model is
   read, which names the default datasets);
3. :func:`check_loaded`: labels (and an Embed layer's word indices), weight decay, the share
   to remove and free space, once the datasets are decoded.

Of these, what any command that replays needs of the decoded data is
:func:`.label_values.check_labels` and :func:`check_replay_data` (enough rows; the weight
decay and rate, with the one rule of :func:`.resolved.replay_epoch` for which weight decay
and batch size the replay uses).

Messages use the option names of the interface that called (:class:`FlagNames`), e.g. the
console plugin's ``--remove_ratio`` or the CLI's ``--remove-ratio``.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from typing import Dict, Mapping, Optional

from . import option_parsers, options
from .dataset import Dataset
from .errors import OutputError, SettingsError
from .io_utils import nearest_existing
from .label_values import check_labels
from .settings import is_number
from .tiny_inputs import check_training_size

#: Thumbnail sizes accepted, in pixels (a thumbnail is at most this wide and high).
THUMB_SIZES = (16, 512)


class FlagNames:
    """How the calling interface spells each option, for messages: an attribute per option of
    :data:`.options.OPTIONS` (``flags.batch_size``), None where the interface has none.
    """

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self._names = option_parsers.spellings(interface)

    def __getattr__(self, name: str) -> Optional[str]:
        try:
            return self.__dict__["_names"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"FlagNames({self.interface!r})"

    def for_settings(self) -> Dict[str, Optional[str]]:
        """Field of :class:`~.settings.InfluenceSettings` -> this spelling (for its
        :meth:`~.settings.InfluenceSettings.validate`).
        """
        return {k: self._names[k] for k in options.SETTINGS}


#: The ``sgd-influence`` command line (``--batch-size``).
CLI_FLAGS = FlagNames("cli")
#: The console dialogs (``--batch_size``).
PLUGIN_FLAGS = FlagNames("dialog")


# ----------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------


def check_options(request, flags: FlagNames = CLI_FLAGS) -> None:
    """Check the request's own values (no file is read).

    Args:
        request: a :class:`~sgd_influence_plugin.runner.RunRequest`.
        flags: option names for messages.

    Raises:
        SettingsError: a value is out of range, or the model files are given inconsistently.

    """
    if request.params and not request.config:
        raise SettingsError(
            f"{flags.params} {request.params} needs {flags.config}: parameters go with the "
            f"network definition they were saved with; give {flags.config} net.nntxt too, or "
            f"give {flags.model} results.nnp alone"
        )
    if request.model and (request.config or request.params):
        given = flags.config if request.config else flags.params
        raise SettingsError(
            f"both {flags.model} and {given} given: give either {flags.model} results.nnp, or "
            f"{flags.config} net.nntxt with {flags.params} parameters.h5"
        )
    if not request.model and not request.config:
        raise SettingsError(
            f"no model given: pass {flags.model} results.nnp, or {flags.config} net.nntxt with "
            f"{flags.params} parameters.h5"
        )
    request.settings.validate(flags.for_settings())
    lo, hi = THUMB_SIZES
    if not (is_number(request.thumb_size) and lo <= request.thumb_size <= hi):
        raise SettingsError(
            f"{flags.thumb_size or 'thumbnail size'} {request.thumb_size}: thumbnails must be "
            f"{lo} to {hi} pixels"
        )
    if request.remove_ratio is not None:
        _check_ratio(request.remove_ratio, flags)


def _check_ratio(ratio, flags: FlagNames) -> None:
    if not (is_number(ratio) and 0 <= ratio < 1):
        raise SettingsError(
            f"{flags.remove_ratio} {ratio}: the share of rows to remove must be in [0, 1), "
            "e.g. 0.05 for 5%"
        )


def check_remove_choice(
    remove: Optional[int], remove_ratio: Optional[float], flags: FlagNames = CLI_FLAGS
) -> None:
    """At most one of ``remove`` (a count >= 0) and ``remove_ratio`` (in [0, 1)); neither
    means: apply the recommendation.

    Raises:
        SettingsError: both, or a value out of range.

    """
    if remove is not None and remove_ratio is not None:
        raise SettingsError(
            f"give at most one of {flags.remove or 'a number of rows'} N or "
            f"{flags.remove_ratio} R (neither: apply the recommendation)"
        )
    if remove is not None and not (is_number(remove) and int(remove) == remove and remove >= 0):
        raise SettingsError(f"{flags.remove} {remove}: the number of rows must be >= 0")
    if remove_ratio is not None:
        _check_ratio(remove_ratio, flags)


def rows_to_remove(
    n: int,
    remove: Optional[int],
    remove_ratio: Optional[float],
    flags: FlagNames = CLI_FLAGS,
    train_csv: str = "the training CSV",
) -> int:
    """The number of rows to drop from ``n``: ``remove``, or ``round(remove_ratio * n)``.

    Raises:
        SettingsError: it would remove every row (the message names the option given).

    """
    count = int(remove) if remove is not None else int(round(remove_ratio * n))
    if count >= n:
        if remove is not None:
            raise SettingsError(
                f"{flags.remove} {remove}: {train_csv} has {n} rows; remove at most {n - 1}"
            )
        top = (n - 0.5) / n  # round(r * n) < n  <=>  r * n < n - 0.5
        raise SettingsError(
            f"{flags.remove_ratio} {remove_ratio}: would remove {count} of the {n} rows of "
            f"{train_csv}, leaving none; give a share below {top:.4g}"
        )
    return count


def _check_weight_decay(value: float, source: str, flags: FlagNames) -> None:
    """The weight decay the replay will use (given, or the solver's) must be finite, >= 0."""
    if not (math.isfinite(value) and value >= 0):
        fix = f"; fix it there or pass {flags.weight_decay}" if flags.weight_decay else ""
        raise SettingsError(
            f"{source}: the solver's weight_decay is {value}; it must be a finite number >= 0" + fix
        )


# ----------------------------------------------------------------------------------------
# Loaded data
# ----------------------------------------------------------------------------------------


def check_replay_data(settings, info, train: Dataset, flags: FlagNames = CLI_FLAGS) -> int:
    """The training set against the replay: enough rows to rank
    (:func:`.tiny_inputs.check_training_size`), then the weight decay and a rate known now
    (:func:`check_replay_rate`). Returns the replayed epoch's batch size.

    Raises:
        DatasetError, SettingsError: naming the option to change.

    """
    from .resolved import replay_epoch

    batch = replay_epoch(settings, info.solver)[1]
    check_training_size(train.path, train.size, batch, flags.batch_size)
    check_replay_rate(settings, info, train.size, flags)
    return batch


def check_replay_rate(settings, info, n_train: int, flags: FlagNames = CLI_FLAGS) -> None:
    """The replay's weight decay and rate, as far as they are known before computing: the one
    check of them for ``run``, ``check`` and ``evaluate``.

    The weight decay is ``settings.weight_decay``, else the solver's
    (:func:`~sgd_influence_plugin.resolved.replay_epoch`, as the replay takes it): finite and
    >= 0. A rate known
    now (a number, or ``solver``) must, with that weight decay, leave a model to replay
    (:func:`~sgd_influence_plugin.resolved.check_rates`); ``auto`` is checked once the
    curvature has chosen it.

    Args:
        settings: the :class:`~sgd_influence_plugin.settings.InfluenceSettings`.
        info: the model's :class:`~sgd_influence_plugin.nnabla_adapter.ModelInfo`.
        n_train: training rows (the epoch's steps follow from them and the batch size).
        flags: option names for messages.

    Raises:
        SettingsError: naming the weight decay or the rate and what to change.

    """
    from .core import n_steps
    from .resolved import check_rates, replay_epoch

    solver = info.solver
    wd, batch = replay_epoch(settings, solver)
    _check_weight_decay(wd, info.source, flags)
    rate = solver.lr if settings.lr == "solver" else settings.lr
    if is_number(rate) and math.isfinite(rate) and rate > 0:
        check_rates(float(rate), float(wd), n_steps(n_train, max(1, int(batch))))


def estimate_bytes(
    n_train: int,
    n_params: int,
    batch_size: int,
    trials: int,
    cache_all: bool,
    thumb_size: int,
    channels: int,
) -> Dict[str, int]:
    """A rough size of what a run writes: ``{"cache": bytes, "output": bytes}``.

    The cache keeps float32 parameters once per trial (and before every step of the replayed
    epoch with ``cache_all``), plus the order and learning rates; the output is the CSV
    (about 150 bytes a row) and one PNG thumbnail a row (taken as half its raw pixel bytes).
    """
    steps = max(1, math.ceil(n_train / max(1, batch_size)))
    params = 4 * n_params + 4096
    per_trial = params * (1 + (steps if cache_all else 0)) + 4 * n_train + 4 * steps + 4096
    thumbs = n_train * (thumb_size * thumb_size * max(1, channels) // 2 + 200)
    return {"cache": trials * per_trial, "output": 150 * n_train + thumbs + 65536}


def check_free_space(
    output_csv: str, cache_root: str, need: Mapping[str, int], flags: FlagNames
) -> None:
    """Refuse a run whose output or cache would not fit the free space (see
    :func:`estimate_bytes`); the cache and output share the space when on one disk.
    """
    out_at = nearest_existing(os.path.dirname(os.path.abspath(output_csv)))
    cache_at = nearest_existing(cache_root)
    same = os.stat(out_at).st_dev == os.stat(cache_at).st_dev
    for at, needed, flag in (
        (out_at, need["output"] + (need["cache"] if same else 0), flags.output),
        (cache_at, need["cache"] + (need["output"] if same else 0), flags.cache_dir),
    ):
        free = shutil.disk_usage(at).free
        if needed > free:
            where = f"another {flag}" if flag else "another place"
            raise OutputError(
                f"{at}: about {needed / 1e6:.1f} MB are needed but only {free / 1e6:.1f} MB "
                f"are free; free some space or choose {where}"
            )


def check_loaded(
    request,
    info,
    train: Dataset,
    val: Dataset,
    n_params: int,
    flags: FlagNames,
) -> None:
    """The checks that need the decoded datasets and the model description.

    Args:
        request: the :class:`~sgd_influence_plugin.runner.RunRequest`.
        info: the model's :class:`~sgd_influence_plugin.nnabla_adapter.ModelInfo`.
        train / val: the decoded datasets.
        n_params: trainable scalars, for the cache size.
        flags: option names for messages.

    Raises:
        DatasetError, SettingsError, OutputError: see the individual checks.

    """
    check_labels(info, (train, val))
    s = request.settings
    if request.remove_ratio is not None:
        rows_to_remove(train.size, None, request.remove_ratio, flags, train.path)
    batch = check_replay_data(s, info, train, flags)
    channels = max((shape[0] for shape in info.input_shapes.values() if len(shape) == 3), default=1)
    need = estimate_bytes(
        train.size,
        n_params,
        batch,
        s.trials,
        s.cache == "all",
        request.thumb_size,
        channels,
    )
    cache_root = request.cache_dir or tempfile.gettempdir()
    check_free_space(request.output, cache_root, need, flags)
