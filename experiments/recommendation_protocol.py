"""Does the recommendation make a model retrained from scratch better? The paper's protocol
(Suzuki et al. 2021, Figure 2) with the run's own recommendation instead of a fixed share.

    python experiments/recommendation_protocol.py [--labels clean,uniform,confusable]
                [--seeds 0,1,2] [--jobs 2] [--work protocol_work] [--out results/...]
                [--methods none,recommended,top10,random_matched]
    python experiments/recommendation_protocol.py --report-only

For every label setting and seed (one task; ``--jobs`` tasks at once):

1. Split Fashion-MNIST's training images into 50,000 training and 10,000 validation images
   with the seed (as ``paper_protocol.py``); the test set is the 10,000 test images. Label
   setting ``uniform``: 10% of the training labels flipped to a random other class;
   ``confusable``: 10% moved to the class's look-alike (``support.fashion_mnist.CONFUSABLE``);
   ``clean``: none. The noise has its own seed (``NOISE_SEED_OFFSET + seed``).
2. Train the sample CNN from scratch with ``nnabla_cli train`` (plain SGD lr 0.05, batch 32,
   20 epochs, an initialisation drawn with the seed): the ``none`` row.
3. Run the plugin exactly as a user would, at the dialog's defaults (``runner.run``): it
   writes the influence CSV and ``influence_cleansed.csv`` with its recommendation applied.
4. Retrain from scratch as in 2 on: the cleansed CSV (``recommended``); the training CSV
   without the top 10% by influence (``top10``); without as many random rows as the
   recommendation changes (``random_matched``; the same as ``none`` when it changes nothing);
   the oracles (noisy settings): without exactly the flipped rows (``oracle_remove``) and with
   every flipped row given its true label (``oracle_correct``). The report gives the
   recommendation's gain over ``none`` as a share of each oracle's, in test accuracy and in
   test loss, and on how many seeds its test loss is below ``none``'s.
5. Detection against the true flips: the recommended rows; the same number of rows sorted by
   training loss; confident learning on the model's in-sample probabilities (per-class
   thresholds, off-diagonal of the confident joint; numpy, no cleanlab); the top 10%.

Each finished task's rows go to ``OUT/tasks/<label>_<seed>/`` at once (commit them): a later
run skips finished tasks, and the report is rebuilt from those folders alone.

It is a job of its own beside ``paper_protocol.py``, which measures the scores (fixed shares
removed by each estimate, against random removal; resumable row by row in ``WORK``, on a Dask
cluster if asked): this one measures the decision the tool makes for a user, with its own
label settings, retrainings, detection table and diagnostics (``retrain_candidate.py``,
``check_removed_good_rows.py``). The options they share, the split, the network and the
task processes are ``paper_protocol.py``'s.
"""

import argparse
import csv
import hashlib
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import paper_protocol as pp  # noqa: E402

from sgd_influence_plugin import evaluate as ev  # noqa: E402
from sgd_influence_plugin import ownership, places, staged_commit  # noqa: E402
from sgd_influence_plugin.dataset import read_csv_table  # noqa: E402
from sgd_influence_plugin.errors import OutputError  # noqa: E402
from sgd_influence_plugin.evaluate_report import mean_sd, sample_std  # noqa: E402
from sgd_influence_plugin.nnabla_adapter.training import train_from_scratch  # noqa: E402
from sgd_influence_plugin.settings import read_yaml, write_yaml  # noqa: E402
from support import fashion_mnist  # noqa: E402

#: Added to the seed for the label noise: with the seed itself, RandomState(seed).choice picks
#: the first rows of the plugin's first trial order, RandomState(seed).permutation.
NOISE_SEED_OFFSET = 1000
LABELS = ("clean", "uniform", "confusable")
METHODS = ("none", "recommended", "top10", "random_matched", "oracle_remove", "oracle_correct")
#: The oracles (issue 35): every flipped row removed and nothing else; every flipped row given
#: its true label. The recommendation's gain is reported as a share of theirs.
ORACLES = ("oracle_remove", "oracle_correct")
ROW_KEYS = (
    "labels", "seed", "method", "n_changed", "n_relabel", "n_remove", "test_accuracy",
    "test_loss", "precision", "recall", "seconds",
)  # fmt: skip
#: Retrainings on other removals than the protocol's (``retrain_candidate.py``), per task:
#: the ROW_KEYS, with ``method`` naming the removal (e.g. ``flips``: exactly the wrong labels).
DIAGNOSTICS = "diagnostics.csv"
DETECTION_KEYS = ("labels", "seed", "method", "n", "precision", "recall", "f1")
#: What the report writes into --out (the ownership rule: only files it wrote are replaced);
#: ``tasks/`` gains one folder per finished task and holds the tool's folder marker.
REPORT_FILES = ("summary.md", "results.csv")


