"""Which wrong labels cost accuracy when the network is trained again from scratch? Issue 35.

    python experiments/where_the_gain_is.py [--work /tmp/lookalike] [--noise confusable]
                                            [--inits 0,1,2,3] [--threshold 0.5]

On a case of :mod:`lookalike_study` (run it first with the same ``--work``: 3,000
Fashion-MNIST images, 10% flipped labels, the sample CNN trained 30 epochs by ``nnabla_cli``,
the plugin at its defaults), the network is trained again from scratch by ``nnabla_cli``
(:func:`check_vs_retraining.retrained`, as ``evaluate --retrain scratch``), once
per initialisation in ``--inits``, on the training CSV without each of these sets of rows:

- ``none``: nothing removed;
- ``all flips``: every flipped row (the removal oracle);
- ``refused flips``: the flipped rows whose given label the trained model does not predict;
- ``learned flips``: the flipped rows whose given label it predicts (issue 35's "learned");
- ``recommended``: the rows the plugin's recommendation removes;
- ``agreed, harmful, unlike neighbours``: rows the model agrees with, whose influence is
  harmful and whose neighbours' agreement is below ``--threshold``, plus the recommendation's
  rows (a candidate for learned flips that does not need the model to disagree);
- ``random``: as many random rows as the previous set.

Each model is measured on the case's 1,000 test images. Printed and written to ``--out``
(JSON): per set, rows, flipped rows, and per initialisation the test accuracy and loss, with
the paired mean difference against ``none``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from check_vs_retraining import retrained  # noqa: E402
from lookalike_study import build  # noqa: E402


def removal_sets(run_csv: str, flipped: np.ndarray, threshold: float, seed: int) -> dict:
    """Name -> row indices (see the module docstring), from the plugin's influence CSV."""
    with open(run_csv, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["datasource_index"]))
    given = np.array([int(r["y:label"]) for r in rows])
    agrees = np.array([int(r["suggested_label"]) for r in rows]) == given
    infl = np.array([float(r["influence"]) for r in rows])
    agreement = np.array([float(r["neighbour_agreement"] or "nan") for r in rows])
    removed = np.array([r["action"] == "remove" for r in rows])
    unlike = agrees & (infl < 0) & (agreement < threshold)
    sets = {
        "none": np.array([], np.int64),
        "all flips": np.flatnonzero(flipped),
        "refused flips": np.flatnonzero(flipped & ~agrees),
        "learned flips": np.flatnonzero(flipped & agrees),
        "recommended": np.flatnonzero(removed),
        "agreed, harmful, unlike neighbours": np.flatnonzero(removed | unlike),
    }
    n = len(sets["agreed, harmful, unlike neighbours"])
    sets["random"] = np.sort(np.random.RandomState(seed + 99).permutation(len(rows))[:n])
    return sets


def main(argv=None) -> int:
    """Retrain every set with every initialisation; print and write the results."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/tmp/lookalike")
    p.add_argument("--noise", default="confusable")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inits", default="0,1,2,3")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--out", default=os.path.join(HERE, "results", "where_the_gain_is.json"))
    a = p.parse_args(argv)
    data = build(a.work, a.noise, a.seed)
    case = os.path.join(a.work, f"{a.noise}_cnn_{a.seed}")
    trained = {"model": os.path.join(case, "results.nnp"), "train": data["train"],
               "val": data["val"]}  # fmt: skip
    test_csv = os.path.join(a.work, f"data_{a.seed}", "test.csv")
    sets = removal_sets(os.path.join(case, "run", "influence.csv"), data["flipped"],
                        a.threshold, a.seed)  # fmt: skip
    inits = [int(i) for i in a.inits.split(",")]
    out = {"noise": a.noise, "seed": a.seed, "inits": inits, "sets": {}}
    for name, drop in sets.items():
        res = []
        slug = name.replace(", ", "_").replace(" ", "_")
        for init in inits:
            folder = os.path.join(a.work, "gain", a.noise, slug, f"init{init}")
            res.append(retrained(folder, trained, drop, init, test_csv))
        out["sets"][name] = {
            "rows": int(len(drop)),
            "flips": int(data["flipped"][drop].sum()),
            "accuracy": [r[0] for r in res],
            "loss": [r[1] for r in res],
        }
        base = out["sets"]["none"]
        d_acc = 100 * (np.array(out["sets"][name]["accuracy"]) - base["accuracy"])
        d_loss = np.array(out["sets"][name]["loss"]) - base["loss"]
        out["sets"][name]["d_accuracy_points"] = round(float(d_acc.mean()), 2)
        out["sets"][name]["d_loss"] = round(float(d_loss.mean()), 4)
        out["sets"][name]["loss_lower_on"] = int((d_loss < 0).sum())
        print(name, json.dumps(out["sets"][name]), flush=True)
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
