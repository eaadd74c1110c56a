"""What ``sgd-influence evaluate`` writes: the paired table over seeds (:func:`aggregate`) and
``results.csv``, ``summary.md``, ``figure2.png`` and ``settings.yaml`` in the output folder,
committed together under the ownership rule (:func:`write_outputs`).
"""

from __future__ import annotations

import csv
import os
from typing import Dict, List

import numpy as np

from . import staged_commit
from .io_utils import atomic_write
from .settings import write_yaml

#: The files ``evaluate`` writes into ``--output-dir``.
OUTPUT_FILES = ("settings.yaml", "figure2.png", "summary.md", "results.csv")


def sample_std(values) -> float:
    """The sample standard deviation (n - 1 in the denominator, the usual "mean ± SD over
    seeds") of a 1-D sequence; nan for fewer than two values, which have none.
    """
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1)) if v.size > 1 else float("nan")


def mean_sd(mean: float, sd: float, fmt: str = "{:.4f}") -> str:
    """``"mean ± sd"`` in ``fmt`` (the sign of ``fmt`` is dropped for the deviation), or the mean
    alone when ``sd`` is nan (one seed has no deviation).
    """
    if np.isnan(sd):
        return fmt.format(mean)
    return fmt.format(mean) + " ± " + fmt.replace("+", "").format(sd)


def aggregate(rows: List[Dict]) -> List[Dict]:
    """Mean and sample standard deviation (:func:`sample_std`) over seeds per (method, n);
    'none' rows are n = 0.

    ``dacc_*`` / ``dloss_*`` are paired differences from the same seed's 'none' row (same
    sample order and start), which removes most of the seed-to-seed noise; ``wins`` counts
    the seeds whose accuracy rose ("k/n"; "-" for n = 0).
    """
    base = {r["seed"]: r for r in rows if r["method"] == "none"}
    groups: Dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["n_removed"]), []).append(r)
    out = []
    for (method, count), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        acc = np.array([r["test_accuracy"] for r in rs])
        loss = np.array([r["test_loss"] for r in rs])
        paired = [r for r in rs if r["seed"] in base]
        dacc = np.array([r["test_accuracy"] - base[r["seed"]]["test_accuracy"] for r in paired])
        dloss = np.array([r["test_loss"] - base[r["seed"]]["test_loss"] for r in paired])
        row = {
            "method": method,
            "n_removed": count,
            "ratio": rs[0]["ratio"],
            "seeds": len(rs),
            "acc_mean": float(acc.mean()),
            "acc_std": sample_std(acc),
            "loss_mean": float(loss.mean()),
            "loss_std": sample_std(loss),
            "dacc_mean": float(dacc.mean()) if len(dacc) else float("nan"),
            "dacc_std": sample_std(dacc),
            "dloss_mean": float(dloss.mean()) if len(dloss) else float("nan"),
            "dloss_std": sample_std(dloss),
            "wins": f"{int((dacc > 0).sum())}/{len(dacc)}" if count else "-",
        }
        if "precision_at_n" in rs[0]:
            row["precision_mean"] = (
                float(np.nanmean([r["precision_at_n"] for r in rs])) if count else float("nan")
            )
            if "recall_at_n" in rs[0]:
                row["recall_mean"] = float(np.mean([r["recall_at_n"] for r in rs]))
        out.append(row)
    return out


def write_outputs(out_dir: str, rows: List[Dict], n: int, flipped, facts: Dict) -> None:
    """Stage the four result files in ``out_dir`` and commit them together (see
    :func:`.staged_commit.commit_staged`); only files the tool wrote there are replaced.
    """
    with staged_commit.staging(out_dir, "--output-dir") as stage:
        _write_result_files(stage, rows, n, flipped, facts)
        moves = [(os.path.join(stage, f), os.path.join(out_dir, f)) for f in OUTPUT_FILES]
        staged_commit.commit_staged(out_dir, moves, [], "--output-dir")


def _write_result_files(out_dir: str, rows: List[Dict], n: int, flipped, facts: Dict) -> None:
    keys = list(rows[0].keys())
    with atomic_write(os.path.join(out_dir, "results.csv"), newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    agg = aggregate(rows)
    write_yaml(os.path.join(out_dir, "settings.yaml"), facts)
    _plot(os.path.join(out_dir, "figure2.png"), agg, n, facts)
    lines = [
        f"# Data cleansing: retrain = {facts['retrain']}, N = {n}, seeds = {facts['seeds']}",
        "",
        "| removed | n | method | test accuracy | Δ accuracy (paired) | test loss "
        "| Δ loss (paired) |" + (" precision@n | recall@n |" if flipped is not None else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|" if flipped is not None else ""),
    ]
    for a in agg:
        line = (
            f"| {a['ratio']:.1%} | {a['n_removed']} | {a['method']} | "
            f"{mean_sd(a['acc_mean'], a['acc_std'])} | "
            f"{mean_sd(a['dacc_mean'], a['dacc_std'], '{:+.4f}')} | "
            f"{mean_sd(a['loss_mean'], a['loss_std'])} | {a['dloss_mean']:+.4f} |"
        )
        if flipped is not None:
            line += (
                f" {a['precision_mean']:.3f} | {a['recall_mean']:.3f} |"
                if a["n_removed"]
                else " - | - |"
            )
        lines.append(line)
    if rows and all(np.isnan(r["test_accuracy"]) for r in rows):
        lines += ["", "Test accuracy: nan, the network has no class labels; compare the test loss."]
    if flipped is not None:
        lines += [
            "",
            f"Flipped labels: {int(flipped.sum())} of {n} "
            f"({flipped.mean():.1%}); random removal's expected precision is that "
            "share.",
        ]
    lines += [
        "",
        "Mean ± sample standard deviation (n - 1) over seeds. Δ (paired) = the same seed's "
        "value minus its no-removal value (same start and sample order), mean ± sample "
        "standard deviation over seeds.",
        "",
        f"Total time: {facts['total_seconds']} s",
    ]
    with atomic_write(os.path.join(out_dir, "summary.md")) as f:
        f.write("\n".join(lines) + "\n")


def _plot(path: str, agg: List[Dict], n: int, facts: Dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    none = [a for a in agg if a["method"] == "none"]
    for ax, key, ylabel in ((axes[0], "acc", "test accuracy"), (axes[1], "loss", "test loss")):
        for method, color in (("harmful", "#cc3311"), ("random", "#0077bb")):
            pts = sorted(
                none + [a for a in agg if a["method"] == method], key=lambda a: a["n_removed"]
            )
            x = [100 * a["n_removed"] / n for a in pts]
            y = np.array([a[key + "_mean"] for a in pts])
            e = np.array([a[key + "_std"] for a in pts])
            label = (
                "remove top-n harmful (SGD-influence)" if method == "harmful" else "remove n random"
            )
            ax.plot(x, y, "o-", color=color, label=label)
            ax.fill_between(x, y - e, y + e, color=color, alpha=0.15)
        if none:
            ax.axhline(none[0][key + "_mean"], color="gray", ls="--", lw=1, label="no removal")
        ax.set_xlabel("removed training samples (% of N)")
        ax.set_ylabel(ylabel + " (mean ± SD over seeds)")
        ax.legend(fontsize=8)
    fig.suptitle(
        f"retrain = {facts['retrain']}, cache = {facts['settings']['cache']}, "
        f"lr = {facts['lr']:g}, N = {n}, {len(facts['seeds'])} seeds"
    )
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