def parse_args(argv=None):
    """The protocol's options: those of :func:`paper_protocol.add_common_arguments` (its
    results, committed, in ``results/recommendation_protocol``; those of earlier rules are in
    git history, see docs/measurements.md), and the label settings, the noise rate, the
    plugin's variant and the retrainings.
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    pp.add_common_arguments(p, os.path.join(HERE, "results", "recommendation_protocol"))
    p.add_argument("--labels", default=",".join(LABELS), help="label settings, comma-separated")
    p.add_argument("--rate", type=float, default=0.1, help="share of flipped labels (0.1)")
    p.add_argument(
        "--variant",
        default="v5",
        help="a name for the plugin's defaults (v5: today's): the plugin writes to "
        "influence_NAME/ in each task's work folder, so a new name runs it again; the none "
        "training and any retraining on the same rows (recommended_*, top10_*, random_*) are "
        "reused. Give a new --out with a new name (default: v5)",
    )
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="the retrainings of each new task, comma-separated, always with none and "
        "recommended (default: all of " + ", ".join(METHODS) + "); none,recommended halves a "
        "task's time for runs of many seeds. A finished task is not run again for the others",
    )
    a = p.parse_args(argv)  # --task "labels,seed": one task
    a.methods = tuple(m.strip() for m in a.methods.split(",") if m.strip())
    unknown = [m for m in a.methods if m not in METHODS]
    if unknown or not {"none", "recommended"} <= set(a.methods):
        p.error(
            f"--methods {','.join(a.methods)}: give none and recommended, and any of "
            f"{', '.join(METHODS[2:])}" + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return a


def task_name(labels, seed):
    """The task's name: its folder under ``OUT/tasks`` (and ``WORK/rec_NAME``)."""
    return f"{labels}_{seed}"


def noisy_labels(labels, setting, rate, seed):
    """The training labels under a label setting, the noise seeded apart from the run's."""
    if setting == "uniform":
        return fashion_mnist.flip_labels(labels, rate, 10, NOISE_SEED_OFFSET + seed)
    if setting == "confusable":
        return fashion_mnist.flip_to_confusable(labels, rate, NOISE_SEED_OFFSET + seed)
    return labels.copy()


def task_data(a, setting, seed, pool, out):
    """Train/val/val_cli/test CSVs (:func:`paper_protocol.split_task`); returns (paths,
    flipped (N,), the true labels (N,)).
    """
    paths, labels, noisy = pp.split_task(
        a, seed, pool, out, lambda labels: noisy_labels(labels, setting, a.rate, seed)
    )
    return paths, noisy != labels, labels


def confident_learning(prob, given):
    """Label issues by confident learning's off-diagonal confident joint (Northcutt et al.
    2021), on the given probabilities: class j's threshold is the mean probability of j over
    the rows labelled j; a row is counted for the most probable class whose probability
    reaches its threshold, and is an issue when that class is not its label.
    """
    k = prob.shape[1]
    t = np.array([prob[given == j, j].mean() if np.any(given == j) else 1.0 for j in range(k)])
    above = prob >= t[None, :]
    masked = np.where(above, prob, -1.0)
    pick = masked.argmax(axis=1)
    return above.any(axis=1) & (pick != given)


def prf(flag, flipped):
    """(rows flagged, precision, recall, F1) of the flags ``flag`` against the true flips."""
    n = int(flag.sum())
    tp = int((flag & flipped).sum())
    p = tp / n if n else float("nan")
    r = tp / max(1, int(flipped.sum())) if flipped.any() else float("nan")
    f = 2 * p * r / (p + r) if n and flipped.any() and (p + r) > 0 else float("nan")
    return n, p, r, f


