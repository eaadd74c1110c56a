"""Retrain from scratch on a candidate of the recommendation's check that it did not choose.

A diagnostic for ``recommendation_protocol.py``: does the check's choice also suit a model
retrained from scratch? For one finished protocol task it rebuilds the candidates exactly as the
plugin did (its influence CSV, the base model's probabilities), removes the candidate of the given
order and level, trains the sample CNN from scratch with the task's seed and initialisation (as the
protocol's ``recommended`` row), and prints the test accuracy and loss.

    python experiments/retrain_candidate.py TASK ORDER LEVEL [--work protocol_work] [--variant v5]

e.g. ``python retrain_candidate.py uniform_0 given_label 0.2``. ORDER ``flips`` removes exactly
the task's flipped labels and nothing else (LEVEL is ignored): the most any removal can do.
ORDER ``recommended_flips`` removes the rows the recommendation removed whose label was flipped,
and keeps the good rows it removed: set against ``flips`` and the recommendation, it tells
whether what the recommendation loses is the wrong labels it missed or the good rows it took.
ORDER ``relabel_sure`` takes the rows the recommendation removed and relabels those whose
suggested class has a probability of at least LEVEL to that class (their images stay), and
removes the others: does a confident relabelling help a model retrained from scratch more than
removal does? Two oracles bound what any relabelling can do: ORDER ``recommended_fixed`` gives
the flipped labels among the rows the recommendation removed their true class and keeps every
row (the best any action on those rows can do), ORDER ``fixed`` does so for every flipped label
(the clean data's model, for the seeds whose clean task was not run).
The training goes to ``WORK/rec_TASK/diag_ORDER_LEVEL_<rows>/`` (with a relabelling, named
after the rows' actions, its training CSV beside it) and is reused by a later call.
The result is also recorded in the protocol's ``OUT/tasks/TASK/diagnostics.csv`` (one row per
change, replaced when run again), which the protocol's report shows below the task's methods.
"""

import argparse
import csv
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import recommendation_protocol as rp  # noqa: E402

from sgd_influence_plugin import core  # noqa: E402
from sgd_influence_plugin import evaluate as ev  # noqa: E402
from sgd_influence_plugin import recommend as rc  # noqa: E402
from sgd_influence_plugin.dataset import load_dataset  # noqa: E402
from sgd_influence_plugin.nnabla_adapter import load_model  # noqa: E402
from sgd_influence_plugin.settings import read_yaml  # noqa: E402


def load_task(work, task):
    """A finished protocol task's (seed, work folder, base model, training CSV, label column)."""
    seed = int(task.rsplit("_", 1)[1])
    out = os.path.join(work, "rec_" + task)
    model = load_model(model=os.path.join(out, "base", "results.nnp"))
    label = next(iter(model.info.label_classes))
    return seed, out, model, os.path.join(out, "train.csv"), label


def task_labels(train_csv, pool):
    """``(given, truth)``, int64 (N,) each, in the task CSV's order: the label each row carries
    and its label in the pool (before the noise). One read of each CSV.
    """
    _, pool_rows = rp.read_csv_table(os.path.join(pool, "train.csv"))
    truth = {os.path.abspath(os.path.join(pool, r[0])): int(r[1]) for r in pool_rows}
    _, rows = rp.read_csv_table(train_csv)
    given = np.array([int(r[1]) for r in rows], dtype=np.int64)
    return given, np.array([truth[os.path.abspath(r[0])] for r in rows], dtype=np.int64)


def flipped_rows(train_csv, pool):
    """Bool (N,): the task's rows whose label differs from the pool's (the flipped labels)."""
    given, truth = task_labels(train_csv, pool)
    return given != truth


def fixed_labels(truth, flipped, among=None):
    """int64 (N,): the oracle relabelling of the ``fixed`` diagnostics, ``truth`` on the
    ``flipped`` rows (bool (N,)), only those also in ``among`` (bool (N,)) when given, and -1
    (unchanged) elsewhere.
    """
    pick = flipped if among is None else flipped & among
    return np.where(pick, truth, -1).astype(np.int64)


def influence_rows(out, variant):
    """The rows (dicts) of the plugin run ``influence_VARIANT``'s influence CSV, in its order
    (sorted by influence; ``datasource_index`` gives the training row).
    """
    with open(os.path.join(out, f"influence_{variant}", "influence.csv"), newline="") as f:
        return list(csv.DictReader(f))


