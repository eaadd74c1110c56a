"""The one-way check's null spread (issue 36, the one-way check's false changes).

Each clean run of :mod:`false_changes` at one validation size, with the one-way check spied
on: every candidate's held-out mean difference and its row standard error, and a second
epoch on the data as given in *another* sample order (``base2``), so each run also gives one
draw of the settling epoch's own noise. ``--null random`` replaces the candidates by seeded
random sets of the same sizes (four of 5-20% where the rule finds no suspects, or always with
``--shares``).

Writes ``OUT/epoch_noise_<null>_<datasets>.csv``: one row per candidate with ``d`` (mean of
candidate - base over the held-out rows), ``se`` (its row standard error), ``z = d / se``,
and the run's ``d2`` / ``se2`` (base2 - base, the second order's difference); ``chosen``
(1 for the candidate the rule chose), ``flips`` (flipped rows in it, with ``--rate``),
``acc`` (held-out accuracy change); with ``--replicate`` ``z_rep`` / ``acc_rep``, the same
candidate checked in the second order (what :func:`.heldout_check.check_again` does for the
chosen one); ``halves_corr`` / ``sigma2``: the correlation of the two validation halves'
replayed influences and the null spread ``1 + rho n`` it would predict if the check's epoch
acted as the replay's (it does not: ``docs/recommendation.md``).

``--summarize A.csv,B.csv`` prints the table of the docs: runs changing rows with one order and
with both.

Run: ``.venv/bin/python experiments/epoch_noise.py --datasets patterns --seeds 0-29
--n-val 600 --sizes 600``.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import false_changes as fc  # noqa: E402
import small_validation as sv  # noqa: E402

from sgd_influence_plugin import crossfit, recommend  # noqa: E402
from sgd_influence_plugin.recommendation import choose  # noqa: E402
from sgd_influence_plugin.suspects import Candidate  # noqa: E402

FIELDS = ("dataset", "null", "seed", "val_rows", "heldout", "n_cands", "cand", "size", "d",
          "se", "z", "d2", "se2", "changed", "z_rep", "chosen", "flips", "halves_corr",
          "sigma2", "acc", "acc_rep")  # fmt: skip


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
        reps = [copy.copy(c) for c in cs] if state.get("replicate") else []
        real_check(model, train, heldout, label, reps, lr, bs, wd, seed=seed + 1,
                   base_out=other, **kw2)  # fmt: skip
        b1, b2 = base[0][0], other[0][0]
        state["d2"] = _mean_se(b2 - b1)
        chosen = choose(cs)
        flipped = state.get("flipped")
        state["cands"] = [
            (len(c.rows), *_mean_se(c.heldout_loss - b1), reps[k].z if reps else math.nan,
             int(c is chosen), int(flipped[c.rows].sum()) if flipped is not None else "",
             c.accuracy_change, reps[k].accuracy_change if reps else math.nan)
            for k, c in enumerate(cs)
        ]  # fmt: skip
        return out

    recommend.check_candidates, recommend.candidates = check, cands
    real_replay = crossfit.replay_with_candidates

    def replay(model, train, val, candidate_rows, *a, **k):
        infl, stats = real_replay(model, train, val, candidate_rows, *a, **k)
        n, n_a = len(next(iter(val.values()))), len(candidate_rows)
        i_a = infl[1]
        i_b = (n * infl[0] - n_a * i_a) / (n - n_a)
        cov = float(np.cov(i_a, i_b)[0, 1])
        var_a = float(np.var(i_a, ddof=1))
        state.setdefault("halves", []).append(
            (cov / np.sqrt(var_a * np.var(i_b, ddof=1)),
             1 + (n - n_a) * cov / (n_a * max(var_a - cov, 1e-300))))  # fmt: skip
        return infl, stats

    crossfit.replay_with_candidates = replay
    from sgd_influence_plugin import phases

    if hasattr(phases, "replay_with_candidates"):
        phases.replay_with_candidates = replay


def one_run(state, case, name, seed, size, null) -> list:
    """The plugin on ``size`` validation rows; one record per candidate checked."""
    val_csv = sv.subset_csv(case["val"], size, seed)
    out = os.path.join(os.path.dirname(case["model"]), f"en{size}_{null}", "influence.csv")
    state.update(seed=seed, null=null, cands=[], d2=(math.nan, math.nan),
                 flipped=case.get("flipped"), halves=[])  # fmt: skip
    row = sv.run_one(case, val_csv, out, [])
    base = {"dataset": name, "null": null, "seed": seed, "val_rows": row["val_rows"],
            "heldout": row["val_rows"] // 2, "n_cands": len(state["cands"]),
            "d2": state["d2"][0], "se2": state["d2"][1], "changed": row["changed"]}  # fmt: skip
    if state["halves"]:
        base["halves_corr"] = float(np.mean([h[0] for h in state["halves"]]))
        base["sigma2"] = float(np.mean([h[1] for h in state["halves"]]))
    lines = [dict(base, cand=k, size=s, d=d, se=se, z=d / se if se > 0 else math.nan,
                  z_rep=zr, chosen=ch, flips=fl, acc=acc, acc_rep=acc_rep)
             for k, (s, d, se, zr, ch, fl, acc, acc_rep) in enumerate(state["cands"])]  # fmt: skip
    return lines or [dict(base, cand=-1)]


def main(argv=None) -> int:
    """Run every dataset, seed and size; write the CSV as it goes."""
    ap = fc.run_arguments(__doc__, "0-29", "300", 300)
    ap.add_argument("--null", default="rule", help="rule, random or both (rule,random)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--shares", action="store_true", help="random sets of 5-20%% always")
    ap.add_argument(
        "--replicate",
        action="store_true",
        help="also check every candidate in a second sample order (z_rep)",
    )
    args, work = fc.parse(ap, argv, summarize, os.path.join(HERE, "results", "epoch_noise"))
    if args is None:
        return 0
    state: dict = {"shares": args.shares, "replicate": args.replicate}
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
    """Markdown: per dataset, null, flip rate and validation rows, the null z spread (sd of z
    over every candidate; ``lower sd``: the root mean square of the negative z, the tail a
    false change comes from; ``rho``: ``(mean z^2 - 1) / n``, the epoch noise per held-out
    row), and the runs that change rows: the chosen candidate passing the Bonferroni bar
    (before), and passing it again in the second sample order (``z_rep``, now; CSVs written
    with ``--replicate``), with the flipped share of the rows changed where labels were
    flipped.
    """
    from collections import defaultdict

    from sgd_influence_plugin.recommendation import z_required

    runs = defaultdict(list)
    for path in paths:
        rate = re.search(r"_r([0-9.]+)_", os.path.basename(path)).group(1)
        for r in csv.DictReader(open(path, newline="")):
            key = (r["dataset"], r["null"], rate, int(r["val_rows"]))
            runs[key, r["seed"]].append(r)
    groups = defaultdict(list)
    for (key, _), rr in runs.items():
        groups[key].append([r for r in rr if r["z"]])
    out = ["| data | null | flipped | validation rows | runs | candidates | mean z | sd z | "
           "lower sd | rho | runs changing, before | in both orders | flipped share of "
           "the rows changed, before / both |", "|---" * 13 + "|"]  # fmt: skip
    for (ds, null, rate, v), g in sorted(groups.items()):
        z, n = np.array([float(r["z"]) for rr in g for r in rr]), v // 2
        neg = z[z < 0]
        chosen = [next((r for r in rr if r.get("chosen") == "1"), None) for rr in g]
        bars = [z_required(len(rr)) for rr in g]
        before = [c for c in chosen if c is not None]
        both = [c for c, b in zip(chosen, bars)
                if c is not None and c.get("z_rep") and float(c["z_rep"]) <= -b]  # fmt: skip

        def share(cs):
            rows = sum(int(c["size"]) for c in cs)
            return f"{sum(int(c['flips'] or 0) for c in cs) / rows:.2f}" if rows else "-"

        out.append(f"| {ds} | {null} | {rate} | {v} | {len(g)} | {len(z)} | {z.mean():.2f} | "
                   f"{z.std(ddof=1):.2f} | {math.sqrt(np.mean(neg**2)):.2f} | "
                   f"{(np.mean(z**2) - 1) / n:.4f} | {_ci(len(before), len(g))} | "
                   f"{_ci(len(both), len(g))} | {share(before)} / {share(both)} |")  # fmt: skip
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
