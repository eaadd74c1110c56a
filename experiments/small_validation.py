"""Issue 36, item 7: the checked recommendation on small validation sets (the two-way check).

For each table (scikit-learn's breast cancer and wine, standardized; and the suite's
generated image patterns, whose model disagrees with some clean rows), each seed and each label
setting (clean, and ``--rate`` of the training labels flipped, drawn from ``1000 + seed`` so
the flips are not the first steps of the run's epoch), the case is trained by ``nnabla_cli
train`` (:mod:`tabular_data`), and the plugin runs at its defaults on the validation CSV and
on seeded subsets of it of ``--sizes`` rows. The floor (``recommend.MIN_TWO_WAY``) is lowered
to ``--floor`` here, so the runs below it measure what the floor keeps out.

Reported per run: the check that ran (one-way, two-way), rows changed, precision and recall
of the changed rows against the flips; for the two-way check also the sets the two halves
gave for the chosen procedure (``S_A``, ``S_B``) and their intersection, against the rows
written (the procedure refit on every row).

Writes ``OUT/small_validation.csv`` and ``OUT/small_validation.md``. Needs scikit-learn
(an experiment dependency only).

Run: ``.venv/bin/python experiments/small_validation.py``.
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

import tabular_data  # noqa: E402

from sgd_influence_plugin import pooled_check, recommend  # noqa: E402
from sgd_influence_plugin.runner import RunRequest, run  # noqa: E402
from sgd_influence_plugin.settings import InfluenceSettings  # noqa: E402

FIELDS = ("dataset", "labels", "seed", "size", "n_train", "flips", "val_rows", "check",
          "suspects", "checked", "best_z", "changed", "precision", "recall", "z", "s_a", "s_b",
          "s_a_and_s_b", "precision_and", "recall_and", "reason")  # fmt: skip


def build_patterns(work: str, seed: int, rate: float, n_val: int = 200) -> dict:
    """The test suite's generated 14x14 patterns (or Fashion-MNIST with ``make data``): 600
    training rows (``rate`` of them flipped, from ``1000 + seed``) and ``n_val`` validation rows,
    the MLP trained 15 epochs by ``nnabla_cli train``. Unlike the tables, its model
    disagrees with some clean rows, so the check runs on clean labels too.
    """
    from support.fashion_mnist import make_png_dataset, write_noisy_train
    from support.netdef import NetSpec
    from support.results import train_result

    more = "" if n_val == 200 else f"_v{n_val}"
    folder = os.path.join(work, f"patterns_s{seed}_r{rate:g}{more}")
    data = make_png_dataset(os.path.join(folder, "data"), 600, n_val, size=14, seed=seed)
    noisy_csv, flipped = write_noisy_train(data, rate, 1000 + seed)
    data = dict(data, train=noisy_csv)
    spec = NetSpec(arch="mlp", batch_size=32, lr=0.1, max_epoch=15, seed=3)
    result = train_result(os.path.join(folder, "result"), data, spec)
    return {**data, "model": os.path.join(str(result), "results.nnp"), "flipped": flipped}


def subset_csv(val_csv: str, rows: int, seed: int) -> str:
    """The validation CSV's seeded subset of ``rows`` rows (all when it has no more)."""
    with open(val_csv, newline="") as f:
        table = list(csv.reader(f))
    body = table[1:]
    if rows >= len(body):
        return val_csv
    keep = np.sort(np.random.RandomState(2000 + seed).choice(len(body), rows, replace=False))
    path = val_csv[: -len(".csv")] + f"_{rows}.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(table[0])
        w.writerows(body[i] for i in keep)
    return path


def _shares(changed: np.ndarray, flipped: np.ndarray):
    """(precision, recall) of the changed rows against the flips (NaN where undefined)."""
    k = changed.sum()
    precision = float(flipped[changed].mean()) if k else float("nan")
    recall = float(changed[flipped].mean()) if flipped.any() else float("nan")
    return precision, recall


def run_one(case: dict, val_csv: str, out: str, captured: List) -> Dict:
    """One plugin run at the defaults; what it changed and which check ran."""
    captured.clear()
    req = RunRequest(output=out, model=case["model"], train=case["train"], val=val_csv,
                     settings=InfluenceSettings(jobs=1))  # fmt: skip
    run(req)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    flipped = case["flipped"]
    changed = np.zeros(len(flipped), bool)
    for r in rows:
        changed[int(r["datasource_index"])] = r["action"] != "keep"
    import yaml

    facts = yaml.safe_load(open(out[: -len(".csv")] + "_settings.yaml"))
    rec = facts["recommendation"]
    design = rec.get("check", {}).get("design", "none") if rec["available"] else "none"
    precision, recall = _shares(changed, flipped)
    zs = [c["z"] for c in rec.get("checked", [])]
    row = {
        "suspects": rec.get("suspects", 0), "checked": len(zs), "best_z": min(zs) if zs else "",
        "n_train": len(flipped), "flips": int(flipped.sum()),
        "val_rows": facts["n_val"], "check": design.split(":")[0],
        "changed": int(changed.sum()), "precision": precision, "recall": recall,
        "z": rec["chosen"]["z"] if rec.get("chosen") else "",
        "reason": rec["reason"][:120],
    }  # fmt: skip
    chosen = captured[0].chosen if captured else None
    if chosen is not None:
        both = np.intersect1d(chosen.rows_a, chosen.rows_b)
        mask = np.zeros(len(flipped), bool)
        mask[both] = True
        row.update(s_a=len(chosen.rows_a), s_b=len(chosen.rows_b), s_a_and_s_b=len(both))
        row["precision_and"], row["recall_and"] = _shares(mask, flipped)
    return row


