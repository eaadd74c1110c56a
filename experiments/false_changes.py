"""Issue 36, item 7: how often the checked recommendation changes rows of a CLEAN training set.

For each dataset (the suite's generated image patterns, scikit-learn's breast cancer and wine),
each seed and each validation size, a clean case is trained (:mod:`small_validation`) and the
plugin runs at its defaults. Every procedure the check judged is written with its pooled z and,
for the two-way check, the z of each direction (half A's set measured on half B, and back), so
other bars can be evaluated on the same runs.

``--null random`` replaces each procedure's sets by seeded random sets of the same sizes (on
the tables, whose clean runs have no suspects, by four random sets of 5-20% of the training
rows): the check's statistic should then pass at most 1% of runs. A higher rate means the
statistic is miscalibrated, not that removing suspects helps.

Writes ``OUT/false_changes_<null>.csv`` (one row per procedure) and prints each run.

Run: ``.venv/bin/python experiments/false_changes.py --datasets patterns --seeds 0-119``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import small_validation as sv  # noqa: E402
import tabular_data  # noqa: E402

from sgd_influence_plugin import pooled_check  # noqa: E402

FIELDS = ("dataset", "null", "seed", "val_rows", "check", "n_procs", "proc", "size", "size_a",
          "size_b", "z", "z_ab", "z_ba", "chosen", "changed")  # fmt: skip
SHARES = (0.05, 0.10, 0.15, 0.20)  # the tables' random sets (the patterns' suspects: 8-19%)


def _z(d: np.ndarray) -> float:
    """Mean over standard error of ``d`` (NaN when they are all equal)."""
    se = d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean() / se) if se > 0 else math.nan


def _random_like(rows: np.ndarray, n: int, rng) -> np.ndarray:
    """A seeded random set of ``len(rows)`` of ``n`` training rows, ascending."""
    return np.sort(rng.choice(n, len(rows), replace=False)).astype(np.int64)


def install_spies(state: dict, null: str) -> None:
    """Record each two-way procedure's directions; with ``null == "random"`` replace its
    sets by random ones of the same sizes (four of 5-20% where the rule gives none).
    """
    real_pool, real_cands = pooled_check._pool, pooled_check.pooled_candidates

    def pool(cands, epochs, halves, base):
        real_pool(cands, epochs, halves, base)
        for c in cands:
            c.z_ab = _z(c.heldout_loss[halves[1]] - base[halves[1]])
            c.z_ba = _z(c.heldout_loss[halves[0]] - base[halves[0]])
        state["two_way"] = cands

    def cands(sus_a, sus_b, sus_all):
        out = real_cands(sus_a, sus_b, sus_all)
        if null != "random":
            return out
        n, rng = len(sus_all.suggested), np.random.RandomState(state["seed"] + 7)
        if not out:
            for share in SHARES:
                k = np.zeros(int(round(share * n)), np.int64)
                c = pooled_check.PooledCandidate(0.1, "remove", k, k, "given_label")
                c.rows_a = c.rows_b = k
                out.append(c)
        for c in out:
            c.rows_a, c.rows_b = _random_like(c.rows_a, n, rng), _random_like(c.rows_b, n, rng)
            c.rows = _random_like(c.rows, n, rng)
            c.new_labels = np.full(len(c.rows), -1, np.int64)
        return out

    pooled_check._pool, pooled_check.pooled_candidates = pool, cands


def build(work: str, name: str, seed: int, n_val: int, rate: float) -> dict:
    """One trained case (``rate`` of the training labels flipped)."""
    if name == "patterns":
        return sv.build_patterns(work, seed, rate, n_val=n_val)
    return tabular_data.build_case(work, name, "std", seed, rate, noise_seed=1000 + seed)


def one_run(state, case, name, seed, size, null) -> list:
    """The plugin on ``size`` validation rows; one record per procedure judged."""
    val_csv = sv.subset_csv(case["val"], size, seed)
    out = os.path.join(os.path.dirname(case["model"]), f"v{size}_{null}", "influence.csv")
    state.update(seed=seed, two_way=None)
    row = sv.run_one(case, val_csv, out, [])
    import yaml

    rec = yaml.safe_load(open(out[: -len(".csv")] + "_settings.yaml"))["recommendation"]
    checked = rec.get("checked", [])
    base = {"dataset": name, "null": null, "seed": seed, "val_rows": row["val_rows"],
            "check": row["check"], "n_procs": len(checked), "changed": row["changed"]}  # fmt: skip
    lines = []
    twoway = state["two_way"] or []
    for k, c in enumerate(checked):
        line = dict(base, proc=k, z=c.get("z", ""), size=c.get("rows", ""))
        line["chosen"] = int(bool(rec.get("chosen")) and rec["chosen"].get("z") == c.get("z"))
        if k < len(twoway):
            t = twoway[k]
            line.update(size_a=len(t.rows_a), size_b=len(t.rows_b), z_ab=t.z_ab, z_ba=t.z_ba)
        lines.append(line)
    if not checked:
        lines.append(dict(base, proc=-1))
    return lines


def _bars(rr: list):
    """(passes the pooled bar alone, passes it in each direction too) for one run's records."""
    from statistics import NormalDist

    zb = NormalDist().inv_cdf(1.0 - 0.01 / len(rr))
    f = [{k: float(r[k]) if r.get(k, "") != "" else math.nan for k in ("z", "z_ab", "z_ba")}
         for r in rr]  # fmt: skip
    pooled = any(x["z"] <= -zb for x in f)
    if rr[0]["check"] != "two-way":
        return pooled, pooled
    each = any(x["z"] <= -zb and x["z_ab"] <= -zb and x["z_ba"] <= -zb for x in f)
    return pooled, each


