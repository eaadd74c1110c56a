"""The experiments behind the recommendation rule (keep / relabel / remove), on small cases.

    python experiments/recommendation_study.py collect --arch cnn --noise uniform --seed 0
    python experiments/recommendation_study.py grid --arch cnn --noise uniform --seed 0

``collect`` builds one case: ``--train`` training and ``--val`` validation images split from
Fashion-MNIST's training file by the seed, ``--test`` test images, label noise of kind
``--noise`` (``clean``, ``uniform``: a random other class; ``confusable``: the class's
look-alike, see ``support.fashion_mnist.CONFUSABLE``) at ``--rate``; trains ``--arch`` from a
seeded initialisation with ``nnabla_cli train`` (plain SGD, ``--lr``, ``--epochs``), then
scores the training rows with the plugin at its defaults and saves every signal the rule may
use (``signals.npz``: labels, true labels, predicted probabilities of training and validation
rows, losses, per-trial scores). ``grid`` runs the recommendation's check
(:func:`sgd_influence_plugin.recommend.check_candidates`) on the second half of the validation
rows, prints every candidate with its precision and recall against the true flips, and writes
them with the rule's choice to ``grid.json``.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from paper_protocol import write_rows  # noqa: E402

from sgd_influence_plugin import evaluate as ev  # noqa: E402
from sgd_influence_plugin.dataset import read_csv_table  # noqa: E402
from sgd_influence_plugin.nnabla_adapter.training import (  # noqa: E402
    initial_parameters,
    train_from_scratch,
)
from support import fashion_mnist  # noqa: E402
from support.netdef import NetSpec, write_nntxt  # noqa: E402

#: Added to the seed for the label noise (see :func:`collect`).
NOISE_SEED_OFFSET = 1000


def parse_args(argv=None):
    """The command (collect or grid) and the case's options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("command", choices=("collect", "grid"))
    p.add_argument("--work", default="/work/study", help="working folder")
    p.add_argument("--pool", default=os.path.join(HERE, "protocol_work", "pool"))
    p.add_argument("--arch", default="cnn")
    p.add_argument("--noise", default="uniform", choices=("clean", "uniform", "confusable"))
    p.add_argument("--rate", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=10000)
    p.add_argument("--val", type=int, default=2000)
    p.add_argument("--test", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.05)
    return p.parse_args(argv)


def case_dir(a):
    """The case's work folder: architecture, noise and seed."""
    return os.path.join(a.work, f"{a.arch}_{a.noise}_{a.seed}")


def collect(a):
    """Build one case, train it, score it, and save every signal to ``signals.npz``."""
    from sgd_influence_plugin.dataset import load_dataset
    from sgd_influence_plugin.influence import compute_influence
    from sgd_influence_plugin.nnabla_adapter import load_model
    from sgd_influence_plugin.settings import InfluenceSettings

    out = case_dir(a)
    os.makedirs(out, exist_ok=True)
    _, train_rows = read_csv_table(os.path.join(a.pool, "train.csv"))
    _, test_rows = read_csv_table(os.path.join(a.pool, "test.csv"))
    rng = np.random.RandomState(a.seed)
    perm = rng.permutation(len(train_rows))
    tr, va = perm[: a.train], perm[a.train : a.train + a.val]
    te = np.random.RandomState(a.seed).permutation(len(test_rows))[: a.test]
    labels = np.array([int(train_rows[i][1]) for i in tr])
    # The noise has its own seed: with the run's seed, RandomState(seed).choice would pick
    # exactly the first rows of the plugin's first epoch order (RandomState(seed).permutation).
    noise_seed = NOISE_SEED_OFFSET + a.seed
    if a.noise == "uniform":
        noisy = fashion_mnist.flip_labels(labels, a.rate, 10, noise_seed)
    elif a.noise == "confusable":
        noisy = fashion_mnist.flip_to_confusable(labels, a.rate, noise_seed)
    else:
        noisy = labels.copy()

    def absolute(row):
        return os.path.join(a.pool, row[0])

    header = ["x:image", "y:label"]
    paths = {k: os.path.join(out, f"{k}.csv") for k in ("train", "val", "val_cli", "test")}
    write_rows(paths["train"], header, [[absolute(train_rows[i]), y] for i, y in zip(tr, noisy)])
    write_rows(paths["val"], header, [[absolute(train_rows[i]), train_rows[i][1]] for i in va])
    write_rows(
        paths["val_cli"], header, [[absolute(train_rows[i]), train_rows[i][1]] for i in va[:64]]
    )
    write_rows(paths["test"], header, [[absolute(test_rows[i]), test_rows[i][1]] for i in te])
    net = os.path.join(out, "net.nntxt")
    write_nntxt(
        NetSpec(
            arch=a.arch,
            train_csv=paths["train"],
            val_csv=paths["val"],
            lr=a.lr,
            max_epoch=a.epochs,
            iter_per_epoch=a.train // 32,
        ),
        net,
    )
    with open(net) as f:
        config = f.read()
    init = initial_parameters(config, a.seed, os.path.join(out, "init.h5"))
    header, rows = read_csv_table(paths["train"])
    t = time.perf_counter()
    nnp = train_from_scratch(
        config, paths["train"], paths["val_cli"], header, rows, np.arange(len(rows)), a.seed,
        os.path.join(out, "base"), init,
    )  # fmt: skip
    train_seconds = time.perf_counter() - t
    model = load_model(model=nnp)
    shapes = model.info.input_shapes
    train = load_dataset(paths["train"], shapes)
    val = load_dataset(paths["val"], shapes)
    test = load_dataset(paths["test"], shapes)
    t = time.perf_counter()
    res = compute_influence(model, train.arrays, val.arrays, InfluenceSettings(seed=a.seed))
    infl_seconds = time.perf_counter() - t
    acc, loss = ev.accuracy_and_loss(model, test)
    np.savez(
        os.path.join(out, "signals.npz"),
        labels=noisy,
        true_labels=labels,
        train_prob=model.predict(train.arrays).reshape(len(noisy), -1),
        val_prob=model.predict(val.arrays).reshape(a.val, -1),
        val_labels=np.array([int(train_rows[i][1]) for i in va]),
        losses=res.losses,
        scores=res.scores,
        trial_scores=res.trial_scores,
    )
    with open(os.path.join(out, "case.json"), "w") as f:
        json.dump(
            {
                "args": vars(a),
                "test_accuracy": acc,
                "test_loss": loss,
                "train_seconds": train_seconds,
                "influence_seconds": infl_seconds,
                "lr": res.resolved.lr,
            },
            f,
            indent=1,
        )
    print(
        f"{out}: test accuracy {acc:.4f}, trained in {train_seconds:.0f} s, scored in "
        f"{infl_seconds:.0f} s"
    )


