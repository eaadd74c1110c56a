"""What a run's ``STEM_settings.yaml`` records besides the files: what was asked and used, how
the rate was chosen, each trial, the data, timings and versions (:func:`run_facts`).
"""

from __future__ import annotations

import os
import platform

from . import __version__
from .influence import InfluenceResult
from .target import CENTRING_SENTENCE, applied


def run_facts(result: InfluenceResult, settings, info, n_params, train_csv, val_csv) -> dict:
    """What ``settings.yaml`` records: what was asked (``requested``), what was used
    (``used``), how the learning rate was chosen, each trial, timings and versions.
    """
    rates = sorted({o.lr for o in result.trials})
    # The rate the trials ran at: a retried trial runs at a quarter of the chosen rate, and
    # the summary and settings say so (issue 34, case 12); a list when the trials differ.
    used_lr = rates[0] if len(rates) == 1 else [o.lr for o in result.trials]
    chosen = {} if rates == [result.resolved.lr] else {"lr_chosen": result.resolved.lr}
    return {
        "requested": settings.to_dict(),
        "used": {
            "lr": used_lr,
            **chosen,
            "target": applied(settings.target, info),
            "weight_decay": result.resolved.weight_decay,
            "batch_size": result.resolved.batch_size,
            "epochs": settings.epochs,
            "trials": settings.trials,
            "cache": settings.cache,
            "replay_step": result.resolved.replay_step,
            "context": settings.context,
            "seeds": [o.seed for o in result.trials],
        },
        "lr_selection": result.resolved.lr_selection(),
        "trials": [
            {
                "seed": o.seed,
                "lr": o.lr,
                "attempts": o.attempts,
                "u_growth": float(f"{o.u_growth:.4g}"),
                "scale_rms": float(f"{s:.6g}"),
                "validation_loss": round(o.val_loss, 6),
            }
            for o, s in zip(result.trials, result.trial_scales)
        ],
        "model": info.source,
        "label_classes": {str(k): int(v) for k, v in info.label_classes.items()},
        "word_indices": {  # column -> the Embed that reads it, and its dictionary's size
            str(k): {"layer": str(layer), "words": int(n)}
            for k, (layer, n) in getattr(info, "word_indices", {}).items()
        },
        "train_csv": os.path.abspath(train_csv),
        "val_csv": os.path.abspath(val_csv),
        "n_params": n_params,
        "validation_loss": round(result.val_loss, 6),
        "cache_bytes": result.cache_bytes,
        "timings_seconds": {k: round(float(v), 4) for k, v in result.timings.items()},
        "network_changes": list(info.notes),
        "warnings": list(result.warnings),
        "versions": {
            "sgd_influence_plugin": __version__,
            "nnabla": _nnabla_version(),
            "python": platform.python_version(),
        },
        "sign": "influence < 0: removing the sample lowers the validation loss (harmful)"
        + ("; " + CENTRING_SENTENCE if applied(settings.target, info) == "class-centred" else ""),
        "influence": "trials combined: each trial divided by its RMS, averaged, times the "
        "median RMS; units of the mean validation loss",
    }


def _nnabla_version() -> str:
    import nnabla

    return nnabla.__version__
