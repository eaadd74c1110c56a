"""The one-way check's null on a trained console result: random removals through the check.

For each seed: the validation rows' seeded halves (as a run splits them), and removals of
random training rows of the given sizes checked on the held-out half exactly as the
recommendation's candidates are (:func:`sgd_influence_plugin.heldout_check.check_candidates`:
one settling epoch each, paired per-row loss differences). Random sets carry no signal, so
their z (mean difference over its row standard error) should have sd 1; the settling epoch's
own noise, which the row standard error does not count, shows as sd above 1 and as
``rho = (var z - 1) / n`` on n held-out rows (the form of the widened bar measured with
:mod:`epoch_noise`). Also the z over a class-clustered standard error (each held-out class
one cluster: a shift shared by a class's rows counts once), and with ``--second-order`` each
set checked again in the order of seed + 1 (:func:`.heldout_check.check_again`) and the
correlation of the two orders' z. Prints one line per seed and a JSON summary.

Run: ``.venv/bin/python experiments/check_null.py RESULT.nnp TRAIN.csv VAL.csv
[--seeds 25] [--sizes 100,250,500] [--lr RATE] [--second-order] [--stratified]``
(``--stratified``: random sets that keep the training set's class balance).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sgd_influence_plugin.dataset import load_dataset  # noqa: E402
from sgd_influence_plugin.heldout_check import (  # noqa: E402
    check_again,
    check_candidates,
    check_rate,
    split_validation,  # noqa: E402
)
from sgd_influence_plugin.nnabla_adapter import load_model  # noqa: E402
from sgd_influence_plugin.suspects import Candidate  # noqa: E402


def _stratified(rng, k: int, labels: np.ndarray) -> np.ndarray:
    """``k`` random rows drawn class by class in the training set's proportions (the class
    balance kept), the remainder of the rounding from the largest classes.
    """
    classes, counts = np.unique(labels, return_counts=True)
    take = np.floor(k * counts / counts.sum()).astype(int)
    for j in np.argsort(-counts)[: k - take.sum()]:
        take[j] += 1
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), t, replace=False)
                           for c, t in zip(classes, take)])  # fmt: skip


def _cluster_z(d: np.ndarray, classes: np.ndarray) -> float:
    """The mean of ``d`` over its class-clustered standard error (CR1: each held-out class a
    cluster, so a shift common to a class's rows counts as one draw, not many).
    """
    m, n = float(d.mean()), len(d)
    groups = np.unique(classes)
    sums = np.array([np.sum(d[classes == c] - m) for c in groups])
    g = len(groups)
    return m / math.sqrt(g / (g - 1) * float(np.sum(sums**2)) / n**2)


def main(argv=None) -> int:
    """Check random removals on every seed; print the z values and their spread."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model")
    p.add_argument("train")
    p.add_argument("val")
    p.add_argument("--seeds", type=int, default=25)
    p.add_argument("--sizes", default="100,250,500")
    p.add_argument("--lr", type=float, help="the check epoch's rate (default: the check's own)")
    p.add_argument(
        "--stratified",
        action="store_true",
        help="random sets that keep the training set's class balance",
    )
    p.add_argument(
        "--second-order",
        action="store_true",
        help="check each set again in a second sample order (correlation of the z)",
    )
    a = p.parse_args(argv)
    model = load_model(model=a.model)
    train = load_dataset(a.train, model.info.input_shapes).arrays
    val = load_dataset(a.val, model.info.input_shapes).arrays
    label = next(iter(model.info.label_classes))
    n, sizes = len(train[label]), [int(s) for s in a.sizes.split(",")]
    lr, _ = check_rate(model.info.solver.type, model.info.solver.lr, math.nan)
    lr = a.lr or lr
    zs, z2, zc, held = [], [], [], 0
    labels = np.asarray(train[label]).reshape(-1).astype(np.int64)
    for seed in range(a.seeds):
        _, b = split_validation(len(val[label]), seed)
        held = len(b)
        rng = np.random.RandomState(500 + seed)
        draw = _stratified if a.stratified else (lambda r, k, _: r.choice(n, k, replace=False))
        cands = [
            Candidate(s, "remove", np.sort(draw(rng, s, labels)).astype(np.int64),
                      np.zeros(s, np.int64), order="random")
            for s in sizes
        ]  # fmt: skip
        heldout = {k: v[b] for k, v in val.items()}
        base: list = []
        check_candidates(model, train, heldout, label, cands, lr, 32, 0.0, seed=seed + 10_007,
                         base_out=base)  # fmt: skip
        zs += [c.z for c in cands]
        classes = np.asarray(heldout[label]).reshape(-1).astype(np.int64)
        zc += [_cluster_z(c.heldout_loss - base[0][0], classes) for c in cands]
        if a.second_order:  # each set again in the order of seed + 1, as check_again does
            again = [check_again(model, train, heldout, label, c, lr, 32, 0.0,
                                 seed=seed + 10_007) for c in cands]  # fmt: skip
            z2 += [c.z for c in again]
        print(seed, [round(c.z, 2) for c in cands], [round(z, 2) for z in z2[-len(cands):]],
              flush=True)  # fmt: skip
    z = np.array(zs)
    facts = {
        "model": a.model, "heldout_rows": held, "seeds": a.seeds, "z_values": len(z),
        "mean_z": round(float(z.mean()), 3), "sd_z": round(float(z.std(ddof=1)), 3),
        "rho": round(float((z.var(ddof=1) - 1) / held), 5), "lr": lr,
    }  # fmt: skip
    facts["sd_z_class_clustered"] = round(float(np.std(zc, ddof=1)), 3)
    if z2:
        facts["corr_z_second_order"] = round(float(np.corrcoef(z, z2)[0, 1]), 3)
        facts["sd_z_second_order"] = round(float(np.std(z2, ddof=1)), 3)
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
