"""The data-cleansing experiment of Suzuki et al. (2021), Figure 2, from scratch on Fashion-MNIST.

    python experiments/paper_protocol.py [--work protocol_work] [--out results/paper_protocol]
                       [--seeds 0,1,2] [--noise 0,0.1] [--ratios 0.1,0.05,0.02,0.01]
                       [--epochs 20] [--jobs 2]
    python experiments/paper_protocol.py --report-only   # redo the tables and the plot
    python experiments/paper_protocol.py --cluster tcp://HOST:8786 --jobs 6   # on a Dask cluster

For every label-noise level and every seed (one task; ``--jobs`` tasks run at once):

1. Split Fashion-MNIST's 60,000 training images into ``--train`` (50,000) training and
   ``--val`` (10,000) validation images with the seed; the test set is the 10,000 test images.
   With noise, flip that share of the training labels (seeded, to another class).
2. Train the sample CNN from scratch with ``nnabla_cli train``: plain SGD at ``--lr`` (0.05),
   batch ``--batch-size`` (32), ``--epochs`` (20), from an initialisation drawn with the seed,
   on the training rows in an order shuffled by the seed. This is the n = 0 model.
3. Score the training samples with the plugin at its defaults (the final-parameter estimate:
   automatic rate, 3 trials, finite-difference replay) and with the all-parameters estimate of
   Hara et al. (``cache="all"``: one recorded epoch replayed with its stored parameters, one
   trial, as published; otherwise the same); seed = the task's seed.
4. For every n in ``--ratios`` (shares of the training set) remove the n most harmful by each
   estimate, or n random samples, and train from scratch again exactly as in step 2 (same
   initialisation and seed). Measure test accuracy and loss.

Each task writes its rows to ``WORK/task_<noise>_<seed>/rows.csv`` as it goes and skips rows
that are already there, so a stopped run continues where it was, and more ratios can be
added later. The report (``OUT/results.csv``, ``summary.md``, ``figure2.png``,
``settings.yaml``, ``estimates/``; written by ``paper_report.py``) pairs each row with the same
task's n = 0 model; it follows the ownership rule of ``sgd_influence_plugin.ownership``: only
files the protocol wrote in ``OUT`` are replaced (anything else is refused before the tasks
start), all together.

``recommendation_protocol.py`` runs the same tasks (this module's common options, pool, split,
network and task processes) for another job: the decision the tool makes for a user instead
of fixed shares removed by each estimate.

With ``--cluster ADDRESS`` (docs/cluster.md) each task still runs here, and sends its
trainings, influence trials and retrainings (all of a task's retrainings at once) to the
workers of that Dask scheduler; the rows are the same. The workers read the image pool in
``WORK`` at the same path (shared storage) and send the trained ``results.nnp`` back: only
this machine writes in ``WORK`` and ``OUT``.
"""

import argparse
import contextlib
import csv
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from paper_report import (  # noqa: E402, F401 - the report's names, where the tests use them
    ESTIMATORS,
    METHODS,
    REPORT_FILES,
    ROW_KEYS,
    check_report_place,
    floats,
    paired_table,
    read_task_rows,
    report,
    save_rows,
)

from sgd_influence_plugin import evaluate as ev  # noqa: E402
from sgd_influence_plugin import option_parsers  # noqa: E402
from sgd_influence_plugin.dataset import read_csv_table  # noqa: E402
from sgd_influence_plugin.io_utils import atomic_write  # noqa: E402
from sgd_influence_plugin.nnabla_adapter.training import (  # noqa: E402
    initial_parameters,
    train_from_scratch,
    write_kept_rows,
)
from sgd_influence_plugin.settings import InfluenceSettings, write_yaml  # noqa: E402
from support import fashion_mnist  # noqa: E402
from support.netdef import NetSpec, write_nntxt  # noqa: E402


def add_common_arguments(p, out):
    """The options of both protocols (this one and ``recommendation_protocol.py``); ``out``:
    the default results folder.
    """
    p.add_argument("--work", default=os.path.join(HERE, "protocol_work"), help="working folder")
    p.add_argument(
        "--out", default=out, help=f"results folder (default: {os.path.relpath(out, ROOT)})"
    )
    option_parsers.add_arguments(p, ["seeds"])  # as sgd-influence evaluate's --seeds
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default: 20)")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default: 0.05)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    p.add_argument("--train", type=int, default=50000, help="training images (default: 50000)")
    p.add_argument("--val", type=int, default=10000, help="validation images (default: 10000)")
    p.add_argument(
        "--test", type=int, default=10000, help="test images, from the test file (default: all)"
    )
    p.add_argument("--jobs", type=int, default=2, help="tasks at once (default: 2)")
    p.add_argument(
        "--pool-limit",
        type=int,
        default=0,
        help="use only the first this many training and test images (default: 0 = all; "
        "for quick trials)",
    )
    p.add_argument(
        "--source", default=fashion_mnist.DEFAULT_DIR, help="folder of the idx .gz files"
    )
    p.add_argument("--report-only", action="store_true", help="only redo the report")
    p.add_argument("--task", help=argparse.SUPPRESS)  # one task, in its own process (internal)