def recommended_rows(out, variant, n):
    """Bool (N,): the rows the plugin run ``influence_VARIANT`` marked ``remove``."""
    removed = np.zeros(n, bool)
    for r in influence_rows(out, variant):
        removed[int(r["datasource_index"])] = r["action"] == "remove"
    return removed


def relabel_sure(out, variant, n, level):
    """``(removed bool (N,), new_label int64 (N,))`` of the ``relabel_sure`` diagnostic: of the
    rows the plugin run ``influence_VARIANT`` marked ``remove``, those whose ``confidence`` (the
    model's probability of its ``suggested_label``) is at least ``level`` get that label
    (``new_label``; -1 elsewhere), the others are removed.
    """
    removed = np.zeros(n, bool)
    new_label = np.full(n, -1, dtype=np.int64)
    for r in influence_rows(out, variant):
        if r["action"] != "remove":
            continue
        j = int(r["datasource_index"])
        if float(r["confidence"]) >= level:
            new_label[j] = int(r["suggested_label"])
        else:
            removed[j] = True
    return removed, new_label


def write_relabelled(train_csv, label, new_label, path):
    """Write ``train_csv`` to ``path`` with the label column ``label`` (a variable name, e.g.
    ``y``) set to ``new_label`` (int (N,), -1 = unchanged) row by row; images and order stay.
    """
    header, rows = rp.read_csv_table(train_csv)
    col = [h.split(":", 1)[0] for h in header].index(label)
    rows = [list(r) for r in rows]
    for j in np.flatnonzero(new_label >= 0):
        rows[j][col] = str(int(new_label[j]))
    rp.pp.write_rows(path, header, rows)


def candidate_rows(out, a, model, train, label):
    """Bool (N,): the rows of the candidate (a.order, a.level), rebuilt as the plugin did."""
    n = len(train[label])
    scores = np.full(n, np.nan)
    for r in influence_rows(out, a.variant):
        scores[int(r["datasource_index"])] = float(r["influence"])
    # Since cross-fitting (issue 37) the influence column uses every validation row and the
    # candidates were ordered by half A's scores, the trials CSV's candidate_order_m columns;
    # runs before it have none, and their influence column was half A's.
    trials = os.path.join(out, f"influence_{a.variant}", "influence_trials.csv")
    if os.path.exists(trials):
        with open(trials, newline="") as f:
            rows = list(csv.DictReader(f))
        names = [k for k in rows[0] if k.startswith("candidate_order_")] if rows else []
        if names:
            per_trial = np.array([[float(r[k]) for r in rows] for k in names])
            combined = core.combine_trials(per_trial)[0]
            scores = np.full(n, np.nan)
            scores[[int(r["datasource_index"]) for r in rows]] = combined
    if not np.all(np.isfinite(scores)):
        raise SystemExit(f"{out}: the influence CSV does not cover every training row")
    labels = np.asarray(train[label]).reshape(n, -1)[:, 0]
    facts = read_yaml(os.path.join(out, f"influence_{a.variant}", "influence_settings.yaml"))
    reference = None
    if (facts["recommendation"].get("check") or {}).get("neighbours", {}).get("used"):
        # the run's third rank: half A of its validation rows, as the runner split it
        val = load_dataset(os.path.join(out, "val.csv"), model.info.input_shapes).arrays
        first, _ = rc.split_validation(len(val[label]), facts["requested"]["seed"])
        reference = {k: v[first] for k, v in val.items()}
    prob, agreement, _ = rc.training_signals(model, train, reference, label)
    cands = rc.candidates(rc.find_suspects(labels, prob, scores[None, :], agreement))
    chosen = [c for c in cands if c.order == a.order and c.level == a.level]
    if not chosen:
        raise SystemExit(f"no candidate {a.order} at {a.level:g} (equal sets are tried once)")
    removed = np.zeros(n, bool)
    removed[chosen[0].rows] = True
    return removed