def run_task(a, setting, seed):
    """One task (label setting, seed): its rows, detection and the plugin's facts committed to
    ``OUT/tasks/NAME/`` when it is finished.
    """
    from sgd_influence_plugin.dataset import load_dataset
    from sgd_influence_plugin.nnabla_adapter import load_model
    from sgd_influence_plugin.probabilities import as_probabilities
    from sgd_influence_plugin.runner import RunRequest, run
    from sgd_influence_plugin.settings import InfluenceSettings

    name = task_name(setting, seed)
    done_dir = os.path.join(a.out, "tasks", name)
    if os.path.exists(os.path.join(done_dir, "rows.csv")):
        print(f"[{name}] already done", flush=True)
        return
    out = os.path.join(a.work, "rec_" + name)
    os.makedirs(out, exist_ok=True)

    def log(msg):
        print(f"[{name}] {msg}", flush=True)

    pool = os.path.join(a.work, "pool")
    paths, flipped, clean_labels = task_data(a, setting, seed, pool, out)
    config, _ = pp.write_network(a, seed, out, paths)  # init.h5: read by train_once
    header, train_rows = read_csv_table(paths["train"])
    n = len(train_rows)

    def retrain(csv_path, keep, folder):
        t = time.perf_counter()
        nnp = train_once(out, folder, config, csv_path, keep, seed, log)
        return nnp, time.perf_counter() - t

    base_nnp, base_seconds = retrain(paths["train"], np.arange(n), "base")
    model = load_model(model=base_nnp)
    test = load_dataset(paths["test"], model.info.input_shapes)

    def measure(nnp):
        return ev.accuracy_and_loss(load_model(model=nnp), test)

    rows = []

    def add(method, n_relabel, n_remove, changed, acc, loss, seconds):
        p = r = float("nan")
        if flipped.any() and changed.any():
            _, p, r, _ = prf(changed, flipped)
        rows.append(
            dict(
                labels=setting, seed=seed, method=method, n_changed=int(changed.sum()),
                n_relabel=n_relabel, n_remove=n_remove, test_accuracy=acc, test_loss=loss,
                precision=p, recall=r, seconds=round(seconds, 1),
            )
        )  # fmt: skip
        log(f"{method:15s} changed {int(changed.sum()):5d}: accuracy {acc:.4f}, loss {loss:.4f}")

    none_acc, none_loss = measure(base_nnp)
    add("none", 0, 0, np.zeros(n, bool), none_acc, none_loss, base_seconds)

    # The plugin at the dialog's defaults, as a user runs it.
    suffix = f"_{a.variant}" if a.variant else ""
    infl_dir = os.path.join(out, "influence" + suffix)
    infl_csv = os.path.join(infl_dir, "influence.csv")
    t = time.perf_counter()
    if not os.path.exists(infl_csv):
        req = RunRequest(
            output=infl_csv, model=base_nnp, train=paths["train"], val=paths["val"],
            settings=InfluenceSettings(seed=seed, jobs=1),
        )  # fmt: skip
        run(req, log=log)
    plugin_seconds = time.perf_counter() - t
    with open(infl_csv, newline="") as f:
        table = list(csv.DictReader(f))
    scores = np.empty(n)
    loss = np.empty(n)
    action = np.empty(n, dtype=object)
    for r in table:
        j = int(r["datasource_index"])
        scores[j], loss[j], action[j] = float(r["influence"]), float(r["loss"]), r["action"]
    facts = read_yaml(os.path.join(infl_dir, "influence_settings.yaml"))
    changed = action != "keep"
    n_rel, n_rem = int(np.sum(action == "relabel")), int(np.sum(action == "remove"))
    cleansed = os.path.join(infl_dir, "influence_cleansed.csv")
    if changed.any():
        nnp, seconds = retrain(cleansed, np.arange(n - n_rem), recommended_folder(action))
        acc, lss = measure(nnp)
    else:
        acc, lss, seconds = none_acc, none_loss, 0.0
    add("recommended", n_rel, n_rem, changed, acc, lss, seconds + plugin_seconds)

    order = np.argsort(scores, kind="stable")
    top = np.zeros(n, bool)
    top[order[: int(round(0.1 * n))]] = True
    if "top10" in a.methods:
        folder = removal_folder("top10", top)
        nnp, seconds = retrain(paths["train"], np.flatnonzero(~top), folder)
        add("top10", 0, int(top.sum()), top, *measure(nnp), seconds)

    rnd = np.zeros(n, bool)
    rnd[np.random.RandomState(10_000 + seed).permutation(n)[: int(changed.sum())]] = True
    if "random_matched" in a.methods:
        if rnd.any():
            folder = f"random_{int(rnd.sum())}"
            nnp, seconds = retrain(paths["train"], np.flatnonzero(~rnd), folder)
            acc, lss = measure(nnp)
        else:
            acc, lss, seconds = none_acc, none_loss, 0.0
        add("random_matched", 0, int(rnd.sum()), rnd, acc, lss, seconds)

    if flipped.any():
        _oracles(a, out, paths["train"], flipped, clean_labels, retrain, measure, add)

    # Detection against the truth.
    detection = []
    if flipped.any():
        train = load_dataset(paths["train"], model.info.input_shapes)
        prob = as_probabilities(model.predict(train.arrays))
        given = np.array([int(r[1]) for r in train_rows])
        by_loss = np.zeros(n, bool)
        by_loss[np.argsort(-loss, kind="stable")[: int(changed.sum())]] = True
        for method, flag in (
            ("recommended", changed),
            ("loss, same count", by_loss),
            ("confident learning (in-sample)", confident_learning(prob, given)),
            ("top 10% by influence", top),
        ):
            k, p, r, f = prf(flag, flipped)
            detection.append(
                dict(labels=setting, seed=seed, method=method, n=k, precision=p, recall=r, f1=f)
            )
    tasks_dir(a)
    os.makedirs(done_dir, exist_ok=True)
    write_yaml(
        os.path.join(done_dir, "recommendation.yaml"),
        {
            "recommendation": facts.get("recommendation"),
            "timings_seconds": facts.get("timings_seconds"),
            "used": facts.get("used"),
            "flipped": int(flipped.sum()),
            "relabelled_to_true_class": int(
                np.sum((action == "relabel") & flipped & (_suggested(table, n) == clean_labels))
            ),
        },
    )
    pp.write_rows(
        os.path.join(done_dir, "detection.csv"),
        DETECTION_KEYS,
        [[d[k] for k in DETECTION_KEYS] for d in detection],
    )
    # rows.csv last: its presence marks the task finished.
    pp.write_rows(
        os.path.join(done_dir, "rows.csv"), ROW_KEYS, [[r[k] for k in ROW_KEYS] for r in rows]
    )
    log("done")