def _f(x, digits=2) -> str:
    """``x`` with ``digits`` decimals, or ``-`` where there is none."""
    return "-" if x in ("", None) or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def report(lines: List[Dict], command: str) -> str:
    """The markdown: false changes on clean labels and changes on flipped ones by validation
    size, then every run on each table's whole validation CSV, seed by seed.
    """
    out = ["# The checked recommendation on small validation sets", "", f"`{command}`", ""]
    out += ["## By validation rows (runs with any change / runs; rows changed, precision and "
            "recall pooled over the runs)", "",
            "| dataset | validation rows | check | clean: runs checking a change | clean: runs "
            "changing | clean: rows changed | noisy: runs changing | noisy: rows changed | "
            "precision | recall |",
            "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    keys = sorted({(r["dataset"], r["val_rows"]) for r in lines})
    for name, v in keys:
        same = [r for r in lines if r["dataset"] == name and r["val_rows"] == v]
        clean = [r for r in same if r["labels"] == "clean"]
        noisy = [r for r in same if r["labels"] == "noisy"]
        hit = sum(r["changed"] * r["precision"] for r in noisy if r["changed"])
        changed = sum(r["changed"] for r in noisy)
        flips = sum(r["flips"] for r in noisy)
        out.append(
            f"| {name} | {v} | {same[0]['check']} | {sum(r['checked'] > 0 for r in clean)} | "
            f"{sum(r['changed'] > 0 for r in clean)}"
            f"/{len(clean)} | {sum(r['changed'] for r in clean)} | "
            f"{sum(r['changed'] > 0 for r in noisy)}/{len(noisy)} | {changed} | "
            f"{_f(hit / changed if changed else '')} | {_f(hit / flips if flips else '')} |"
        )
    out += ["", "## Each table's whole validation CSV, seed by seed (noisy labels)", "",
            "| dataset | seed | validation rows | flips | changed | precision | recall | z | "
            "S_A, S_B, both | precision / recall of S_A and S_B |",
            "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in lines:
        if r["labels"] != "noisy" or r["size"] != "full":
            continue
        sets, both = "-", "-"
        if r.get("s_a", "") != "":
            sets = f"{r['s_a']}, {r['s_b']}, {r['s_a_and_s_b']}"
            both = f"{_f(r.get('precision_and'))} / {_f(r.get('recall_and'))}"
        out.append(
            f"| {r['dataset']} | {r['seed']} | {r['val_rows']} | {r['flips']} | {r['changed']} | "
            f"{_f(r['precision'])} | {_f(r['recall'])} | {r['z'] or '-'} | {sets} | {both} |"
        )
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    """Build the cases, run the plugin on each validation size, write the CSV and report."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="breast_cancer,wine,patterns")
    ap.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--sizes", default="10,15,20,30,40,60,100,full")
    ap.add_argument("--floor", type=int, default=10, help="MIN_TWO_WAY for this experiment")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "small_validation"))
    ap.add_argument("--merge", default=None, help="only rewrite the report from these CSVs "
                    "(comma-separated, written by earlier runs of this script)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.merge:
        return _write(args.out, _read(args.merge.split(",")), argv)
    recommend.MIN_TWO_WAY = pooled_check.MIN_TWO_WAY = args.floor
    captured: List = []
    real = pooled_check.recommend_two_way

    def spy(*a, **k):
        rec = real(*a, **k)
        captured.append(rec)
        return rec

    import sgd_influence_plugin.runner as runner_mod

    runner_mod.pooled_check.recommend_two_way = spy
    work = args.work or tempfile.mkdtemp(prefix="small_validation_")
    lines = []
    for name in args.datasets.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            for labels, rate in (("clean", 0.0), ("noisy", args.rate)):
                if name == "patterns":
                    case = build_patterns(work, seed, rate)
                else:
                    case = tabular_data.build_case(
                        work, name, "std", seed, rate, noise_seed=1000 + seed
                    )
                for size in args.sizes.split(","):
                    n = 10**9 if size == "full" else int(size)
                    val_csv = subset_csv(case["val"], n, seed)
                    if size != "full" and val_csv == case["val"]:
                        continue  # no subset: the whole CSV is run once, as "full"
                    result = os.path.dirname(case["model"])
                    out = os.path.join(result, f"v{size}", "influence.csv")
                    row = {"dataset": name, "labels": labels, "seed": seed, "size": size,
                           **run_one(case, val_csv, out, captured)}  # fmt: skip
                    lines.append(row)
                    print({k: row.get(k, "") for k in FIELDS if k != "reason"}, flush=True)
    return _write(args.out, lines, argv)


def _read(paths: List[str]) -> List[Dict]:
    """The rows of earlier runs' CSVs, numbers as numbers."""
    lines = []
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                for k, v in row.items():
                    if k in ("n_train", "flips", "val_rows", "changed", "seed", "suspects",
                             "checked", "s_a", "s_b", "s_a_and_s_b") and v != "":  # fmt: skip
                        row[k] = int(v)
                    elif k in ("precision", "recall", "precision_and", "recall_and") and v:
                        row[k] = float(v)
                lines.append(row)
    return lines


def _write(out: str, lines: List[Dict], argv) -> int:
    """``OUT/small_validation.csv`` and ``.md``."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "small_validation.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS, lineterminator="\n")
        w.writeheader()
        for row in lines:
            w.writerow({k: row.get(k, "") for k in FIELDS})
    given = argv if argv is not None else sys.argv[1:]
    command = "experiments/small_validation.py " + " ".join(given)
    with open(os.path.join(out, "small_validation.md"), "w") as f:
        f.write(report(lines, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
