"""Issue 36, item 6: do the scores find wrong labels in tables, and is a class one-sided.

For each table (Titanic with ``--titanic DIR``, scikit-learn's breast cancer and wine), raw
and standardized, and each seed: flip ``--rate`` of the training labels (seeded), train the
console network with ``nnabla_cli train`` (:mod:`tabular_data`), then score the training rows
with :func:`sgd_influence_plugin.influence.compute_influence` at the defaults (all validation
rows, as ``--no-recommend`` uses them) once per ``--targets`` value: the package's targets
``class-centred`` (the default) and ``plain`` (the replay's estimate as it was before), and
the measured but not kept candidate ``projected`` (:mod:`candidates`). Reported per case:

- ``p@k``: the share of flipped labels among the k rows the output lists first (most harmful,
  ascending score), k = the number flipped (chance = ``--rate``); ``loss`` the same for the
  k rows of highest training loss (the baseline to match);
- per class: the share of its rows scored harmful (< 0); 0 or 1 = a one-sided class.

Writes ``OUT/tabular_scores.csv`` (one line per case and target) and ``OUT/tabular_scores.md``
(the table, the means over seeds). Needs scikit-learn in the venv for breast cancer and wine
(``uv pip install -p .venv/bin/python scikit-learn``); the package does not.

Run: ``.venv/bin/python experiments/tabular_scores.py --titanic PATH/titanic_nnc2``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from typing import Dict, List

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import candidates  # noqa: E402
import tabular_data  # noqa: E402

from sgd_influence_plugin.dataset import load_dataset  # noqa: E402
from sgd_influence_plugin.influence import compute_influence  # noqa: E402
from sgd_influence_plugin.nnabla_adapter import load_model  # noqa: E402
from sgd_influence_plugin.settings import InfluenceSettings  # noqa: E402
from sgd_influence_plugin.target import TARGETS  # noqa: E402

#: What is compared: the package's targets and the experiment's candidate.
CHOICES = TARGETS + ("projected",)
FIELDS = ("dataset", "scaling", "seed", "target", "n", "k", "p_at_k", "loss_p_at_k",
          "harmful_share_by_class", "lr", "u_growth")  # fmt: skip


def precision_at_k(order_key: np.ndarray, flipped: np.ndarray) -> float:
    """Share of flipped rows among the k smallest ``order_key`` (k = flips; stable sort)."""
    k = int(flipped.sum())
    return float(flipped[np.argsort(order_key, kind="stable")[:k]].mean())


def harmful_shares(scores: np.ndarray, labels: np.ndarray) -> Dict[int, float]:
    """Class (the given, noisy label) -> share of its rows with a negative score."""
    return {int(c): float(np.mean(scores[labels == c] < 0)) for c in np.unique(labels)}


def scores_of(model, train, val, target: str, jobs: int):
    """``compute_influence`` at the defaults but ``target`` (one of :data:`CHOICES`)."""
    if target == "projected":
        with candidates.projected_query(model, train):
            settings = InfluenceSettings(target="plain", jobs=jobs)
            return compute_influence(model, train, val, settings)
    return compute_influence(model, train, val, InfluenceSettings(target=target, jobs=jobs))


def score_case(case: dict, targets: List[str], jobs: int) -> List[dict]:
    """Every target's scores on one trained case, as rows of :data:`FIELDS` (less the case's
    own name, scaling and seed).
    """
    model = load_model(model=case["model"])
    train = load_dataset(case["train"], model.info.input_shapes).arrays
    val = load_dataset(case["val"], model.info.input_shapes).arrays
    label = next(iter(model.info.label_classes))
    given = train[label].reshape(-1).astype(np.int64)
    rows = []
    for target in targets:
        res = scores_of(model, train, val, target, jobs)
        rows.append({
            "target": target, "n": len(given), "k": int(case["flipped"].sum()),
            "p_at_k": precision_at_k(res.scores, case["flipped"]),
            "loss_p_at_k": precision_at_k(-res.losses, case["flipped"]),
            "harmful_share_by_class": harmful_shares(res.scores, given),
            "lr": res.resolved.lr, "u_growth": res.timings["u_growth"],
        })  # fmt: skip
    return rows


def summary_markdown(rows: List[dict], args) -> str:
    """The table of every case and the mean p@k over seeds per dataset, scaling and target."""
    lines = [
        "# Flipped labels in tables: the output order against sorting by training loss",
        "",
        f"`experiments/tabular_scores.py --datasets {args.datasets} --scalings {args.scalings} "
        f"--seeds {args.seeds} --rate {args.rate} --targets {args.targets}`; "
        f"k = number of flipped rows, chance = {args.rate}.",
        "",
        "| dataset | scaling | seed | target | n | k | p@k | loss p@k | harmful share by class |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shares = ", ".join(f"{c}: {s:.2f}" for c, s in r["harmful_share_by_class"].items())
        lines.append(
            f"| {r['dataset']} | {r['scaling']} | {r['seed']} | {r['target']} | {r['n']} | "
            f"{r['k']} | {r['p_at_k']:.3f} | {r['loss_p_at_k']:.3f} | {shares} |"
        )
    lines += ["", "Means over seeds (p@k >= loss p@k: the order finds flips as well as the loss; "
              "one-sided: the smallest min(share harmful, share helpful) of any class and seed, "
              "0 = some class all harmful or all helpful):", "",
              "| dataset | scaling | target | p@k | loss p@k | p@k >= loss | one-sided | "
              "harmful share per class, min-max over seeds |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    keys = sorted({(r["dataset"], r["scaling"], r["target"]) for r in rows})
    for key in keys:
        sel = [r for r in rows if (r["dataset"], r["scaling"], r["target"]) == key]
        side = min(min(s, 1 - s) for r in sel for s in r["harmful_share_by_class"].values())
        p, loss = np.mean([r["p_at_k"] for r in sel]), np.mean([r["loss_p_at_k"] for r in sel])
        ranges = ", ".join(
            f"{c}: {min(r['harmful_share_by_class'][c] for r in sel):.2f}-"
            f"{max(r['harmful_share_by_class'][c] for r in sel):.2f}"
            for c in sel[0]["harmful_share_by_class"]
        )
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {p:.3f} | {loss:.3f} | "
            f"{'yes' if p >= loss else 'no'} | {side:.2f} | {ranges} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--titanic", help="the titanic_nnc2 folder (data/, result/); needed for titanic")
    p.add_argument("--datasets", default=",".join(tabular_data.DATASETS))
    p.add_argument("--scalings", default="raw,std", help="raw and/or std (default: both)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rate", type=float, default=0.1, help="share of labels flipped")
    p.add_argument("--targets", default=",".join(CHOICES), help="what to compare (default: all)")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--work", help="where the cases are built (default: a temporary folder)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Build, train and score every case; print a line per case and target; write OUT/."""
    args = parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="tabular_scores_")
    rows = []
    for name in args.datasets.split(","):
        for scaling in args.scalings.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                case = tabular_data.build_case(work, name, scaling, seed, args.rate, args.titanic)
                for r in score_case(case, args.targets.split(","), args.jobs):
                    rows.append({"dataset": name, "scaling": scaling, "seed": seed, **r})
                    print(", ".join(f"{k}={rows[-1][k]}" for k in FIELDS), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tabular_scores.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            shares = r["harmful_share_by_class"].items()
            w.writerow({**r, "harmful_share_by_class": " ".join(f"{c}:{v:.3f}" for c, v in shares)})
    with open(os.path.join(args.out, "tabular_scores.md"), "w") as f:
        f.write(summary_markdown(rows, args))
    print(f"wrote {args.out}/tabular_scores.csv and .md (cases in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
