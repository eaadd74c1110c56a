"""The Python API the CLI, the console plugin and the tests call.

Two phases, each reading and writing only the cache folder:

- :func:`run_training_phase` (Algorithm 1): from the trained parameters, K epochs of plain
  SGD; writes ``parameters.h5`` (final parameters), ``order.npy`` (int32 (N,)), ``lr.npy``
  (float32 (T,)) and ``settings.yaml``; with ``cache="all"`` also ``steps/step_00000.h5`` ...,
  the parameters before each step of the last epoch.
- :func:`run_inference_phase` (Algorithm 2): the backward replay from that cache.

:func:`compute_influence` runs both for M trials and averages the scores.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional

import numpy as np

from . import core
from .errors import SettingsError
from .settings import InfluenceSettings, read_yaml, write_yaml

#: Logger-like callback for user-facing messages (warnings, stages).
Log = Callable[[str], None]


@dataclass
class ResolvedRun:
    """Settings with the model's defaults filled in (what the replay actually used)."""

    lr: float
    weight_decay: float
    batch_size: int
    warnings: List[str] = field(default_factory=list)


def resolve(model, settings: InfluenceSettings) -> ResolvedRun:
    """Fill lr, weight decay and batch size from the network definition's solver.

    Raises:
        SettingsError: no learning rate in the definition and none given.

    """
    settings.validate()
    solver = model.info.solver
    warnings = []
    lr = settings.lr if settings.lr is not None else solver.lr
    if not np.isfinite(lr) or lr <= 0:
        raise SettingsError(
            f"{model.info.source}: solver '{solver.type}' has no usable learning rate; "
            "pass one with --lr"
        )
    if solver.type not in ("Sgd", "SgdW"):
        warnings.append(
            f"the console trained with {solver.type}; the training phase and the replay model "
            f"plain SGD at lr={lr:g} (override with --lr)"
        )
    wd = settings.weight_decay if settings.weight_decay is not None else solver.weight_decay
    bs = settings.batch_size if settings.batch_size is not None else solver.batch_size
    return ResolvedRun(lr=float(lr), weight_decay=float(wd), batch_size=int(bs), warnings=warnings)


def growth_warning(u_growth: float, lr: float, steps: int, limit: float = 100.0) -> Optional[str]:
    """The user-facing warning when the replay expanded the query vector u more than ``limit``
    times (see ``core.ReplayStats.u_growth``), else None.

    If the growth came from one direction with |1 - lr * lambda| = g per step, then
    lambda ~ (1 + g) / lr and the replay is stable below lr = 2 / lambda; the message suggests
    half of that, lr / (1 + g), as a rough, safe value.
    """
    if u_growth <= limit:
        return None
    per_step = u_growth ** (1.0 / max(1, steps))
    suggested = lr / (1.0 + per_step)
    return (
        f"the replayed query vector grew {u_growth:.3g}x over {steps} steps: at these "
        f"parameters lr={lr:g} times the Hessian's top eigenvalue exceeds 2 (about "
        f"{1 + per_step:.3g}), so the scores rank samples but their magnitudes are not "
        f"calibrated. For calibrated scores use --cache all, or --lr {suggested:.2g} or smaller"
    )


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def _step_path(cache_dir: str, t: int) -> str:
    return os.path.join(cache_dir, "steps", f"step_{t:05d}.h5")