def main(argv=None):
    """Retrain on the candidate; print and record its test accuracy and loss."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("task", help="a finished protocol task, e.g. uniform_0")
    p.add_argument(
        "order",
        choices=rc.ORDERS
        + ("flips", "recommended_flips", "relabel_sure", "recommended_fixed", "fixed"),
    )
    p.add_argument(
        "level", type=float, help="one of the given-label levels, e.g. 0.2 (relabel_sure: the "
        "least probability of the suggested class that is relabelled; flips, "
        "recommended_flips and the two oracles ignore it: give 0)"
    )  # fmt: skip
    p.add_argument("--work", default=os.path.join(HERE, "protocol_work"))
    p.add_argument("--variant", default="v5", help="the plugin run to rebuild from (v5)")
    p.add_argument(
        "--out",
        default=os.path.join(HERE, "results", "recommendation_protocol"),
        help="the protocol's results folder whose tasks/TASK/ records the result",
    )
    a = p.parse_args(argv)
    seed, out, model, train_csv, label = load_task(a.work, a.task)
    shapes = model.info.input_shapes
    given, truth = task_labels(train_csv, os.path.join(a.work, "pool"))
    flipped = given != truth
    new_label = np.full(len(flipped), -1, dtype=np.int64)
    if a.order == "relabel_sure":
        removed, new_label = relabel_sure(out, a.variant, len(flipped), a.level)
    elif a.order in ("recommended_fixed", "fixed"):
        removed = np.zeros(len(flipped), bool)
        among = recommended_rows(out, a.variant, len(flipped)) if a.order != "fixed" else None
        new_label = fixed_labels(truth, flipped, among)
    elif a.order == "flips":
        removed = flipped
    elif a.order == "recommended_flips":
        removed = recommended_rows(out, a.variant, len(flipped)) & flipped
    else:
        train = load_dataset(train_csv, shapes).arrays  # only the candidates need the images
        removed = candidate_rows(out, a, model, train, label)
    relabelled = new_label >= 0
    csv_path = train_csv
    if relabelled.any():
        action = np.where(removed, "remove", "keep").astype(object)
        action[relabelled] = [f"relabel {c}" for c in new_label[relabelled]]
        folder = rp.recommended_folder(action, f"diag_{a.order}_{a.level:g}")
        csv_path = os.path.join(out, folder + "_train.csv")
        write_relabelled(train_csv, label, new_label, csv_path)
    else:
        folder = rp.removal_folder(f"diag_{a.order}_{a.level:g}", removed)
    with open(os.path.join(out, "net.nntxt")) as f:
        config = f.read()
    nnp = rp.train_once(out, folder, config, csv_path, np.flatnonzero(~removed), seed)
    test = load_dataset(os.path.join(out, "test.csv"), shapes)
    acc, loss = ev.accuracy_and_loss(load_model(model=nnp), test)
    told = ""
    if relabelled.any():
        told = (
            f", relabelled {int(relabelled.sum())} ({int(np.sum(new_label == truth))} to "
            f"their true class)"
        )
    print(
        f"{a.task} {a.order} {a.level:g}: removed {int(removed.sum())}{told}, test accuracy "
        f"{acc:.4f}, test loss {loss:.4f}"
    )
    method = {
        "flips": "flips",
        "fixed": "fixed",
        "recommended_flips": f"recommended_flips ({a.variant})",
        "recommended_fixed": f"recommended_fixed ({a.variant})",
    }.get(a.order, f"{a.order} {a.level:g} ({a.variant})")
    record(
        os.path.join(a.out, "tasks", a.task), method, removed | relabelled, flipped, acc, loss,
        n_relabel=int(relabelled.sum()),
    )  # fmt: skip


def record(task_dir, method, changed, flipped, acc, loss, n_relabel=0):
    """Put this change's row into ``task_dir/diagnostics.csv`` (atomically; a row of the same
    method is replaced). ``changed``: bool (N,) the rows changed, of which ``n_relabel`` were
    relabelled and the rest removed. Nothing is written for a task the protocol has not
    finished.
    """
    if not os.path.exists(os.path.join(task_dir, "rows.csv")):
        print(f"{task_dir}: not a finished protocol task; the result is not recorded")
        return
    labels, seed = os.path.basename(task_dir).rsplit("_", 1)
    _, p, r, _ = rp.prf(changed, flipped)
    n = int(changed.sum())
    row = dict(
        labels=labels, seed=seed, method=method, n_changed=n, n_relabel=n_relabel,
        n_remove=n - n_relabel,
        test_accuracy=acc, test_loss=loss, precision=p, recall=r, seconds="",
    )  # fmt: skip
    path = os.path.join(task_dir, rp.DIAGNOSTICS)
    rows = []
    if os.path.exists(path):
        with open(path, newline="") as f:
            rows = [x for x in csv.DictReader(f) if x["method"] != method]
    rows.append(row)
    rp.pp.write_rows(path, rp.ROW_KEYS, [[x[k] for k in rp.ROW_KEYS] for x in rows])


if __name__ == "__main__":
    main()
