"""Which signals find the wrong labels a model has learned? Issue 35's study.

    python experiments/lookalike_study.py [--work /tmp/lookalike] [--noise confusable,uniform,clean]
                                          [--arch cnn] [--epochs 30] [--seed 0]

For each label setting: 3,000 Fashion-MNIST training images (10% of the labels moved to the
class's look-alike, ``support.fashion_mnist.CONFUSABLE``, or to a random other class, or
none) and 1,000 clean validation images; the network trained from scratch by ``nnabla_cli
train``; the plugin run at its defaults (``runner.run``). Printed, against the true flips:
the recommendation's changed rows (precision, recall) and, for each signal, the precision of
its top k rows (k = the number of flips): training loss, influence, the model disagreeing
and harmful, the neighbours disagreeing and harmful. Results go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from sgd_influence_plugin.runner import RunRequest, run  # noqa: E402
from sgd_influence_plugin.settings import InfluenceSettings  # noqa: E402
from support import fashion_mnist  # noqa: E402
from support.fashion_mnist import SplitSizes  # noqa: E402
from support.netdef import NetSpec  # noqa: E402
from support.results import train_on  # noqa: E402


def build(work: str, noise: str, seed: int) -> dict:
    """The dataset of one label setting; ``flipped``: bool (N,)."""
    folder = os.path.join(work, f"data_{seed}")
    if not os.path.exists(os.path.join(folder, "val.csv")):
        fashion_mnist.build_splits(folder, SplitSizes(train=3000, val=1000, test=1000), seed=seed)
    with open(os.path.join(folder, "train.csv"), newline="") as f:
        table = list(csv.reader(f))
    labels = np.array([int(r[1]) for r in table[1:]])
    if noise == "confusable":
        noisy = fashion_mnist.flip_to_confusable(labels, 0.1, 1000 + seed)
    elif noise == "uniform":
        noisy = fashion_mnist.flip_labels(labels, 0.1, 10, 1000 + seed)
    else:
        noisy = labels.copy()
    path = os.path.join(folder, f"train_{noise}.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(table[0])
        w.writerows([r[0], int(y)] for r, y in zip(table[1:], noisy))
    return {
        "train": path,
        "val": os.path.join(folder, "val.csv"),
        "input_shape": (1, 28, 28),
        "flipped": noisy != labels,
        "clean": labels,
    }


def precision_at(order: np.ndarray, flipped: np.ndarray, k: int) -> float:
    """Share of flipped rows among the first ``k`` of ``order``."""
    return float(flipped[order[:k]].mean()) if k else float("nan")


def _rank(values: np.ndarray) -> np.ndarray:
    """How many values are smaller (ties share a rank)."""
    return np.searchsorted(np.sort(values), values)


def study(work: str, noise: str, arch: str, epochs: int, seed: int) -> dict:
    """One label setting: train, run the plugin at its defaults, score the signals."""
    data = build(work, noise, seed)
    folder = os.path.join(work, f"{noise}_{arch}_{seed}")
    if not os.path.exists(os.path.join(folder, "results.nnp")):
        spec = NetSpec(arch=arch, batch_size=32, lr=0.05, max_epoch=epochs, seed=seed)
        train_on(folder, data, spec)
    out_csv = os.path.join(folder, "run", "influence.csv")
    request = RunRequest(
        output=out_csv,
        model=os.path.join(folder, "results.nnp"),
        train=data["train"],
        val=data["val"],
        settings=InfluenceSettings(),
    )
    run(request)
    with open(out_csv, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["datasource_index"]))
    flipped = data["flipped"]
    score = np.array([float(r["influence"]) for r in rows])
    given = np.array([int(r["y:label"]) for r in rows])
    model = np.array([int(r["suggested_label"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    agree = np.array([float(r["neighbour_agreement"] or "nan") for r in rows])
    changed = np.array([r["action"] != "keep" for r in rows])
    k = int(flipped.sum()) or 100
    res = {
        "noise": noise,
        "arch": arch,
        "epochs": epochs,
        "seed": seed,
        "flips": int(flipped.sum()),
        "changed": int(changed.sum()),
        "precision": float(flipped[changed].mean()) if changed.any() else None,
        "recall": float(changed[flipped].mean()) if flipped.any() else None,
        "model_agrees_with_flip": float((model[flipped] == given[flipped]).mean())
        if flipped.any()
        else None,
        "model_says_true_class": float((model[flipped] == data["clean"][flipped]).mean())
        if flipped.any()
        else None,
    }
    signals = {
        "loss": np.argsort(-loss, kind="stable"),
        "influence": np.argsort(score, kind="stable"),
        "loss+influence": np.argsort(_rank(-loss) + _rank(score), kind="stable"),
        "influence+agreement": np.argsort(_rank(score) + _rank(agree), kind="stable"),
        "loss+influence+agreement": np.argsort(
            _rank(-loss) + _rank(score) + _rank(agree), kind="stable"
        ),
        "low_agreement": np.argsort(agree, kind="stable"),
        "disagree_then_influence": np.lexsort((score, model == given)),
        "harmful_low_agreement": np.lexsort((score, agree >= 0.5)),
    }
    for name, order in signals.items():
        res[f"p@k_{name}"] = precision_at(order, flipped, k)
        res[f"p@100_{name}"] = precision_at(order, flipped, 100)
        res[f"p@200_{name}"] = precision_at(order, flipped, 200)
    sel = (score < 0) & (agree < 0.5) & (model == given)
    res["agree_but_neighbours_disagree"] = int(sel.sum())
    res["agree_but_neighbours_disagree_precision"] = (
        float(flipped[sel].mean()) if sel.any() else None
    )
    sel2 = (score < 0) & (agree < 0.5)
    res["harmful_neighbours_disagree"] = int(sel2.sum())
    res["harmful_neighbours_disagree_precision"] = (
        float(flipped[sel2].mean()) if sel2.any() else None
    )
    res["harmful_neighbours_disagree_recall"] = (
        float(sel2[flipped].mean()) if flipped.any() else None
    )
    print(json.dumps(res, indent=1), flush=True)
    return res


def main(argv=None) -> int:
    """Run the settings given; write their results as one JSON list."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/tmp/lookalike")
    p.add_argument("--noise", default="confusable,uniform,clean")
    p.add_argument("--arch", default="cnn")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "lookalike.json"))
    a = p.parse_args(argv)
    results = [study(a.work, n, a.arch, a.epochs, a.seed) for n in a.noise.split(",")]
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