def _oracles(a, out, train_csv, flipped, clean_labels, retrain, measure, add):
    """The task's :data:`ORACLES` among ``a.methods``, retrained and added as rows."""
    import retrain_candidate as rc  # it imports this module: imported here, when needed

    n = len(flipped)
    if "oracle_remove" in a.methods:
        nnp, seconds = retrain(
            train_csv, np.flatnonzero(~flipped), removal_folder("flips", flipped)
        )
        add("oracle_remove", 0, int(flipped.sum()), flipped, *measure(nnp), seconds)
    if "oracle_correct" in a.methods:
        fixed = rc.fixed_labels(clean_labels, flipped)
        path = os.path.join(out, "train_oracle_correct.csv")
        rc.write_relabelled(train_csv, "y", fixed, path)
        nnp, seconds = retrain(path, np.arange(n), removal_folder("fixed", flipped))
        add("oracle_correct", int(flipped.sum()), 0, flipped, *measure(nnp), seconds)


def train_once(out, folder, config, csv_path, keep, seed, log=print):
    """Train the task's network from scratch on rows ``keep`` of ``csv_path`` into
    ``out/folder`` (the task's seed and initialisation ``out/init.h5``, its ``val_cli.csv``),
    unless a finished training is there; returns its ``results.nnp``.
    """
    marker = os.path.join(out, folder, "finished")
    if not os.path.exists(marker):
        log(f"training {folder} on {len(keep)} rows")
        h, rows = read_csv_table(csv_path)
        train_from_scratch(
            config, csv_path, os.path.join(out, "val_cli.csv"), h, rows, keep, seed,
            os.path.join(out, folder), os.path.join(out, "init.h5"),
        )  # fmt: skip
        open(marker, "w").close()
    return os.path.join(out, folder, "results.nnp")


def check_out(a):
    """Refuse an --out whose report files or tasks/ folder the protocol did not write."""
    places.check_output_folder(a.out, "--out", REPORT_FILES)
    tasks = os.path.join(a.out, "tasks")
    if os.path.isdir(tasks) and not os.path.exists(os.path.join(tasks, ownership.FOLDER_MARKER)):
        raise OutputError(
            f"{tasks}: a folder this protocol did not make (no {ownership.FOLDER_MARKER}); "
            "choose another --out"
        )