def summarize(paths: list) -> str:
    """Markdown: per dataset, labels, validation rows and check, the runs passing each bar
    with a 95% Clopper-Pearson interval (exact, as the runs are deterministic given a seed).
    """
    from collections import defaultdict

    from scipy.stats import beta

    def ci(k, n):
        lo = beta.ppf(0.025, k, n - k + 1) if k else 0.0
        hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
        return f"{k}/{n} = {k / n:.3f} [{lo:.3f}, {hi:.3f}]"

    runs = defaultdict(list)
    for path in paths:
        name = os.path.basename(path)
        for r in csv.DictReader(open(path, newline="")):
            runs[(r["dataset"], name, int(r["val_rows"]), r["check"], r["seed"])].append(r)
    groups = defaultdict(list)
    for (ds, name, v, check, _), rr in runs.items():
        groups[(ds, name, v, check)].append([x for x in rr if x["z"] != ""])
    out = ["| dataset | runs file | validation rows | check | pooled bar alone | each "
           "direction too (this rule) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for (ds, name, v, check), g in sorted(groups.items()):
        bars = [_bars(rr) if rr else (False, False) for rr in g]
        old, new = sum(b[0] for b in bars), sum(b[1] for b in bars)
        out.append(f"| {ds} | {name} | {v} | {check} | {ci(old, len(g))} | {ci(new, len(g))} |")
    return "\n".join(out) + "\n"


def _seeds(text: str):
    if "-" in text:
        lo, hi = text.split("-")
        return range(int(lo), int(hi) + 1)
    return [int(s) for s in text.split(",")]


@contextlib.contextmanager
def appending_rows(path: str, fields):
    """A function that appends one dict row to the CSV ``path`` (its header ``fields`` written
    first when the file is new) and flushes it, so an interrupted experiment keeps its rows.
    """
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fields, lineterminator="\n")
        if new:
            w.writeheader()

        def add(row: dict) -> None:
            w.writerow(row)
            f.flush()

        yield add


def run_arguments(doc: str, seeds: str, sizes: str, n_val: int) -> argparse.ArgumentParser:
    """The options every clean-run experiment shares (datasets, seeds, sizes, rows, rate)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--datasets", default="patterns")
    ap.add_argument("--seeds", default=seeds)
    ap.add_argument("--sizes", default=sizes)
    ap.add_argument("--n-val", type=int, default=n_val, help="the patterns' validation rows")
    ap.add_argument("--rate", type=float, default=0.0, help="flipped labels (noisy power)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--summarize", default=None, help="only print the table of these CSVs")
    return ap


def parse(ap: argparse.ArgumentParser, argv, summary, out: str):
    """``(arguments, work folder)``; ``(None, None)`` after printing ``summary`` of the CSVs
    ``--summarize`` names.
    """
    ap.add_argument("--out", default=out)
    args = ap.parse_args(argv)
    if args.summarize:
        print(summary(args.summarize.split(",")))
        return None, None
    os.makedirs(args.out, exist_ok=True)
    return args, args.work or tempfile.mkdtemp(prefix="clean_runs_")


def main(argv=None) -> int:
    """Run every dataset, seed and size; write the CSV as it goes."""
    ap = run_arguments(__doc__, "0-119", "40,100,150,200", 200)
    ap.add_argument("--null", default="rule", choices=("rule", "random"))
    args, work = parse(ap, argv, summarize, os.path.join(HERE, "results", "small_validation"))
    if args is None:
        return 0
    state: dict = {}
    install_spies(state, args.null)
    kinds = args.datasets.replace(",", "_")
    path = os.path.join(args.out, f"false_changes_{args.null}_r{args.rate:g}_{kinds}.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS, lineterminator="\n")
        w.writeheader()
        for name in args.datasets.split(","):
            for seed in _seeds(args.seeds):
                case = build(work, name, seed, args.n_val, args.rate)
                for size in [int(s) for s in args.sizes.split(",")]:
                    lines = one_run(state, case, name, seed, size, args.null)
                    w.writerows({k: x.get(k, "") for k in FIELDS} for x in lines)
                    f.flush()
                    zs = [x["z"] for x in lines if x.get("z", "") != ""]
                    print(name, seed, lines[0]["val_rows"], lines[0]["check"],
                          lines[0]["changed"], min(zs) if zs else "-", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
