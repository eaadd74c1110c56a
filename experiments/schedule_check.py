"""The check's rate after a schedule that ends near 0 (a noticed gap of the schedule work).

The check's epoch starts at the console's final rate. A Cosine schedule over the whole
training ends at about 0, so the check barely moves the model and cannot pass any change:
results trained with it never get a recommendation. This measures, on the test suite's
generated-patterns cases (600 training rows at 14x14, ``--rate`` of their labels flipped, the
MLP trained 15 epochs by ``nnabla_cli train`` at SGD 0.1 with a Cosine schedule over all its
iterations; 600 validation rows), what the check decides at

- ``final``: the console's final rate (today's rule);
- ``curvature``: ``1 / lambda_max`` of the measured mini-batch Hessians, at most the base
  rate (the rule for adaptive solvers, whose rate is no SGD step);

and, when a rule changes rows, what retraining from scratch (``nnabla_cli``, the same Cosine
schedule, ``--inits`` initialisations) on the changed CSV does to test accuracy and loss on
2,000 test images, against the data as given and against removing every flipped row.

Writes ``OUT/schedule_check_r<rate>.csv`` as it goes; ``--summarize A.csv,B.csv`` prints the
table of ``docs/recommendation.md``.

Run: ``.venv/bin/python experiments/schedule_check.py --rate 0.1 --seeds 0-9``.
"""

from __future__ import annotations

import csv
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import check_vs_retraining as cvr  # noqa: E402
import false_changes as fc  # noqa: E402
import small_validation as sv  # noqa: E402

from sgd_influence_plugin import pooled_check, recommend  # noqa: E402

RULES = ("final", "curvature")
FIELDS = ("rate", "seed", "rule", "check_lr", "changed", "flips", "precision", "recall",
          "best_z", "inits", "d_acc", "d_loss", "d_acc_oracle", "d_loss_oracle")  # fmt: skip


def build(work: str, seed: int, rate: float) -> dict:
    """The case: data, flipped labels, and the MLP trained with a Cosine schedule."""
    from support.fashion_mnist import make_png_dataset, write_noisy_train
    from support.netdef import NetSpec, write_nntxt
    from support.results import fix_random_seeds, train_nntxt
    from support.schedules import set_schedule

    folder = os.path.join(work, f"cosine_s{seed}_r{rate:g}")
    data = make_png_dataset(os.path.join(folder, "data"), 600, 600, size=14, seed=seed)
    noisy_csv, flipped = write_noisy_train(data, rate, 1000 + seed)
    data = dict(data, train=noisy_csv)
    result = os.path.join(folder, "result")
    if not os.path.exists(os.path.join(result, "results.nnp")):
        spec = NetSpec(arch="mlp", batch_size=32, lr=0.1, max_epoch=15, seed=3)
        spec.train_csv, spec.val_csv, spec.input_shape = data["train"], data["val"], (1, 14, 14)
        spec.iter_per_epoch = 600 // 32
        os.makedirs(result, exist_ok=True)
        nntxt = write_nntxt(spec, os.path.join(result, "net.nntxt"))
        fix_random_seeds(nntxt, 313 + spec.seed)
        iters = spec.max_epoch * spec.iter_per_epoch
        set_schedule(nntxt, {"solver.lr_scheduler_type": "Cosine",
                             "cosine_scheduler_param.max_iter": iters})  # fmt: skip
        train_nntxt(result, nntxt)
    return {**data, "model": os.path.join(result, "results.nnp"), "flipped": flipped}


def use_rule(rule: str, seen: dict) -> None:
    """Make the check's rate follow ``rule`` (see the module docstring); ``seen['lr']`` gets
    the rate the check used.
    """
    real = getattr(recommend, "_real_rate", recommend.check_rate_or_why_not)
    recommend._real_rate = real

    def rate(model, n_held, lambda_max, least=recommend.MIN_HELDOUT):
        lr, source, why = real(model, n_held, lambda_max, least)
        if rule == "curvature" and not why and math.isfinite(lambda_max) and lambda_max > 0:
            lr = min(model.info.solver.peak_lr, 1.0 / lambda_max)
            source = "1 / lambda_max, at most the base rate"
        seen["lr"] = lr
        return lr, source, why

    recommend.check_rate_or_why_not = rate
    pooled_check.check_rate_or_why_not = rate