def tasks_dir(a):
    """``--out/tasks``, made with the tool's marker when new."""
    tasks = os.path.join(a.out, "tasks")
    if not os.path.isdir(tasks):
        os.makedirs(tasks)
        ownership.mark_folder(tasks)
    return tasks


def recommended_folder(action, prefix: str = "recommended") -> str:
    """The retraining folder of a recommendation, named after every row's whole action, so
    that one is reused only for the same changes (relabelling and removing the same rows are
    different trainings).
    """
    return f"{prefix}_" + hashlib.sha1(",".join(action).encode()).hexdigest()[:8]


def removal_folder(prefix: str, removed) -> str:
    """The retraining folder of a removal (bool (N,)), named after the removed rows, so that
    variants whose scores pick the same rows share one training and others do not.
    """
    rows = np.flatnonzero(np.asarray(removed, dtype=bool)).astype(np.int64)
    return f"{prefix}_" + hashlib.sha1(rows.tobytes()).hexdigest()[:8]


def _suggested(table, n):
    out = np.full(n, -1)
    for r in table:
        if r["suggested_label"]:
            out[int(r["datasource_index"])] = int(r["suggested_label"])
    return out


# ----------------------------------------------------------------------------- report


def _task_order(name):
    """Sort key of a task folder ``<labels>_<seed>``: seed 2 before seed 10."""
    setting, _, seed = name.rpartition("_")
    return (setting, int(seed)) if seed.isdigit() else (name, -1)


def collect(a, what="rows.csv"):
    """Every finished task's rows of ``what``, by setting and then by numeric seed."""
    root = os.path.join(a.out, "tasks")
    out = []
    for name in sorted(os.listdir(root), key=_task_order) if os.path.isdir(root) else []:
        path = os.path.join(root, name, what)
        if os.path.exists(path) and os.path.exists(os.path.join(root, name, "rows.csv")):
            with open(path, newline="") as f:
                out += list(csv.DictReader(f))
    return out


def _f(x):
    return float(x) if x not in ("", "nan") else float("nan")


def _ms(values, fmt="{:+.2f}", scale=1.0):
    v = np.array([x * scale for x in values if np.isfinite(x)])
    if not len(v):
        return "-"
    return mean_sd(v.mean(), sample_std(v), fmt)


def _method_line(method, rs, base):
    """One row of a setting's table: ``rs`` (one per seed) against the seeds' ``none`` rows."""
    acc = [_f(r["test_accuracy"]) for r in rs]
    dacc = [_f(r["test_accuracy"]) - _f(base[r["seed"]]["test_accuracy"]) for r in rs]
    dloss = [_f(r["test_loss"]) - _f(base[r["seed"]]["test_loss"]) for r in rs]
    changed = "/".join(str(r["n_changed"]) for r in rs)
    split = "/".join(f"{r['n_relabel']}+{r['n_remove']}" for r in rs)
    wins = sum(d > 0 for d in dacc)
    return (
        f"| {method} | {changed} ({split}) | {_ms(acc, '{:.4f}')} | {_ms(dacc, scale=100)}"
        f" | {wins if method != 'none' else '-'}/{len(rs)} | {_ms(dloss, '{:+.4f}')} | "
        f"{_ms([_f(r['precision']) for r in rs], '{:.3f}')} | "
        f"{_ms([_f(r['recall']) for r in rs], '{:.3f}')} |"
    )


def _oracle_shares(sub, base):
    """Lines: the recommendation's mean gain over ``none`` as a share of each oracle's, in test
    accuracy and in test loss, on the seeds that have both; and on how many seeds the
    recommendation's test loss is below ``none``'s.
    """
    rec = {r["seed"]: r for r in sub if r["method"] == "recommended" and r["seed"] in base}
    if not rec:
        return []
    lower = sum(_f(r["test_loss"]) < _f(base[s]["test_loss"]) for s, r in rec.items())
    out = ["", f"Test loss below `none`'s: {lower}/{len(rec)} seeds."]
    for oracle in ORACLES:
        orc = {r["seed"]: r for r in sub if r["method"] == oracle and r["seed"] in rec}
        if not orc:
            continue
        gain = {}
        for key in ("test_accuracy", "test_loss"):
            mine = np.mean([_f(rec[s][key]) - _f(base[s][key]) for s in orc])
            best = np.mean([_f(orc[s][key]) - _f(base[s][key]) for s in orc])
            better = best > 0 if key == "test_accuracy" else best < 0
            gain[key] = f"{mine / best:.2f}" if better else "- (the oracle did not gain)"
        out.append(
            f"Share of `{oracle}`'s gain ({len(orc)} seeds): test accuracy {gain['test_accuracy']}"
            f", test loss {gain['test_loss']}."
        )
    return out


