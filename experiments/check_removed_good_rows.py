"""What the recommendation's check says of the good rows the recommendation removed.

A diagnostic for ``recommendation_protocol.py``. Precision is counted against the flips the
protocol made, so a removed row whose label the protocol did not flip counts as a mistake. For
each finished noisy task this runs the plugin's own held-out check (same half of the validation
set, same epoch, same seed) on four removals and prints, and writes to
``OUT/removed_good_rows.csv``, each one's held-out loss change and z:

- ``flips``: the recommended rows whose label was flipped;
- ``good``: the recommended rows whose label was not (the "false positives");
- ``random_good``: as many rows drawn at random among those whose label was not flipped;
- ``recommended``: all of them, as the plugin checked it.

If ``good`` lowers the held-out loss while ``random_good`` does not, the rows the precision
counts as mistakes are harmful ones by the same test the recommendation passed.

    python experiments/check_removed_good_rows.py [--tasks uniform_0,confusable_0] [--variant v5]
"""

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import recommendation_protocol as rp  # noqa: E402
import retrain_candidate as rcand  # noqa: E402

from sgd_influence_plugin import places, staged_commit  # noqa: E402
from sgd_influence_plugin import recommend as rc  # noqa: E402
from sgd_influence_plugin.dataset import load_dataset  # noqa: E402
from sgd_influence_plugin.executor import LocalExecutor  # noqa: E402

KEYS = ("task", "removal", "n", "loss_change", "standard_error", "z")
OUTPUT = "removed_good_rows.csv"


def removals(removed, flipped, seed):
    """The four removals (name -> int64 row indices, ascending) of one task, from the rows the
    recommendation removed (bool (N,)) and the flipped labels (bool (N,)).
    """
    good = np.flatnonzero(removed & ~flipped)
    rng = np.random.RandomState(seed + 77)
    return {
        "recommended": np.flatnonzero(removed),
        "flips": np.flatnonzero(removed & flipped),
        "good": good,
        "random_good": np.sort(rng.choice(np.flatnonzero(~flipped), len(good), replace=False)),
    }


def run_task(a, task):
    """The four removals of one finished task, each through the held-out check: its rows."""
    seed, out, model, train_csv, label = rcand.load_task(a.work, task)
    flipped = rcand.flipped_rows(train_csv, os.path.join(a.work, "pool"))
    n = len(flipped)
    sets = removals(rcand.recommended_rows(out, a.variant, n), flipped, seed)
    if not len(sets["recommended"]):
        print(f"{task}: the recommendation changed nothing; skipped")
        return []
    shapes = model.info.input_shapes
    train = load_dataset(train_csv, shapes).arrays
    val = load_dataset(os.path.join(out, "val.csv"), shapes).arrays
    # The plugin's check: its held-out half, its order seed, its epoch (rc's defaults).
    _, held = rc.split_validation(len(val[label]), seed)
    heldout = {k: v[held] for k, v in val.items()}
    labels = np.asarray(train[label]).reshape(n, -1)[:, 0].astype(np.int64)
    cands = [rc.Candidate(0.0, "remove", rows, labels[rows]) for rows in sets.values()]
    sol = model.info.solver
    rc.check_candidates(
        model, train, heldout, label, cands, sol.lr, sol.batch_size, seed=seed + rc.SEED_OFFSET,
        rows=rc.CHECK_ROWS, executor=LocalExecutor(a.jobs),
    )  # fmt: skip
    rows = []
    for name, c in zip(sets, cands):
        rows.append([task, name, len(c.rows), c.loss_change, c.standard_error, c.z])
        print(f"{task:14s} {name:12s} {len(c.rows):5d} rows: held-out loss "
              f"{c.loss_change:+.5f} (z {c.z:+.1f})", flush=True)  # fmt: skip
    return rows


def main(argv=None):
    """Check the tasks' removals; print and commit ``OUT/removed_good_rows.csv``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", default=os.path.join(HERE, "protocol_work"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "recommendation_protocol"))
    p.add_argument("--variant", default="v5", help="the plugin run whose recommendation (v5)")
    p.add_argument("--tasks", help="comma-separated; default: every finished noisy task")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for the epochs")
    a = p.parse_args(argv)
    root = os.path.join(a.out, "tasks")
    tasks = a.tasks.split(",") if a.tasks else sorted(
        t for t in os.listdir(root)
        if not t.startswith(("clean", ".")) and os.path.exists(os.path.join(root, t, "rows.csv"))
    )  # fmt: skip
    places.check_output_folder(a.out, "--out", (OUTPUT,))  # before the epochs
    rows = [r for t in tasks for r in run_task(a, t)]
    with staged_commit.staging(a.out, "--out") as stage:
        rp.pp.write_rows(os.path.join(stage, OUTPUT), KEYS, rows)
        moves = [(os.path.join(stage, OUTPUT), os.path.join(a.out, OUTPUT))]
        staged_commit.commit_staged(a.out, moves, [], "--out")


if __name__ == "__main__":
    main()