def one_case(case, seed, rate, rule, inits, test_csv, work) -> dict:
    """The plugin under ``rule``; when it changed rows, the retrainings."""
    seen: dict = {}
    use_rule(rule, seen)
    out = os.path.join(os.path.dirname(case["model"]), f"out_{rule}", "influence.csv")
    row = sv.run_one(case, case["val"], out, [])
    line = {"rate": rate, "seed": seed, "rule": rule, "check_lr": seen.get("lr", ""),
            "changed": row["changed"], "flips": row["flips"], "precision": row["precision"],
            "recall": row["recall"], "best_z": row["best_z"], "inits": len(inits)}  # fmt: skip
    if not row["changed"]:
        return line
    with open(out, newline="") as f:
        drop = [int(r["datasource_index"]) for r in csv.DictReader(f) if r["action"] != "keep"]
    base = os.path.dirname(os.path.dirname(case["model"]))
    flips = np.flatnonzero(case["flipped"])
    d = []
    for init in inits:
        a0, l0 = cvr.retrained(os.path.join(base, f"scratch_given_i{init}"), case, None, init,
                               test_csv)  # fmt: skip
        a1, l1 = cvr.retrained(os.path.join(base, f"scratch_{rule}_i{init}"), case, drop, init,
                               test_csv)  # fmt: skip
        a2, l2 = (cvr.retrained(os.path.join(base, f"scratch_oracle_i{init}"), case, flips,
                                init, test_csv) if len(flips) else (a0, l0))  # fmt: skip
        d.append((100 * (a1 - a0), l1 - l0, 100 * (a2 - a0), l2 - l0))
    m = np.mean(d, axis=0)
    line.update(d_acc=m[0], d_loss=m[1], d_acc_oracle=m[2], d_loss_oracle=m[3])
    return line


def summarize(paths: list) -> str:
    """Markdown: per label setting and rule, the runs that changed rows, their precision,
    and the mean retrained change against the oracle's.
    """
    rows = [r for p in paths for r in csv.DictReader(open(p, newline=""))]
    out = ["| labels | check's rate | runs changing rows | rows changed (flipped share) | "
           "retrained: accuracy change, points (oracle) | test loss change (runs lower) |",
           "|---" * 6 + "|"]  # fmt: skip
    for rate in sorted({r["rate"] for r in rows}, key=float):
        for rule in RULES:
            g = [r for r in rows if r["rate"] == rate and r["rule"] == rule]
            ch = [r for r in g if int(r["changed"])]
            label = "clean" if float(rate) == 0 else f"{float(rate):.0%} flipped"
            lrs = [float(r["check_lr"]) for r in g if r["check_lr"]]
            name = f"{rule} ({min(lrs):.2g}-{max(lrs):.2g})" if lrs else rule
            if not ch:
                out.append(f"| {label} | {name} | 0 of {len(g)} | - | - | - |")
                continue
            n = sum(int(r["changed"]) for r in ch)
            fl = sum(int(round(float(r["precision"]) * int(r["changed"]))) for r in ch)
            acc = np.array([float(r["d_acc"]) for r in ch])
            loss = np.array([float(r["d_loss"]) for r in ch])
            ora = np.mean([float(r["d_acc_oracle"]) for r in ch])
            out.append(f"| {label} | {name} | {len(ch)} of {len(g)} | {n} ({fl / n:.2f}) | "
                       f"{acc.mean():+.2f} ({ora:+.2f}) | {loss.mean():+.4f} "
                       f"({int((loss < 0).sum())} of {len(ch)}) |")  # fmt: skip
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    """Every seed under both rules; the CSV written as it goes."""
    ap = fc.run_arguments(__doc__, "0-9", "600", 600)
    ap.add_argument("--inits", default="3,4,5", help="initial seeds of the retrainings")
    args, work = fc.parse(ap, argv, summarize, os.path.join(HERE, "results", "schedule_check"))
    if args is None:
        return 0
    inits = [int(s) for s in args.inits.split(",")]
    test_csv = cvr.test_set(work, 2000)
    path = os.path.join(args.out, f"schedule_check_r{args.rate:g}.csv")
    with fc.appending_rows(path, FIELDS) as add:
        for seed in fc._seeds(args.seeds):
            case = build(work, seed, args.rate)
            for rule in RULES:
                add(one_case(case, seed, args.rate, rule, inits, test_csv, work))
    print(summarize([path]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