def report(a):
    """Write ``summary.md`` and ``results.csv`` into ``--out`` from the finished tasks (the
    ownership rule: only files the protocol wrote there are replaced) and print the summary.
    """
    rows = collect(a)
    if not rows:
        raise SystemExit(f"no finished tasks under {a.out}/tasks")
    det = collect(a, "detection.csv")
    diagnostics = collect(a, DIAGNOSTICS)
    lines = [
        "# The recommendation, retrained from scratch (Figure 2 protocol)",
        "",
        f"Fashion-MNIST, {a.train} training / {a.val} validation images split by the seed, "
        f"{a.test} test images; the sample CNN; plain SGD lr {a.lr:g}, batch {a.batch_size}, "
        f"{a.epochs} epochs from a seeded initialisation (nnabla_cli). The plugin ran at the "
        "dialog's defaults. Δ = the same seed's value minus its `none` value, in points of "
        "accuracy (mean ± sample SD over seeds); wins = seeds where accuracy rose.",
    ]
    for setting in LABELS:
        sub = [r for r in rows if r["labels"] == setting]
        if not sub:
            continue
        base = {r["seed"]: r for r in sub if r["method"] == "none"}
        lines += ["", f"## {setting} labels ({len(base)} seeds)", ""]
        lines += [
            "| method | rows changed (relabel / remove) | test accuracy | Δ accuracy (pt) | wins "
            "| Δ test loss | precision | recall |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method in METHODS:
            rs = [r for r in sub if r["method"] == method and r["seed"] in base]
            if rs:
                lines.append(_method_line(method, rs, base))
        lines += _oracle_shares(sub, base)
        diag = [r for r in diagnostics if r["labels"] == setting and r["seed"] in base]
        for method in dict.fromkeys(r["method"] for r in diag):
            rs = [r for r in diag if r["method"] == method]
            lines.append(_method_line(f"diagnostic: {method}", rs, base))
        ds = [d for d in det if d["labels"] == setting]
        if ds:
            lines += [
                "",
                "Detection of the flipped labels (mean ± sample SD over seeds):",
                "",
                "| rows flagged by | rows | precision | recall | F1 |",
                "|---|---|---|---|---|",
            ]
            for method in dict.fromkeys(d["method"] for d in ds):
                m = [d for d in ds if d["method"] == method]
                lines.append(
                    f"| {method} | {'/'.join(d['n'] for d in m)} | "
                    f"{_ms([_f(d['precision']) for d in m], '{:.3f}')} | "
                    f"{_ms([_f(d['recall']) for d in m], '{:.3f}')} | "
                    f"{_ms([_f(d['f1']) for d in m], '{:.3f}')} |"
                )
    check_out(a)
    with staged_commit.staging(a.out, "--out") as stage:
        with open(os.path.join(stage, "summary.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        pp.write_rows(
            os.path.join(stage, "results.csv"), ROW_KEYS, [[r[k] for k in ROW_KEYS] for r in rows]
        )
        moves = [(os.path.join(stage, n), os.path.join(a.out, n)) for n in REPORT_FILES]
        staged_commit.commit_staged(a.out, moves, [], "--out")
    print("\n".join(lines))


def main(argv=None):
    """Run the protocol's unfinished tasks, then the report (or only the report)."""
    a = parse_args(argv)
    if a.task:
        setting, seed = a.task.split(",")
        run_task(a, setting, int(seed))
        return 0
    if a.report_only:
        report(a)
        return 0
    check_out(a)
    os.makedirs(a.work, exist_ok=True)
    pp.build_pool(a)
    tasks = [(s, int(seed)) for seed in a.seeds.split(",") for s in a.labels.split(",")]
    todo = [
        (f"{setting},{seed}", os.path.join(a.work, f"rec_{task_name(setting, seed)}.log"))
        for setting, seed in tasks
        if not os.path.exists(os.path.join(a.out, "tasks", task_name(setting, seed), "rows.csv"))
    ]
    failed = pp.run_tasks(__file__, argv if argv is not None else sys.argv[1:], todo, a.jobs)
    report(a)
    if failed:
        print(f"failed tasks (see their .log in {a.work}): {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
