"""Does the check's held-out accuracy predict retraining better than its held-out loss? Issue 35.

    python experiments/judge_vs_retraining.py --seeds 0-19 [--rate 0.1] [--inits 3,4,5]
    python experiments/judge_vs_retraining.py --summarize experiments/results/judge/judge_r0.1.csv

For each case of :mod:`small_validation` (600 Fashion-MNIST training images at 14x14, ``--rate``
of their labels flipped, an MLP trained 15 epochs by ``nnabla_cli``, 600 validation rows of
which the check holds out 300), the plugin runs at its defaults with the check spied on:
*every* candidate it checks, with its held-out loss change, z and held-out accuracy change.
Then the network is trained again from scratch without each candidate's rows (and as given),
with ``--inits`` initialisations (:func:`check_vs_retraining.retrained`), and measured on
2,000 test images: the paired change in test accuracy (points) and test loss.

Writes ``OUT/judge_r<rate>.csv``, one row per candidate, as it goes. ``--summarize`` prints,
over the cases: the rank correlation, within a case, of each check signal with the retrained
accuracy change; and the retrained change of the candidate each rule would pick (today's
rule; the candidate with the best held-out loss; the best held-out accuracy).
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
from check_vs_retraining import retrained, test_set  # noqa: E402

from sgd_influence_plugin import recommend, recommendation  # noqa: E402

FIELDS = ("rate", "seed", "cand", "order", "level", "rows", "flips", "check_loss", "z",
          "check_acc", "passes", "chosen", "d_acc", "d_loss", "inits")  # fmt: skip


def install(state: dict) -> None:
    """Spy on :func:`.recommendation.build`: every checked candidate and the one-order choice."""
    real = recommend.build

    def build(suspects, checked, n_heldout, check, again=None):
        state["checked"] = list(checked)
        state["chosen"] = recommendation.choose(checked)
        return real(suspects, checked, n_heldout, check, again)

    recommend.build = build


def one_case(state, case, seed, rate, inits, test_csv, n_val) -> list:
    """Every candidate of one case, checked and retrained."""
    val_csv = sv.subset_csv(case["val"], n_val, seed)
    out = os.path.join(os.path.dirname(case["model"]), "judge", "influence.csv")
    state.update(checked=[], chosen=None)
    sv.run_one(case, val_csv, out, [])
    checked, chosen = state["checked"], state["chosen"]
    if not checked:
        return []
    bar = recommendation.z_required(len(checked))
    base_dir = os.path.dirname(os.path.dirname(case["model"]))
    lines = []
    for k, c in enumerate(checked):
        acc, loss = [], []
        for init in inits:
            a0, l0 = retrained(os.path.join(base_dir, f"scratch_given_i{init}"), case, None,
                               init, test_csv)  # fmt: skip
            a1, l1 = retrained(os.path.join(base_dir, f"judge_c{k}_i{init}"), case, c.rows,
                               init, test_csv)  # fmt: skip
            acc.append(100 * (a1 - a0))
            loss.append(l1 - l0)
        lines.append({"rate": rate, "seed": seed, "cand": k, "order": c.order, "level": c.level,
                      "rows": len(c.rows), "flips": int(case["flipped"][c.rows].sum()),
                      "check_loss": c.loss_change, "z": c.z, "check_acc": c.accuracy_change,
                      "passes": int(c.passes(bar)), "chosen": int(c is chosen),
                      "d_acc": float(np.mean(acc)), "d_loss": float(np.mean(loss)),
                      "inits": len(inits)})  # fmt: skip
    return lines


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if np.std(ra) == 0 or np.std(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def summarize(paths: list) -> str:
    """The table of the docs (see the module docstring)."""
    rows = [r for p in paths for r in csv.DictReader(open(p))]
    cases = {}
    for r in rows:
        cases.setdefault((r["rate"], r["seed"]), []).append(r)
    f = lambda cs, k: np.array([float(c[k]) for c in cs])  # noqa: E731
    corr = {"-check_loss": [], "check_acc": [], "-z": []}
    picks = {"today's rule": [], "best held-out loss": [], "best held-out accuracy": [],
             "best accuracy among passing": []}  # fmt: skip
    for cs in cases.values():
        d = f(cs, "d_acc")
        if len(cs) >= 3:
            corr["-check_loss"].append(_spearman(-f(cs, "check_loss"), d))
            corr["check_acc"].append(_spearman(f(cs, "check_acc"), d))
            corr["-z"].append(_spearman(-f(cs, "z"), d))
        chosen = [c for c in cs if c["chosen"] == "1"]
        picks["today's rule"].append(float(chosen[0]["d_acc"]) if chosen else 0.0)
        picks["best held-out loss"].append(d[np.argmin(f(cs, "check_loss"))])
        picks["best held-out accuracy"].append(d[np.argmax(f(cs, "check_acc"))])
        passing = [c for c in cs if c["passes"] == "1"]
        picks["best accuracy among passing"].append(
            float(max(passing, key=lambda c: float(c["check_acc"]))["d_acc"]) if passing else 0.0
        )
    out = [f"{len(cases)} cases, {len(rows)} candidates retrained", "",
           "| check signal | mean within-case Spearman with retrained accuracy | cases |",
           "|---|---|---|"]  # fmt: skip
    for k, v in corr.items():
        v = [x for x in v if np.isfinite(x)]
        out.append(f"| {k} | {np.mean(v):+.2f} | {len(v)} |")
    out += ["", "| rule | retrained accuracy change of its pick (mean ± SE, points) |", "|---|---|"]
    for k, v in picks.items():
        v = np.array(v)
        out.append(f"| {k} | {v.mean():+.2f} ± {v.std(ddof=1) / np.sqrt(len(v)):.2f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    """Every seed; the CSV written as it goes."""
    ap = fc.run_arguments(__doc__, "0-19", "600", 600)
    ap.add_argument("--inits", default="3,4,5", help="initial seeds of the retrainings")
    ap.add_argument("--test", type=int, default=2000, help="test images")
    args, work = fc.parse(ap, argv, summarize, os.path.join(HERE, "results", "judge"))
    if args is None:
        return 0
    state: dict = {}
    install(state)
    inits = [int(s) for s in args.inits.split(",")]
    test_csv = test_set(work, args.test)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"judge_r{args.rate:g}.csv")
    with fc.appending_rows(path, FIELDS) as add:
        for seed in fc._seeds(args.seeds):
            case = fc.build(work, "patterns", seed, args.n_val, args.rate)
            for line in one_case(state, case, seed, args.rate, inits, test_csv, args.n_val):
                add(line)
                print(seed, line["cand"], line["rows"], line["flips"], f"{line['z']:.2f}",
                      f"{line['check_acc']:+.3f}", f"{line['d_acc']:+.2f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