def grid(a):
    """Run the recommendation's check on a collected case; print every candidate."""
    from sgd_influence_plugin import recommend as rc
    from sgd_influence_plugin import recommendation as rn
    from sgd_influence_plugin.dataset import load_dataset
    from sgd_influence_plugin.nnabla_adapter import load_model

    out = case_dir(a)
    s = np.load(os.path.join(out, "signals.npz"))
    model = load_model(model=os.path.join(out, "base", "results.nnp"))
    shapes = model.info.input_shapes
    train = load_dataset(os.path.join(out, "train.csv"), shapes).arrays
    val = load_dataset(os.path.join(out, "val.csv"), shapes).arrays
    half = {k: v[len(v) // 2 :] for k, v in val.items()}
    sus = rc.find_suspects(s["labels"], s["train_prob"], s["trial_scores"])
    cands = rc.candidates(sus)
    t = time.perf_counter()
    rc.check_candidates(
        model, train, half, next(iter(model.info.label_classes)), cands,
        model.info.solver.lr, model.info.solver.batch_size, seed=a.seed + 10_007,
        predict=model.predict,
    )  # fmt: skip
    flipped = s["labels"] != s["true_labels"]
    rec = rn.build(sus, cands, len(half["x"]), {})
    chosen = rec.chosen
    summary = {
        "case": os.path.basename(out),
        "reason": rec.reason,
        "z_required": rn.z_required(len(cands)),
        "chosen": None
        if chosen is None
        else {
            "action": chosen.action,
            "level": chosen.level,
            "order": chosen.order,
            "rows": int(len(chosen.rows)),
            "precision": float(flipped[chosen.rows].mean()),
            "recall": float(flipped[chosen.rows].sum() / max(1, flipped.sum())),
        },
        "candidates": [
            {
                **c.to_dict(rn.z_required(len(cands))),
                "precision": float(flipped[c.rows].mean()),
                "recall": float(flipped[c.rows].sum() / max(1, flipped.sum())),
            }
            for c in cands
        ],
    }
    with open(os.path.join(out, "grid.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"{out}: {len(cands) + 1} epochs in {time.perf_counter() - t:.0f} s; {rec.reason}")
    bar = rn.z_required(len(cands))
    for c in cands:
        prec = flipped[c.rows].mean()
        rec_ = flipped[c.rows].sum() / max(1, flipped.sum())
        fixed = (c.new_labels == s["true_labels"][c.rows]).mean()
        print(
            f"  <{c.level:<4g} {c.order:11s} {c.action:7s} n={len(c.rows):5d} "
            f"P={prec:.3f} R={rec_:.3f} "
            f"relabel-right={fixed:.3f} dloss={c.loss_change:+.4f} z={c.z:+6.1f} "
            f"dacc={c.accuracy_change:+.4f} {'PASS' if c.passes(bar) else ''}",
            flush=True,
        )


if __name__ == "__main__":
    args = parse_args()
    {"collect": collect, "grid": grid}[args.command](args)