def parse_args(argv=None):
    """The common options (:func:`add_common_arguments`), the noise levels, the shares
    removed, the balanced diagnostic and the cluster.
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_arguments(p, os.path.join(HERE, "results", "paper_protocol"))
    p.add_argument("--noise", default="0,0.1", help="label-noise shares (default: 0,0.1)")
    option_parsers.add_arguments(  # as sgd-influence evaluate's --ratios, its own default
        p, ["ratios"], ratios=dict(default="0.1,0.05,0.02,0.01", detail=", run in this order")
    )
    p.add_argument(
        "--balanced",
        metavar="NOISE,SEED",
        help="diagnostic: in that finished task, also remove the largest --ratios share class by "
        "class (the same share of every class, most harmful first by the final estimate) and "
        "retrain; the row's method is final_balanced",
    )
    option_parsers.add_arguments(  # as the tool's --cluster
        p, ["cluster"], cluster=dict(detail="; every worker must read WORK at the same path")
    )
    return p.parse_args(argv)  # --task "noise,seed": one task


def task_dir(a, noise, seed):
    """The work folder of the task (noise, seed)."""
    return os.path.join(a.work, f"task_{noise:g}_{seed}")


# ----------------------------------------------------------------------------- data


def build_pool(a):
    """Write every training and test image once as PNG (``WORK/pool``); tasks list them."""
    pool = os.path.join(a.work, "pool")
    done = os.path.join(pool, "done")
    if os.path.exists(done):
        return pool
    images, labels = fashion_mnist.load_split("train", a.source)
    test_images, test_labels = fashion_mnist.load_split("test", a.source)
    if a.pool_limit:
        images, labels = images[: a.pool_limit], labels[: a.pool_limit]
        test_images, test_labels = test_images[: a.pool_limit], test_labels[: a.pool_limit]
    fashion_mnist.write_png_dataset(images, labels, pool, "train.csv", "train")
    fashion_mnist.write_png_dataset(test_images, test_labels, pool, "test.csv", "test")
    open(done, "w").close()
    return pool


def write_rows(path, header, rows):
    """A CSV of ``header`` and ``rows``, written atomically."""
    with atomic_write(path, newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def split_task(a, seed, pool, out, noisy_of):
    """The task's train/val/val_cli/test CSVs in ``out`` (absolute image paths): ``--train``
    training and ``--val`` validation images drawn from the pool by ``seed``, the first
    ``--test`` test images; ``noisy_of``: the training labels (N,) -> the labels written.

    Returns:
        (paths dict, labels (N,) as in the pool, noisy (N,) as written)

    """
    _, train_rows = read_csv_table(os.path.join(pool, "train.csv"))
    _, test_rows = read_csv_table(os.path.join(pool, "test.csv"))
    if a.train + a.val > len(train_rows) or a.test > len(test_rows):
        raise SystemExit(f"--train {a.train} + --val {a.val} or --test {a.test} too large")
    rng = np.random.RandomState(seed)
    perm = rng.permutation(len(train_rows))
    tr, va = perm[: a.train], perm[a.train : a.train + a.val]
    te = np.arange(a.test)
    labels = np.array([int(train_rows[i][1]) for i in tr])
    noisy = noisy_of(labels)

    def absolute(row):
        return os.path.join(pool, row[0])

    names = ("train", "val", "val_cli", "test")
    paths = {k: os.path.join(out, f"{k}.csv") for k in names}
    header = ["x:image", "y:label"]
    write_rows(paths["train"], header, [[absolute(train_rows[i]), y] for i, y in zip(tr, noisy)])
    write_rows(paths["val"], header, [[absolute(train_rows[i]), train_rows[i][1]] for i in va])
    # nnabla_cli caches the validation dataset although no monitor reads it (see
    # evaluate.train_from_scratch): give it one batch.
    write_rows(
        paths["val_cli"], header, [[absolute(train_rows[i]), train_rows[i][1]] for i in va[:64]]
    )
    write_rows(paths["test"], header, [[absolute(test_rows[i]), test_rows[i][1]] for i in te])
    return paths, labels, noisy


def task_data(a, noise, seed, pool, out):
    """The task's CSVs (:func:`split_task`; that share of the training labels flipped to
    another class, seeded with the task's seed) and the noise's ground truth, ``noise.csv``.

    Returns:
        (paths dict, flipped (N,) bool)

    """

    def noisy_of(labels):
        if noise > 0:
            return fashion_mnist.flip_labels(labels, noise, len(fashion_mnist.CLASS_NAMES), seed)
        return labels

    paths, labels, noisy = split_task(a, seed, pool, out, noisy_of)
    paths["noise"] = os.path.join(out, "noise.csv")
    write_rows(
        paths["noise"],
        ["index", "clean_label", "noisy_label", "flipped"],
        [[j, c, n, int(c != n)] for j, (c, n) in enumerate(zip(labels, noisy))],
    )
    return paths, noisy != labels


def write_network(a, seed, out, paths):
    """``out/net.nntxt``, the sample CNN on the task's CSVs, and its initialisation drawn with
    ``seed`` (``out/init.h5``); returns (the definition's text, the initialisation's path).
    """
    net = os.path.join(out, "net.nntxt")
    write_nntxt(
        NetSpec(
            arch="cnn",
            input_shape=(1, 28, 28),
            n_classes=10,
            train_csv=paths["train"],
            val_csv=paths["val"],
            batch_size=a.batch_size,
            lr=a.lr,
            solver="Sgd",
            max_epoch=a.epochs,
            iter_per_epoch=max(1, a.train // a.batch_size),
        ),
        net,
    )
    with open(net) as f:
        config = f.read()
    return config, initial_parameters(config, seed, os.path.join(out, "init.h5"))


# ----------------------------------------------------------------------------- one task


def run_task(a, noise, seed):
    """Everything for one (noise, seed); rows go to ``task_dir/rows.csv`` as they finish."""
    from sgd_influence_plugin.dataset import load_dataset
    from sgd_influence_plugin.executor import open_executor
    from sgd_influence_plugin.influence import compute_influence
    from sgd_influence_plugin.nnabla_adapter import load_model

    out = task_dir(a, noise, seed)
    os.makedirs(out, exist_ok=True)
    rows_path = os.path.join(out, "rows.csv")
    rows = read_task_rows(rows_path)
    have = {(r["method"], int(r["n_removed"])) for r in rows}

    def log(msg):
        print(f"[noise {noise:g} seed {seed}] {msg}", flush=True)

    def add(method, count, acc, loss, precision, seconds):
        rows.append(
            {
                "noise": noise,
                "seed": seed,
                "method": method,
                "ratio": count / a.train,
                "n_removed": count,
                "test_accuracy": acc,
                "test_loss": loss,
                "precision_at_n": precision,
                "seconds": round(seconds, 1),
            }
        )
        save_rows(rows_path, rows)
        log(f"{method:6s} n={count:5d}: test accuracy {acc:.4f}, loss {loss:.4f}")

    pool = os.path.join(a.work, "pool")
    paths, flipped = task_data(a, noise, seed, pool, out)
    config, _ = write_network(a, seed, out, paths)  # out/init.h5 for the balanced diagnostic
    header, train_rows = read_csv_table(paths["train"])
    n = len(train_rows)
    connection = contextlib.ExitStack()  # the executor's, closed when the task ends
    # Here (one unit at a time: --jobs runs tasks side by side) or the cluster's workers.
    executor = connection.enter_context(open_executor(a.cluster, "cpu", 1, log))

    def retrain_on(jobs, test, on_result=None):
        """[(keep, name)] trained from scratch by the executor (:func:`evaluate.scratch_unit`,
        the seed's initialisation); each results.nnp written to ``out/name`` as it arrives:
        [(nnp path, seconds, accuracy, loss)] (accuracy and loss NaN without ``test``).
        """
        items = [(config, paths["train"], paths["val_cli"], k, seed, "cpu") for k, _ in jobs]

        def write(i, outcome):
            data, acc, loss, seconds = outcome
            folder = os.path.join(out, jobs[i][1])
            os.makedirs(folder, exist_ok=True)
            # The training CSV the unit trained on (the same rows, in the same seeded order).
            write_kept_rows(paths["train"], header, train_rows, jobs[i][0], seed, folder)
            with atomic_write(os.path.join(folder, "results.nnp"), "wb") as f:
                f.write(data)
            if on_result is not None:
                on_result(i, (os.path.join(folder, "results.nnp"), seconds, acc, loss))

        outs = executor.map(
            ev.scratch_unit, items, (test, header, train_rows), on_result=write, name="train"
        )
        return [
            (os.path.join(out, name, "results.nnp"), seconds, acc, loss)
            for (_, name), (_, acc, loss, seconds) in zip(jobs, outs)
        ]

    # nnabla_cli rewrites results.nnp during training: only the marker says it finished.
    base_nnp = os.path.join(out, "base", "results.nnp")
    base_done = os.path.join(out, "base", "finished")
    if not os.path.exists(base_done):
        log(f"training from scratch on {n} images, {a.epochs} epochs")
        base_nnp = retrain_on([(np.arange(n), "base")], None)[0][0]
        open(base_done, "w").close()
    model = load_model(model=base_nnp)
    test = load_dataset(paths["test"], model.info.input_shapes)
    if ("none", 0) not in have:
        acc, loss = ev.accuracy_and_loss(model, test)
        add("none", 0, acc, loss, float("nan"), 0.0)

    ranks = {}
    train = val = None
    for name, overrides in ESTIMATORS.items():
        path = os.path.join(out, f"scores_{name}.npy")
        if not os.path.exists(path):
            if train is None:
                train = load_dataset(paths["train"], model.info.input_shapes)
                val = load_dataset(paths["val"], model.info.input_shapes)
            settings = InfluenceSettings(seed=seed, jobs=1, **overrides)
            t = time.perf_counter()
            res = compute_influence(
                model, train.arrays, val.arrays, settings, log=log, executor=executor
            )
            seconds = time.perf_counter() - t
            write_yaml(
                os.path.join(out, f"scores_{name}.yaml"),
                {
                    "settings": settings.to_dict(),
                    "lr": [o.lr for o in res.trials],
                    "u_growth": [o.u_growth for o in res.trials],
                    "warnings": list(res.warnings),
                    "seconds": round(seconds, 1),
                    "precision_at_flipped": float(
                        flipped[np.argsort(res.scores, kind="stable")[: int(flipped.sum())]].mean()
                    )
                    if flipped.any()
                    else None,
                },
            )
            np.save(path, res.scores)
            log(f"{name} estimate in {seconds:.0f} s (lr {res.trials[0].lr:.3g})")
        scores = np.load(path)
        if not np.isfinite(scores).all():
            raise SystemExit(f"{path}: non-finite scores")
        ranks[name] = np.argsort(scores, kind="stable")
    ranks["random"] = np.random.RandomState(10_000 + seed).permutation(n)
    del train, val

    todo = []
    for ratio in floats(a.ratios):
        count = int(round(ratio * n))
        if count <= 0:
            continue
        for method in METHODS:
            if (method, count) in have:
                continue
            removed = ranks[method][:count]
            todo.append((method, count, removed))
    if todo:  # all at once (on a cluster's workers side by side); rows added in this order
        finished = {}

        def on_result(i, outcome):
            finished[i] = outcome
            while added[0] in finished:
                method, count, removed = todo[added[0]]
                _, seconds, acc, loss = finished[added[0]]
                precision = float(flipped[removed].mean()) if flipped.any() else float("nan")
                add(method, count, acc, loss, precision, seconds)
                added[0] += 1

        added = [0]
        jobs = [(np.setdiff1d(np.arange(n), r), f"{m}_{c}") for m, c, r in todo]
        retrain_on(jobs, test, on_result)
    connection.close()
    log("done")


def balanced_removal(scores, labels, count):
    """Indices of about ``count`` samples: in every class the same share of its samples,
    most harmful (lowest score) first; the shares are rounded per class.
    """
    share = count / len(scores)
    removed = []
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        take = int(round(share * len(members)))
        removed.append(members[np.argsort(scores[members], kind="stable")[:take]])
    return np.concatenate(removed)


def run_balanced(a, noise, seed):
    """The class-balanced removal of :func:`balanced_removal` in a finished task."""
    from sgd_influence_plugin.dataset import load_dataset
    from sgd_influence_plugin.nnabla_adapter import load_model

    out = task_dir(a, noise, seed)
    rows_path = os.path.join(out, "rows.csv")
    rows = read_task_rows(rows_path)
    with open(os.path.join(out, "net.nntxt")) as f:
        config = f.read()
    paths = {k: os.path.join(out, f"{k}.csv") for k in ("train", "val_cli", "test", "noise")}
    header, train_rows = read_csv_table(paths["train"])
    labels = np.array([int(r[1]) for r in train_rows])
    flipped = np.array([r["flipped"] == "1" for r in read_task_rows(paths["noise"])])
    count = int(round(max(floats(a.ratios)) * len(labels)))
    removed = balanced_removal(np.load(os.path.join(out, "scores_final.npy")), labels, count)
    keep = np.setdiff1d(np.arange(len(labels)), removed)
    t = time.perf_counter()
    nnp = train_from_scratch(
        config, paths["train"], paths["val_cli"], header, train_rows, keep, seed,
        os.path.join(out, f"final_balanced_{len(removed)}"), os.path.join(out, "init.h5"),
    )  # fmt: skip
    model = load_model(model=nnp)
    acc, loss = ev.accuracy_and_loss(model, load_dataset(paths["test"], model.info.input_shapes))
    rows.append(
        {
            "noise": noise,
            "seed": seed,
            "method": "final_balanced",
            "ratio": len(removed) / len(labels),
            "n_removed": len(removed),
            "test_accuracy": acc,
            "test_loss": loss,
            "precision_at_n": float(flipped[removed].mean()) if flipped.any() else float("nan"),
            "seconds": round(time.perf_counter() - t, 1),
        }
    )
    save_rows(rows_path, rows)
    print(f"final_balanced n={len(removed)}: test accuracy {acc:.4f}, loss {loss:.4f}")


# ----------------------------------------------------------------------------- main


def main(argv=None):
    """Run the protocol; a bad option or output place stops it with one line, exit 2."""
    from sgd_influence_plugin.cli import report_errors

    return report_errors(
        lambda: _main(argv), lambda m: print(f"paper_protocol: error: {m}", file=sys.stderr)
    )


def _main(argv=None):
    a = parse_args(argv)
    if not a.task:
        check_report_place(a)  # before any task runs
    if a.task:
        noise, seed = a.task.split(",")
        run_task(a, float(noise), int(seed))
        return 0
    if a.balanced:
        noise, seed = a.balanced.split(",")
        run_balanced(a, float(noise), int(seed))
        report(a)
        return 0
    if a.report_only:
        report(a)
        return 0
    t0 = time.perf_counter()
    check_cluster(a)  # before anything is computed: the scheduler answers
    os.makedirs(a.work, exist_ok=True)
    build_pool(a)
    check_cluster(a, os.path.join(a.work, "pool", "train.csv"))  # its workers read the pool
    tasks = [(noise, int(seed)) for seed in floats(a.seeds) for noise in floats(a.noise)]
    failed = run_tasks(
        __file__,
        argv if argv is not None else sys.argv[1:],
        [
            (f"{noise:g},{seed}", os.path.join(a.work, f"task_{noise:g}_{seed}.log"))
            for noise, seed in tasks
        ],
        a.jobs,
    )
    report(a, time.perf_counter() - t0)
    if failed:
        print(f"failed tasks (see their .log in {a.work}): {failed}", file=sys.stderr)
        return 1
    return 0


def check_cluster(a, *paths):
    """With --cluster: the scheduler answers, has workers with this package, and they can
    read ``paths``; otherwise ClusterError (one line, exit status 2).
    """
    from sgd_influence_plugin.cluster import connect

    if not a.cluster:
        return
    with connect(a.cluster) as cluster:
        if paths:
            _, rows = read_csv_table(paths[0])
            first = os.path.join(os.path.dirname(paths[0]), rows[0][0])
            cluster.check_paths(list(paths) + [first], "training with nnabla_cli")


def run_tasks(script, argv, tasks, jobs):
    """Run each task as ``python SCRIPT ARGV --task TASK`` in its own process, ``jobs`` at
    once, its output to its log file; ``tasks``: (the ``--task`` value, the log's path) each.
    Returns the ``--task`` values of the tasks that failed.
    """
    running, failed = [], []
    for task, log_path in tasks:
        while len(running) >= jobs:
            failed += wait_one(running)
        cmd = [sys.executable, os.path.abspath(script)] + list(argv) + ["--task", task]
        log = open(log_path, "a")
        running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log, cmd))
    while running:
        failed += wait_one(running)
    return failed


def wait_one(running):
    """Wait for the first of the running tasks to end; returns its command if it failed."""
    while True:
        for item in running:
            proc, log, cmd = item
            if proc.poll() is not None:
                running.remove(item)
                log.close()
                return [cmd[-1]] if proc.returncode else []
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
