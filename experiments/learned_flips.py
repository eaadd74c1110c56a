"""Do signals from outside the run find the wrong labels a model has learned? Issue 35.

    python experiments/learned_flips.py [--work /tmp/lookalike] [--noise confusable,uniform]
                                        [--folds 4] [--epochs 15,30]

Runs on the cases of :mod:`lookalike_study` (run that first with the same ``--work``: it
trains the sample CNN 30 epochs on 3,000 Fashion-MNIST images with 10% flipped labels and runs
the plugin at its defaults). A *learned* flip is a flipped row whose given label the trained
model predicts; the recommendation's suspects exclude them by design (issue 35). Two signals
the run does not have are measured against the flips, and against the learned flips among
the rows the model agrees with:

- **out of fold**: the training rows split in ``--folds`` seeded folds; for each fold the
  same network trained from scratch by ``nnabla_cli train`` on the other folds for
  ``--epochs`` epochs (few epochs: before it fits wrong labels, the "early learning" of Liu
  et al. 2020) predicts the held-out fold. Signals: the out-of-fold probability of the given
  label (lowest first) and "the out-of-fold model predicts another class".
- **neighbours per layer**: the share of a row's round(sqrt(R)) nearest rows (cosine) that
  carry its label, in the input of every learned layer of the trained network and in its
  output, with the clean validation rows or the other training rows as the reference R (the
  plugin uses the validation rows and the input of the last learned layer).

Printed and written to ``--out`` (JSON): precision of each order's first k rows (k = the
flips, and 100), and for "agreement below 0.5" / "the out-of-fold model disagrees" among the
rows the trained model agrees with: how many learned flips and how many clean rows it flags.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from lookalike_study import build  # noqa: E402

from sgd_influence_plugin.neighbours import label_agreement, neighbour_count  # noqa: E402
from support.netdef import NetSpec  # noqa: E402
from support.results import load_trained, train_on  # noqa: E402

NNABLA_CLI = os.path.join(os.path.dirname(sys.executable), "nnabla_cli")


def _write_rows(path: str, head, rows, folder: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(head)
        w.writerows([os.path.join(folder, r[0]), r[1]] for r in rows)


def out_of_fold(data: dict, work: str, folds: int, epochs: int, seed: int) -> np.ndarray:
    """float64 (N, classes): each training row's probabilities from the fold model that did
    not see it (trained ``epochs`` epochs from scratch on the other folds).
    """
    with open(data["train"], newline="") as f:
        table = list(csv.reader(f))
    head, rows = table[0], table[1:]
    folder = os.path.dirname(data["train"])
    fold = np.random.RandomState(7 + seed).permutation(len(rows)) % folds
    prob = None
    for k in range(folds):
        d = os.path.join(work, f"oof_{os.path.basename(data['train'])[:-4]}_e{epochs}_{k}")
        os.makedirs(os.path.join(d, "fwd"), exist_ok=True)
        tr, ho = os.path.join(d, "train.csv"), os.path.join(d, "heldout.csv")
        _write_rows(tr, head, [r for r, f in zip(rows, fold) if f != k], folder)
        _write_rows(ho, head, [r for r, f in zip(rows, fold) if f == k], folder)
        if not os.path.exists(os.path.join(d, "results.nnp")):
            spec = NetSpec(arch="cnn", batch_size=32, lr=0.05, max_epoch=epochs, seed=seed)
            train_on(d, {"train": tr, "val": data["val"], "input_shape": (1, 28, 28)}, spec)
        out = os.path.join(d, "fwd", "output_result.csv")
        if not os.path.exists(out):
            cmd = [NNABLA_CLI, "forward", "-c", os.path.join(d, "results.nnp"), "-d", ho]
            subprocess.run(cmd + ["-o", os.path.dirname(out)], check=True, capture_output=True)
        with open(out, newline="") as f:
            res = list(csv.reader(f))
        cols = [i for i, c in enumerate(res[0]) if c.startswith("y'")]
        p = np.array([[float(r[i]) for i in cols] for r in res[1:]])
        prob = np.zeros((len(rows), p.shape[1])) if prob is None else prob
        prob[fold == k] = p
    return prob


def _agreement_among_training(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Share of each row's nearest other training rows (cosine) that carry its label."""
    f = features.reshape(len(features), -1).astype(np.float32)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    k = neighbour_count(len(f))
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    idx = np.argpartition(-sim, k, axis=1)[:, :k]
    return (labels[idx] == labels[:, None]).mean(1)


