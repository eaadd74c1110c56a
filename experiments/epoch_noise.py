"""The one-way check's null spread (issue 36, the one-way check's false changes).

Each clean run of :mod:`false_changes` at one validation size, with the one-way check spied
on: every candidate's held-out mean difference and its row standard error, and a second
epoch on the data as given in *another* sample order (``base2``), so each run also gives one
draw of the settling epoch's own noise. ``--null random`` replaces the candidates by seeded
random sets of the same sizes (four of 5-20% where the rule finds no suspects, or always with
``--shares``).

Writes ``OUT/epoch_noise_<null>_<datasets>.csv``: one row per candidate with ``d`` (mean of
candidate - base over the held-out rows), ``se`` (its row standard error), ``z = d / se``,
and the run's ``d2`` / ``se2`` (base2 - base, the second order's difference).

Run: ``.venv/bin/python experiments/epoch_noise.py --datasets patterns --seeds 0-29
--n-val 600 --sizes 600``.
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

import false_changes as fc  # noqa: E402
import small_validation as sv  # noqa: E402

from sgd_influence_plugin import recommend  # noqa: E402
from sgd_influence_plugin.suspects import Candidate  # noqa: E402

FIELDS = ("dataset", "null", "seed", "val_rows", "heldout", "n_cands", "cand", "size", "d",
          "se", "z", "d2", "se2", "changed")  # fmt: skip


def _mean_se(d: np.ndarray):
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def install(state: dict) -> None:
    """Spy on the one-way check: the candidates' differences and a second-order base epoch."""
    real_check, real_cands = recommend.check_candidates, recommend.candidates

    def cands(suspects):
        out = real_cands(suspects)
        if state["null"] != "random":
            return out
        n, rng = len(suspects.mask), np.random.RandomState(state["seed"] + 7)
        sizes = [len(c.rows) for c in out] if out and not state["shares"] else [
            int(round(s * n)) for s in fc.SHARES]  # fmt: skip
        return [Candidate(0.1, "remove", fc._random_like(np.zeros(k), n, rng),
                          np.full(k, -1, np.int64), "given_label") for k in sizes]  # fmt: skip

    def check(model, train, heldout, label, cs, lr, bs, wd, seed=0, **kw):
        base = []
        out = real_check(model, train, heldout, label, cs, lr, bs, wd, seed=seed,
                         base_out=base, **kw)  # fmt: skip
        kw2 = {k: v for k, v in kw.items() if k not in ("base", "progress")}
        other = []
        real_check(model, train, heldout, label, [], lr, bs, wd, seed=seed + 1,
                   base_out=other, **kw2)  # fmt: skip
        b1, b2 = base[0][0], other[0][0]
        state["d2"] = _mean_se(b2 - b1)
        state["cands"] = [(len(c.rows), *_mean_se(c.heldout_loss - b1)) for c in cs]
        return out

    recommend.check_candidates, recommend.candidates = check, cands


def one_run(state, case, name, seed, size, null) -> list:
    """The plugin on ``size`` validation rows; one record per candidate checked."""
    val_csv = sv.subset_csv(case["val"], size, seed)
    out = os.path.join(os.path.dirname(case["model"]), f"en{size}_{null}", "influence.csv")
    state.update(seed=seed, null=null, cands=[], d2=(math.nan, math.nan))
    row = sv.run_one(case, val_csv, out, [])
    base = {"dataset": name, "null": null, "seed": seed, "val_rows": row["val_rows"],
            "heldout": row["val_rows"] // 2, "n_cands": len(state["cands"]),
            "d2": state["d2"][0], "se2": state["d2"][1], "changed": row["changed"]}  # fmt: skip
    lines = [dict(base, cand=k, size=s, d=d, se=se, z=d / se if se > 0 else math.nan)
             for k, (s, d, se) in enumerate(state["cands"])]  # fmt: skip
    return lines or [dict(base, cand=-1)]


def main(argv=None) -> int:
    """Run every dataset, seed and size; write the CSV as it goes."""
    ap = fc.run_arguments(__doc__, "0-29", "300", 300)
    ap.add_argument("--null", default="rule", help="rule, random or both (rule,random)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--shares", action="store_true", help="random sets of 5-20%% always")
    args, work = fc.parse(ap, argv, summarize, os.path.join(HERE, "results", "epoch_noise"))
    if args is None:
        return 0
    state: dict = {"shares": args.shares}
    install(state)
    kinds = args.datasets.replace(",", "_") + args.tag
    name = f"epoch_noise_{args.null.replace(',', '_')}_r{args.rate:g}_{kinds}.csv"
    path = os.path.join(args.out, name)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS, lineterminator="\n")
        w.writeheader()
        for name in args.datasets.split(","):
            for seed in fc._seeds(args.seeds):
                case = fc.build(work, name, seed, args.n_val, args.rate)
                for size, null in [(int(s), n) for s in args.sizes.split(",")
                                   for n in args.null.split(",")]:  # fmt: skip
                    lines = one_run(state, case, name, seed, size, null)
                    w.writerows({k: x.get(k, "") for k in FIELDS} for x in lines)
                    f.flush()
                    zs = [x["z"] for x in lines if "z" in x]
                    print(name, seed, lines[0]["val_rows"], lines[0]["changed"],
                          f"{min(zs):.2f}" if zs else "-", flush=True)  # fmt: skip
    return 0


def _ci(k: int, n: int) -> str:
    """``k/n = rate [95% Clopper-Pearson interval]``, in percent."""
    from scipy.stats import beta

    lo = beta.ppf(0.025, k, n - k + 1) if k else 0.0
    hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return f"{k}/{n} = {100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def summarize(paths: list) -> str:
    """Markdown: per dataset, null and validation rows, the null z spread (sd of z over every
    candidate; ``lower sd``: the root mean square of the negative z, the tail a false change
    comes from; ``rho``: ``(mean z^2 - 1) / n``, the epoch noise per held-out row) and the
    runs in which some candidate passes the Bonferroni bar alone (before) and the bar widened
    by the epoch noise (:func:`.recommendation.z_required` on the ``n`` held-out rows, now).
    """
    from collections import defaultdict

    from sgd_influence_plugin.recommendation import z_required

    runs = defaultdict(list)
    for path in paths:
        for r in csv.DictReader(open(path, newline="")):
            key = (r["dataset"], r["null"], int(r["val_rows"]))
            runs[key, r["seed"]].append(float(r["z"]) if r["z"] else math.nan)
    groups = defaultdict(list)
    for (key, _), zs in runs.items():
        groups[key].append(np.array([z for z in zs if not math.isnan(z)]))
    out = ["| data | null | validation rows | runs | candidates | mean z | sd z | lower sd | rho "
           "| runs changing, before | now |", "|---" * 11 + "|"]  # fmt: skip
    for (ds, null, v), g in sorted(groups.items()):
        z, n = np.concatenate(g), v // 2
        neg = z[z < 0]
        before = sum(bool(len(x)) and x.min() <= -z_required(len(x)) for x in g)
        now = sum(bool(len(x)) and x.min() <= -z_required(len(x), heldout_rows=n) for x in g)
        out.append(f"| {ds} | {null} | {v} | {len(g)} | {len(z)} | {z.mean():.2f} | "
                   f"{z.std(ddof=1):.2f} | {math.sqrt(np.mean(neg**2)):.2f} | "
                   f"{(np.mean(z**2) - 1) / n:.4f} | {_ci(before, len(g))} | "
                   f"{_ci(now, len(g))} |")  # fmt: skip
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
