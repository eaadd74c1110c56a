"""Precision@k of flipped labels on the noisy sample, for several settings and seeds.

Run after ``make demo`` (it needs ``data/`` and ``result/``)::

    .venv/bin/python experiments/measure_precision.py --seeds 0,1,2 \
        --settings "lr=auto,trials=3" "lr=solver,trials=1"

k = the number of flipped labels; chance = their share. Prints one line per (setting, seed)
with the rate used, the u growth, the time, and the same for sorting by training loss.
"""

import argparse
import csv
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from sgd_influence_plugin.dataset import load_dataset  # noqa: E402
from sgd_influence_plugin.influence import compute_influence  # noqa: E402
from sgd_influence_plugin.nnabla_adapter import load_model  # noqa: E402
from sgd_influence_plugin.settings import InfluenceSettings, parse_lr  # noqa: E402


def parse_setting(text):
    """``"lr=auto,trials=3"`` -> InfluenceSettings keywords."""
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        out[key] = parse_lr(value) if key == "lr" else int(value) if value.isdigit() else value
    return out


def precision_at_k(scores, flipped):
    """The flipped share among the k most harmful, k = the number flipped."""
    k = int(flipped.sum())
    return float(flipped[np.argsort(scores, kind="stable")[:k]].mean())


def main():
    """One line per (setting, seed)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--workdir",
        default=os.path.join(ROOT, "samples", "fashion_mnist"),
        help="where make demo wrote data/ and result/ (default: samples/fashion_mnist)",
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--settings", nargs="+", default=["lr=auto"])
    a = p.parse_args()
    data, result = os.path.join(a.workdir, "data"), os.path.join(a.workdir, "result")
    model = load_model(model=os.path.join(result, "results.nnp"))
    train = load_dataset(os.path.join(data, "train.csv"), model.info.input_shapes)
    val = load_dataset(os.path.join(data, "val.csv"), model.info.input_shapes)
    with open(os.path.join(data, "train_noise.csv")) as f:
        flipped = np.array([r["flipped"] == "1" for r in csv.DictReader(f)])
    print(f"N={train.size}, flipped {flipped.sum()} (chance {flipped.mean():.3f})", flush=True)
    for text in a.settings:
        for seed in [int(s) for s in a.seeds.split(",")]:
            settings = InfluenceSettings(seed=seed, **parse_setting(text))
            t0 = time.perf_counter()
            res = compute_influence(model, train.arrays, val.arrays, settings)
            sec = time.perf_counter() - t0
            singles = [precision_at_k(s, flipped) for s in res.trial_scores]
            curv = res.resolved.curvature
            print(
                f"{text:28s} seed {seed}: precision@k {precision_at_k(res.scores, flipped):.3f} "
                f"(trials {', '.join(f'{x:.2f}' for x in singles)}; raw mean "
                f"{precision_at_k(res.trial_scores.mean(0), flipped):.3f}) lr {res.resolved.lr:g} "
                f"u_growth {res.timings['u_growth']:.3g} finite {np.isfinite(res.scores).all()} "
                f"curvature {curv.lambda_max:.3g}/{curv.lambda_min:.3g} "
                f"({res.timings['curvature']:.1f}s) total {sec:.1f}s | by loss "
                f"{precision_at_k(-res.losses, flipped):.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