def _scores(name, low_first, flipped, agrees, flag=None) -> dict:
    """Precision@k of an order (lowest first) and what ``flag`` finds among agreed rows."""
    k = int(flipped.sum())
    order = np.argsort(low_first, kind="stable")
    flag = low_first < 0.5 if flag is None else flag
    return {
        "signal": name,
        f"p@{k}": round(float(flipped[order[:k]].mean()), 3),
        "p@100": round(float(flipped[order[:100]].mean()), 3),
        "learned_flips_flagged": int((flag & agrees & flipped).sum()),
        "learned_flips": int((agrees & flipped).sum()),
        "clean_agreed_rows_flagged": int((flag & agrees & ~flipped).sum()),
    }


def layer_names(model) -> list:
    """The executor's outputs of every max pooling / hidden ReLU / last Affine, and y'."""
    net = [n for n in model._proto.network if n.name == model.info.runtime_network][0]
    keep = ("MaxPooling", "Affine", "ReLU")
    outs = [f.output[0] for f in net.function if f.type in keep]
    return [o for o in outs if "Convolution" not in o] + [model.info.runtime_output]


def study(work: str, noise: str, folds: int, epochs_list, seed: int) -> dict:
    """Every signal on one label setting."""
    data = build(work, noise, seed)
    flipped = data["flipped"]
    folder = os.path.join(work, f"{noise}_cnn_{seed}")
    model, train, val = load_trained(folder, data)
    names = layer_names(model)
    f_train = model._run_executor(train, 256, names)
    f_val = model._run_executor(val, 256, names)
    y_train = train["y"].ravel().astype(int)
    y_val = val["y"].ravel().astype(int)
    agrees = f_train[-1].argmax(1) == y_train
    res = {"noise": noise, "flips": int(flipped.sum()), "model_agrees_with": int(agrees.sum())}
    rows = [
        _scores(
            "pixels, validation rows",
            label_agreement(train["x"], y_train, val["x"], y_val),
            flipped,
            agrees,
        ),  # fmt: skip
        _scores(
            "pixels, training rows", _agreement_among_training(train["x"], y_train), flipped, agrees
        ),  # fmt: skip
    ]
    for name, a, b in zip(names, f_train, f_val):
        by_val = label_agreement(a, y_train, b, y_val)
        rows.append(_scores(f"{name}, validation rows", by_val, flipped, agrees))
        by_train = _agreement_among_training(a, y_train)
        rows.append(_scores(f"{name}, training rows", by_train, flipped, agrees))
    for epochs in epochs_list:
        prob = out_of_fold(data, work, folds, epochs, seed)
        p_given = prob[np.arange(len(y_train)), y_train]
        disagree = prob.argmax(1) != y_train
        row = _scores(f"out of fold, {folds} folds, {epochs} epochs", p_given, flipped, agrees,
                      flag=disagree)  # fmt: skip
        row["out_of_fold_accuracy_on_clean_rows"] = round(
            float((prob.argmax(1) == y_train)[~flipped].mean()), 3
        )
        rows.append(row)
    res["signals"] = rows
    for r in rows:
        print(noise, json.dumps(r), flush=True)
    return res


def main(argv=None) -> int:
    """Run the settings given; write their results as one JSON list."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/tmp/lookalike")
    p.add_argument("--noise", default="confusable,uniform")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--epochs", default="15,30")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(HERE, "results", "learned_flips.json"))
    a = p.parse_args(argv)
    epochs = [int(e) for e in a.epochs.split(",")]
    results = [study(a.work, n, a.folds, epochs, a.seed) for n in a.noise.split(",")]
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
