"""The two phases of one trial, each reading and writing only the cache folder.

- :func:`run_training_phase` (Algorithm 1): from the trained parameters, K epochs of plain
  SGD; writes ``parameters.h5`` (final parameters), ``order.npy`` (int32 (N,)), ``lr.npy``
  (float32 (T,)) and ``settings.yaml``; with ``cache="all"`` also ``steps/step_00000.h5`` ...,
  the parameters before each step of the last epoch.
- :func:`run_inference_phase` (Algorithm 2): the backward replay from that cache.

Only this module knows the cache's file names (:func:`read_schedule` reads the epoch back).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Dict, Optional, Tuple

import numpy as np

from . import core, coworker, crossfit, parallel, replay
from . import target as target_mod
from .errors import SettingsError
from .settings import InfluenceSettings, read_yaml, write_yaml

if TYPE_CHECKING:  # pragma: no cover
    from .resolved import ResolvedSettings


def dir_bytes(path: str) -> int:
    """Bytes of the files under ``path`` (a trial's cache folder)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


#: The cache's files (see the module docstring).
PARAMS_FILE = "parameters.h5"
ORDER_FILE = "order.npy"
LR_FILE = "lr.npy"
META_FILE = "settings.yaml"
STEPS_FOLDER = "steps"


def _step_path(cache_dir: str, t: int) -> str:
    return os.path.join(cache_dir, STEPS_FOLDER, f"step_{t:05d}.h5")


def read_schedule(cache_dir: str) -> Tuple[np.ndarray, np.ndarray]:
    """The replayed epoch of a cache: ``(order, lrs)``, its sample order (int32 (N,)) and the
    learning rate of each of its T steps (float32 (T,)).
    """
    order = np.load(os.path.join(cache_dir, ORDER_FILE))
    lrs = np.load(os.path.join(cache_dir, LR_FILE))
    return order, lrs


def run_training_phase(
    model,
    train: Dict[str, np.ndarray],
    settings: InfluenceSettings,
    run: ResolvedSettings,
    cache_dir: str,
    seed: int,
    progress: Optional[core.Progress] = None,
) -> None:
    """Algorithm 1: K epochs of plain SGD from the model's current parameters.

    The model's trainable parameters end at the final parameters. ``cache_dir`` is created and
    receives the files listed in the module docstring.
    """
    n = len(next(iter(train.values())))
    orders = core.epoch_orders(n, settings.epochs, seed)
    T = core.n_steps(n, run.batch_size)
    lrs = np.full(T, run.lr, dtype=np.float32)
    os.makedirs(cache_dir, exist_ok=True)
    before_step = None
    if settings.cache == "all":
        os.makedirs(os.path.join(cache_dir, STEPS_FOLDER), exist_ok=True)

        def before_step(t):
            model.save_params(_step_path(cache_dir, t))

    for k, order in enumerate(orders):
        last = k == len(orders) - 1
        core.sgd_epoch(
            model,
            train,
            order,
            lrs,
            run.batch_size,
            run.weight_decay,
            before_step=before_step if last else None,
            progress=progress,
        )
    model.save_params(os.path.join(cache_dir, PARAMS_FILE))
    np.save(os.path.join(cache_dir, ORDER_FILE), orders[-1].astype(np.int32))
    np.save(os.path.join(cache_dir, LR_FILE), lrs)
    write_yaml(
        os.path.join(cache_dir, META_FILE),
        {
            **settings.to_dict(),
            "seed": seed,
            "resolved_lr": run.lr,
            "resolved_weight_decay": run.weight_decay,
            "resolved_batch_size": run.batch_size,
            "n_train": n,
            "steps_per_epoch": T,
            "model": model.info.source,
        },
    )


def run_inference_phase(
    model,
    train: Dict[str, np.ndarray],
    val: Dict[str, np.ndarray],
    cache_dir: str,
    val_batch_size: int = 256,
    progress: Optional[core.Progress] = None,
    helper=None,
    candidate_rows: Optional[np.ndarray] = None,
):
    """Algorithm 2 from a cache written by :func:`run_training_phase`, then the settings'
    target (:mod:`.target`); ``helper``: see :func:`.replay.replay` (a second process for the fd
    step's minus pass, or None). With ``candidate_rows`` (indices into ``val``: half A of a
    run that recommends) the gradient over those rows is replayed too, in the same pass
    (:func:`.crossfit.replay_with_candidates`; ``helper`` then replays it beside).

    Returns:
        ``(infl, stats, val_loss)``: infl float64 (N,) in training-row order: the replay's
        estimate of the change of the mean validation loss if the row were left out of the
        epoch, with target ``class-centred`` minus the mean of that estimate over the rows of
        the row's class (negative = harmful); with ``candidate_rows`` (2, N): that, then the
        same from the candidate rows alone (each row centred on its own); the replay's
        :class:`~sgd_influence_plugin.replay.ReplayStats`; and the mean validation loss (over
        every row of ``val``) at the final parameters.

    """
    meta = read_yaml(os.path.join(cache_dir, META_FILE))
    order, lrs = read_schedule(cache_dir)
    if len(order) != len(next(iter(train.values()))):
        raise SettingsError(
            f"{cache_dir}: the cache was made for {len(order)} training samples but the "
            f"training data has {len(next(iter(train.values())))}; run the training phase again"
        )
    model.load_params(os.path.join(cache_dir, PARAMS_FILE))
    u, val_loss = core.validation_gradient_and_loss(model, val, val_batch_size)
    batch_size = int(meta["resolved_batch_size"])
    replay_args = dict(
        weight_decay=float(meta["resolved_weight_decay"]),
        params_at=_params_at(model, cache_dir) if meta.get("cache") == "all" else None,
        progress=progress,
        step=meta.get("replay_step", "exact"),
        helper=helper,
    )
    if candidate_rows is None:
        infl, stats = replay.replay(model, train, order, lrs, batch_size, u, **replay_args)
    else:
        infl, stats = crossfit.replay_with_candidates(
            model, train, val, candidate_rows, u, order, lrs, batch_size, val_batch_size,
            **replay_args,
        )  # fmt: skip
    # a cache written before targets existed meant the replay's estimate as it is
    infl = target_mod.apply_target(infl, meta.get("target", "plain"), model.info, train)
    return infl, stats, val_loss


def _params_at(model, cache_dir: str):
    """``t -> the parameters before step t`` of an all-parameters cache (``cache="all"``)."""

    def params_at(t):
        from .nnabla_adapter import read_params

        return read_params(_step_path(cache_dir, t), model.info.trainable)

    return params_at


def replay_helper(settings: InfluenceSettings, cores: int, vectors: int = 1):
    """:func:`.coworker.helper` when a trial has ``cores`` cores (at least 2) to give its
    replay a second process and this platform can fork one; else None. With one query vector
    only the fd step's minus pass with a final-parameters cache can go there (see
    :func:`.replay.replay`: the same scores in about half the replay's wall time); with
    ``vectors`` >= 2 any replay can, the second vector's (:func:`.crossfit.replay_vectors`).
    """
    if vectors < 2 and (settings.replay_step != "fd" or settings.cache != "final"):
        return None
    return second_process(cores)


def second_process(cores: int):
    """:func:`.coworker.helper` when there are ``cores`` cores (at least 2) for a piece of
    work and this platform can fork a process; else None.
    """
    return coworker.helper if cores >= 2 and parallel.fork_available() else None
