"""Does the one-way check's verdict predict retraining from scratch? (issue 35, item 1; the
second sample order of ``docs/recommendation.md``).

For each case of :mod:`epoch_noise` (the generated-patterns set: 600 Fashion-MNIST training
images at 14x14, ``--rate`` of their labels flipped, an MLP trained 15 epochs by
``nnabla_cli``; the validation rows a seeded subset), the plugin runs at its defaults with
the check spied on: the change the one-order rule chose (:func:`.recommendation.choose`) and
the same change in the second sample order (:func:`.heldout_check.check_again`). When the
one-order rule chose a change, the network is trained again from scratch by ``nnabla_cli``,
with ``--inits`` initial seeds, on the training CSV as given and without the chosen rows, and
both are measured on Fashion-MNIST's test images (the first ``--test`` of them, 14x14):
paired differences, change minus as given, in test accuracy (points) and test loss.

Writes ``OUT/check_vs_retraining_r<rate>.csv``, one row per run that chose a change, as it
goes; ``--summarize A.csv,B.csv`` prints the table of ``docs/recommendation.md``.

Run: ``.venv/bin/python experiments/check_vs_retraining.py --rate 0.1 --seeds 0-29
--sizes 200,300,600``.
"""

from __future__ import annotations

import csv
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import false_changes as fc  # noqa: E402
import small_validation as sv  # noqa: E402

from sgd_influence_plugin import recommend, recommendation  # noqa: E402

FIELDS = ("rate", "seed", "val_rows", "rows", "flips", "z", "z_rep", "bar", "one_order",
          "both_orders", "inits", "d_acc", "d_loss", "d_acc_each", "d_loss_each",
          "d_acc_oracle", "d_loss_oracle")  # fmt: skip


def install(state: dict) -> None:
    """Spy on :func:`.recommendation.build`: the one-order choice and its second order."""
    real = recommend.build

    def build(suspects, checked, n_heldout, check, again=None):
        state["chosen"] = recommendation.choose(checked)
        state["again"], state["n"] = again, len(checked)
        return real(suspects, checked, n_heldout, check, again)

    recommend.build = build


def test_set(work: str, n: int) -> str:
    """Fashion-MNIST's first ``n`` test images at 14x14 as a console CSV (written once)."""
    from PIL import Image

    from support.fashion_mnist import load_split, write_png_dataset

    folder = os.path.join(work, f"test14_{n}")
    path = os.path.join(folder, "test.csv")
    if not os.path.exists(path):
        images, labels = load_split("test")
        small = np.stack([np.asarray(Image.fromarray(im).resize((14, 14), Image.BILINEAR))
                          for im in images[:n]])  # fmt: skip
        write_png_dataset(small, labels[:n], folder, "test.csv", "test")
    return path


def retrained(folder: str, case: dict, drop, init: int, test_csv: str):
    """(test accuracy, test loss) of the case's network trained from scratch by ``nnabla_cli``
    (:func:`.nnabla_adapter.training.train_from_scratch`, as ``evaluate --retrain scratch``)
    on its training CSV without the rows ``drop`` (None: as given), from an initialisation
    drawn with ``init`` and the rows shuffled by it; cached in ``folder``.
    """
    from sgd_influence_plugin.dataset import load_dataset, read_csv_table
    from sgd_influence_plugin.evaluate import accuracy_and_loss
    from sgd_influence_plugin.nnabla_adapter import load_model
    from sgd_influence_plugin.nnabla_adapter.training import initial_parameters, train_from_scratch

    done = os.path.join(folder, "measured.txt")
    if not os.path.exists(done):
        os.makedirs(folder, exist_ok=True)
        config = open(os.path.join(os.path.dirname(case["model"]), "net.nntxt")).read()
        header, rows = read_csv_table(case["train"])
        keep = np.ones(len(rows), bool)
        if drop is not None:
            keep[np.asarray(drop, np.int64)] = False
        init_h5 = initial_parameters(config, init, os.path.join(folder, "init.h5"))
        nnp = train_from_scratch(config, case["train"], case["val"], header, rows, keep, init,
                                 os.path.join(folder, "train"), init_h5)  # fmt: skip
        model = load_model(model=nnp)
        acc, loss = accuracy_and_loss(model, load_dataset(test_csv, model.info.input_shapes))
        with open(done, "w") as f:
            f.write(f"{acc!r} {loss!r}\n")
    acc, loss = (float(x) for x in open(done).read().split())
    return acc, loss