def run_training_phase(
    model,
    train: Dict[str, np.ndarray],
    settings: InfluenceSettings,
    run: ResolvedRun,
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
        os.makedirs(os.path.join(cache_dir, "steps"), exist_ok=True)

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
    model.save_params(os.path.join(cache_dir, "parameters.h5"))
    np.save(os.path.join(cache_dir, "order.npy"), orders[-1].astype(np.int32))
    np.save(os.path.join(cache_dir, "lr.npy"), lrs)
    write_yaml(
        os.path.join(cache_dir, "settings.yaml"),
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
):
    """Algorithm 2 from a cache written by :func:`run_training_phase`.

    Returns:
        ``(infl, stats, val_loss)``: infl float64 (N,) in training-row order (negative =
        harmful), the replay's :class:`~sgd_influence_plugin.core.ReplayStats`, and the mean
        validation loss at the final parameters.

    """
    meta = read_yaml(os.path.join(cache_dir, "settings.yaml"))
    order = np.load(os.path.join(cache_dir, "order.npy"))
    lrs = np.load(os.path.join(cache_dir, "lr.npy"))
    if len(order) != len(next(iter(train.values()))):
        raise SettingsError(
            f"{cache_dir}: the cache was made for {len(order)} training samples but the "
            f"training data has {len(next(iter(train.values())))}; run the training phase again"
        )
    model.load_params(os.path.join(cache_dir, "parameters.h5"))
    u = core.validation_gradient(model, val, val_batch_size)
    val_loss = core.mean_loss(model, val, val_batch_size)
    params_at = None
    if meta.get("cache") == "all":

        def params_at(t):
            from .nnabla_adapter import read_params

            return read_params(_step_path(cache_dir, t), model.info.trainable)

    infl, stats = core.replay(
        model,
        train,
        order,
        lrs,
        int(meta["resolved_batch_size"]),
        u,
        weight_decay=float(meta["resolved_weight_decay"]),
        params_at=params_at,
        progress=progress,
    )
    return infl, stats, val_loss


@dataclass
class InfluenceResult:
    """Scores and what it took to get them.

    Attributes:
        scores: float64 (N,), mean over trials, training-CSV row order. ``scores[j]`` estimates
            the change of the mean validation loss if sample j were removed from the replayed
            epoch: negative = harmful (removing it helps), positive = helpful.
        trial_scores: float64 (M, N), one row per trial.
        orders: the replayed epoch's order of each trial, int32 (N,) each.
        cache_bytes: bytes of one trial's cache folder (the largest).
        timings: seconds: ``training``, ``inference``, ``replay``; ``replay_steps``;
            ``seconds_per_replay_step``; and ``u_growth`` (see ``core.ReplayStats``).
        val_loss: mean validation loss at the final parameters (first trial).
        settings: the settings given; ``run``: lr / weight decay / batch size actually used.
        warnings: messages for the user (e.g. the console trained with Adam).

    """

    scores: np.ndarray
    trial_scores: np.ndarray
    orders: List[np.ndarray]
    cache_bytes: int
    timings: Dict[str, float]
    val_loss: float
    settings: InfluenceSettings
    run: ResolvedRun
    warnings: List[str]


def compute_influence(
    model,
    train: Dict[str, np.ndarray],
    val: Dict[str, np.ndarray],
    settings: InfluenceSettings,
    cache_dir: Optional[str] = None,
    progress: Optional[core.Progress] = None,
    log: Optional[Log] = None,
) -> InfluenceResult:
    """Training phase + inference phase, M times; scores averaged.

    Args:
        model: an :class:`~sgd_influence_plugin.nnabla_adapter.NnablaModel` (its trainable
            parameters are restored to their starting values at the end).
        train / val: column -> (N, ...) float32 arrays, e.g. ``Dataset.arrays``.
        settings: see :class:`~sgd_influence_plugin.settings.InfluenceSettings`.
        cache_dir: where the cache goes and stays; None = a temporary folder, removed at the
            end (on success and on error). With M > 1, trial m uses ``cache_dir/trial_mm``.
        progress: optional ``(stage, done, total)`` callback.
        log: optional callback for user-facing messages.

    """
    run = resolve(model, settings)
    log = log or (lambda msg: None)
    for w in run.warnings:
        log("warning: " + w)
    theta0 = model.get_params()
    own_tmp = cache_dir is None
    root = tempfile.mkdtemp(prefix="sgd_influence_cache_") if own_tmp else cache_dir
    trial_scores, orders = [], []
    timings = {"training": 0.0, "inference": 0.0, "replay": 0.0, "replay_steps": 0}
    cache_bytes, val_loss = 0, float("nan")
    try:
        for m in range(settings.trials):
            trial_dir = root if settings.trials == 1 else os.path.join(root, f"trial_{m:02d}")
            model.set_params(theta0)
            t0 = time.perf_counter()
            run_training_phase(model, train, settings, run, trial_dir, settings.seed + m, progress)
            t1 = time.perf_counter()
            infl, stats, vl = run_inference_phase(
                model, train, val, trial_dir, settings.val_batch_size, progress
            )
            timings["training"] += t1 - t0
            timings["inference"] += time.perf_counter() - t1
            timings["replay"] += stats.seconds
            timings["replay_steps"] += stats.steps
            if m == 0:
                val_loss = vl
                timings["u_growth"] = stats.u_growth
                msg = growth_warning(stats.u_growth, run.lr, stats.steps)
                if msg:
                    run.warnings.append(msg)
                    log("warning: " + msg)
            cache_bytes = max(cache_bytes, _dir_bytes(trial_dir))
            trial_scores.append(infl)
            orders.append(np.load(os.path.join(trial_dir, "order.npy")))
            log(f"trial {m + 1}/{settings.trials} done (validation loss {vl:.4f})")
    finally:
        model.set_params(theta0)
        if own_tmp:
            shutil.rmtree(root, ignore_errors=True)
    timings["seconds_per_replay_step"] = timings["replay"] / max(1, timings["replay_steps"])
    trial_scores = np.stack(trial_scores)
    return InfluenceResult(
        scores=trial_scores.mean(axis=0),
        trial_scores=trial_scores,
        orders=orders,
        cache_bytes=cache_bytes,
        timings=timings,
        val_loss=val_loss,
        settings=replace(settings),
        run=run,
        warnings=run.warnings,
    )