def one_run(state, case, seed, size, rate, inits, test_csv, work) -> dict:
    """The plugin on ``size`` validation rows; when it chose a change, the retrainings."""
    val_csv = sv.subset_csv(case["val"], size, seed)
    out = os.path.join(os.path.dirname(case["model"]), f"cr{size}", "influence.csv")
    state.update(chosen=None, again=None, n=0)
    row = sv.run_one(case, val_csv, out, [])
    chosen, again = state["chosen"], state["again"]
    if chosen is None:
        return {}
    bar = recommendation.z_required(state["n"])
    line = {"rate": rate, "seed": seed, "val_rows": row["val_rows"], "rows": len(chosen.rows),
            "flips": int(case["flipped"][chosen.rows].sum()), "z": chosen.z,
            "z_rep": again.z, "bar": bar, "one_order": 1,
            "both_orders": int(again.passes(bar)), "inits": len(inits)}  # fmt: skip
    base_dir = os.path.dirname(os.path.dirname(case["model"]))
    acc, loss, oracle = [], [], []
    flips = np.flatnonzero(case["flipped"])
    for init in inits:
        a0, l0 = retrained(os.path.join(base_dir, f"scratch_given_i{init}"), case, None, init,
                           test_csv)  # fmt: skip
        a1, l1 = retrained(os.path.join(base_dir, f"scratch_v{size}_i{init}"), case,
                           chosen.rows, init, test_csv)  # fmt: skip
        acc.append(100 * (a1 - a0))
        loss.append(l1 - l0)
        if len(flips):  # the oracle: every flipped row removed, nothing else
            a2, l2 = retrained(os.path.join(base_dir, f"scratch_oracle_i{init}"), case, flips,
                               init, test_csv)  # fmt: skip
            oracle.append((100 * (a2 - a0), l2 - l0))
    line.update(d_acc=float(np.mean(acc)), d_loss=float(np.mean(loss)),
                d_acc_each=" ".join(f"{x:+.2f}" for x in acc),
                d_loss_each=" ".join(f"{x:+.4f}" for x in loss))  # fmt: skip
    if oracle:
        line.update(d_acc_oracle=float(np.mean([o[0] for o in oracle])),
                    d_loss_oracle=float(np.mean([o[1] for o in oracle])))  # fmt: skip
    return line


def summarize(paths: list) -> str:
    """Markdown: per label setting and verdict (one order only / both orders), the runs, the
    flipped share of their rows, and the mean paired change retrained from scratch.
    """
    rows = [r for p in paths for r in csv.DictReader(open(p, newline=""))]
    out = [
        "| labels | verdict | runs | rows changed (flipped share) | test accuracy change, "
        "points (runs up / down) | test loss change (runs lower) | every flipped row "
        "removed instead: accuracy / loss |",
        "|---" * 7 + "|",
    ]
    for rate in sorted({r["rate"] for r in rows}, key=float):
        for name, keep in (("passes in both orders", "1"), ("passes in one order only", "0")):
            g = [r for r in rows if r["rate"] == rate and r["both_orders"] == keep]
            if not g:
                continue
            n_rows = sum(int(r["rows"]) for r in g)
            share = sum(int(r["flips"]) for r in g) / n_rows
            acc = np.array([float(r["d_acc"]) for r in g])
            loss = np.array([float(r["d_loss"]) for r in g])
            sd = f" ± {acc.std(ddof=1):.2f}" if len(g) > 1 else ""
            label = "clean" if float(rate) == 0 else f"{float(rate):.0%} flipped"
            ora = [r for r in g if r.get("d_acc_oracle")]
            oracle = (f"{np.mean([float(r['d_acc_oracle']) for r in ora]):+.2f} / "
                      f"{np.mean([float(r['d_loss_oracle']) for r in ora]):+.4f}"
                      if ora else "-")  # fmt: skip
            out.append(f"| {label} | {name} | {len(g)} | {n_rows} ({share:.2f}) | "
                       f"{acc.mean():+.2f}{sd} ({int((acc > 0).sum())} / "
                       f"{int((acc < 0).sum())}) | {loss.mean():+.4f} "
                       f"({int((loss < 0).sum())} of {len(g)}) | {oracle} |")  # fmt: skip
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    """Every seed and size; the CSV written as it goes."""
    ap = fc.run_arguments(__doc__, "0-29", "200,300,600", 600)
    ap.add_argument("--inits", default="3,4,5", help="initial seeds of the retrainings")
    ap.add_argument("--test", type=int, default=2000, help="test images")
    ap.add_argument("--only", default=None, help="seed:size pairs to run, e.g. 10:600,14:600")
    args, work = fc.parse(ap, argv, summarize, os.path.join(HERE, "results", "epoch_noise"))
    if args is None:
        return 0
    state: dict = {}
    install(state)
    inits = [int(s) for s in args.inits.split(",")]
    test_csv = test_set(work, args.test)
    pairs = (
        [tuple(int(x) for x in p.split(":")) for p in args.only.split(",")]
        if args.only
        else [(s, int(v)) for s in fc._seeds(args.seeds) for v in args.sizes.split(",")]
    )
    path = os.path.join(args.out, f"check_vs_retraining_r{args.rate:g}.csv")
    with fc.appending_rows(path, FIELDS) as add:
        for seed, size in pairs:
            case = fc.build(work, "patterns", seed, args.n_val, args.rate)
            line = one_run(state, case, seed, size, args.rate, inits, test_csv, work)
            if line:
                add(line)
                print(seed, size, line["rows"], line["flips"], f"{line['z']:.2f}",
                      f"{line['z_rep']:.2f}", f"{line['d_acc']:+.2f}", flush=True)  # fmt: skip
            else:
                print(seed, size, "no change chosen", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
