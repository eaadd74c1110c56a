"""The paper protocol's rows and report (``paper_protocol.py``): the rows each task writes,
and from them ``OUT/results.csv``, ``summary.md``, ``figure2.png``, ``settings.yaml`` and
``estimates/``, each row paired with the same task's n = 0 model.

The report follows the ownership rule of ``sgd_influence_plugin.ownership``: only files the
protocol wrote in ``OUT`` are replaced (anything else is refused), all together.
"""

import csv
import os

import numpy as np

from sgd_influence_plugin import ownership, places, staged_commit
from sgd_influence_plugin.dataset import read_csv_table
from sgd_influence_plugin.evaluate_report import aggregate, mean_sd
from sgd_influence_plugin.io_utils import atomic_write
from sgd_influence_plugin.settings import InfluenceSettings, read_yaml, write_yaml
from support import fashion_mnist

#: Estimators compared, in the order they are run: name -> InfluenceSettings overrides.
#: "final" is the plugin at its defaults; "all" is Hara et al.'s estimator as published: one
#: recorded epoch replayed with its stored parameters, no averaging over trials.
ESTIMATORS = {"final": {}, "all": {"cache": "all", "trials": 1}}
METHODS = ("final", "all", "random")
LABELS = {
    "final": "final-parameter estimate (this plugin, defaults)",
    "all": "all-parameters estimate (Hara et al.)",
    "random": "random removal",
}
COLORS = {"final": "#cc3311", "all": "#009988", "random": "#0077bb"}
#: What the report writes into --out, the main file last, and its folders.
REPORT_FILES = ("settings.yaml", "figure2.png", "summary.md", "results.csv")
REPORT_FOLDERS = ("estimates",)
ROW_KEYS = (
    "noise",
    "seed",
    "method",
    "ratio",
    "n_removed",
    "test_accuracy",
    "test_loss",
    "precision_at_n",
    "seconds",
)


def floats(text):
    """The numbers of a comma-separated option."""
    return [float(x) for x in text.split(",") if x.strip()]


def save_rows(path, rows):
    """Write result rows (dicts with :data:`ROW_KEYS`) to ``path`` atomically."""
    with atomic_write(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_KEYS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def read_task_rows(path):
    """The rows (dicts of strings) of a task's CSV, or none if it is not there yet."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def collect(a):
    """Every task's rows under ``--work``, numbers parsed."""
    rows = []
    for name in sorted(os.listdir(a.work)) if os.path.isdir(a.work) else []:
        for r in read_task_rows(os.path.join(a.work, name, "rows.csv")):
            r = dict(r)
            for k in ("seed", "n_removed"):
                r[k] = int(r[k])
            for k in ("noise", "ratio", "test_accuracy", "test_loss", "precision_at_n", "seconds"):
                r[k] = float(r[k])
            rows.append(r)
    return rows


def check_report_place(a):
    """Refuse an --out whose report files or estimates/ the protocol did not write."""
    places.check_output_folder(a.out, "--out", REPORT_FILES, REPORT_FOLDERS)


def report(a, wall_seconds=None):
    """Write results.csv, summary.md, figure2.png, settings.yaml and estimates/ from the task
    rows into --out: staged, then committed together; only files the protocol wrote there
    are replaced.
    """
    check_report_place(a)
    with staged_commit.staging(a.out, "--out") as stage:
        write_report(a, stage, wall_seconds)
        names = REPORT_FOLDERS + REPORT_FILES
        moves = [(os.path.join(stage, n), os.path.join(a.out, n)) for n in names]
        staged_commit.commit_staged(a.out, moves, [], "--out")
    print(f"report: {os.path.join(a.out, 'summary.md')}")


def write_report(a, out, wall_seconds=None):
    """The report's files, written into the folder ``out``."""
    rows = collect(a)
    if not rows:
        raise SystemExit(f"no results under {a.work}")
    save_rows(
        os.path.join(out, "results.csv"),
        sorted(rows, key=lambda r: (r["noise"], r["seed"], r["n_removed"])),
    )
    noises = sorted({r["noise"] for r in rows})
    tables = {}
    lines = [
        "# Removal and retraining from scratch (Suzuki et al. 2021, Figure 2 protocol)",
        "",
        f"Fashion-MNIST, {a.train} training / {a.val} validation images split by the seed, "
        f"{a.test} test images; the sample CNN; plain SGD lr {a.lr:g}, batch {a.batch_size}, "
        f"{a.epochs} epochs, trained from scratch by nnabla_cli with a seeded initialisation.",
        "",
        "Δ = the same seed's value minus its no-removal value (same split, initialisation and "
        "order); mean ± sample standard deviation over seeds. `wins` = seeds where Δ accuracy "
        "> 0.",
    ]
    for noise in noises:
        sub = [dict(r) for r in rows if r["noise"] == noise]
        agg = paired_table(sub)
        tables[noise] = agg
        lines += ["", f"## {'clean labels' if noise == 0 else f'{noise:.0%} flipped labels'}", ""]
        lines += [
            "| removed | method | seeds | test accuracy | Δ accuracy | wins | Δ test loss |"
            + (" precision@n |" if noise > 0 else ""),
            "|---|---|---|---|---|---|---|" + ("---|" if noise > 0 else ""),
        ]
        for g in agg:
            line = (
                f"| {g['ratio']:.0%} ({g['n_removed']}) | {g['method']} | {g['seeds']} | "
                f"{mean_sd(g['acc_mean'], g['acc_std'])} | "
                f"{mean_sd(g['dacc_mean'], g['dacc_std'], '{:+.4f}')} | {g['wins']} | "
                f"{mean_sd(g['dloss_mean'], g['dloss_std'], '{:+.4f}')} |"
            )
            if noise > 0:
                line += f" {g['precision_mean']:.3f} |" if g["n_removed"] else " - |"
            lines.append(line)
    facts_lines = ranking_lines(a)
    if facts_lines:
        lines += ["", "## The rankings", ""] + facts_lines
    per_class = class_lines(a)
    if per_class:
        lines += ["", "## Per class", ""] + per_class
    if wall_seconds is not None:
        lines += [
            "",
            f"Wall time of this run: {wall_seconds / 60:.0f} min ({a.jobs} tasks at once).",
        ]
    with atomic_write(os.path.join(out, "summary.md")) as f:
        f.write("\n".join(lines) + "\n")
    plot(os.path.join(out, "figure2.png"), tables, a)
    # Each estimate's settings, rates, u growth and time, beside the report.
    estimates = os.path.join(out, "estimates")
    os.makedirs(estimates, exist_ok=True)
    ownership.mark_folder(estimates)
    for name in sorted(os.listdir(a.work)):
        for est in ESTIMATORS:
            src = os.path.join(a.work, name, f"scores_{est}.yaml")
            if os.path.exists(src):
                write_yaml(os.path.join(estimates, f"{name}_{est}.yaml"), read_yaml(src))
    facts = {
        "protocol": {
            "train": a.train,
            "val": a.val,
            "test": a.test,
            "lr": a.lr,
            "batch_size": a.batch_size,
            "epochs": a.epochs,
            "network": "sample CNN (make_net.py: two 3x3 conv + ReLU + max-pool, 32 hidden, 10)",
            "trainer": "nnabla_cli train, seeded initialisation (initial_parameters)",
            "ratios": floats(a.ratios),
            "seeds": sorted({r["seed"] for r in rows}),
            "noise": noises,
        },
        "estimators": {
            name: InfluenceSettings(**overrides).to_dict() for name, overrides in ESTIMATORS.items()
        },
        "rows": len(rows),
        "training_seconds_mean": round(
            float(np.mean([r["seconds"] for r in rows if r["seconds"]])), 1
        ),
    }
    if wall_seconds is not None:
        facts["wall_seconds"] = round(wall_seconds, 1)
    old = os.path.join(a.out, "settings.yaml")
    if wall_seconds is None and os.path.exists(old):
        prev = read_yaml(old)
        if "wall_seconds" in prev:
            facts["wall_seconds"] = prev["wall_seconds"]
    write_yaml(os.path.join(out, "settings.yaml"), facts)


def ranking_lines(a):
    """Per task: how the two estimators agree, and what the removed samples are.

    Spearman correlation of the final and all-parameters scores; the overlap of their top
    ``max(--ratios)`` sets; the largest class share among the removed (by the final estimate)
    against 10% overall; with noise, the flipped share among them (precision).
    """
    from sgd_influence_plugin.fidelity import correlations

    out = []
    share = max(floats(a.ratios))
    for name in sorted(os.listdir(a.work)) if os.path.isdir(a.work) else []:
        task = os.path.join(a.work, name)
        paths = [os.path.join(task, f"scores_{e}.npy") for e in ESTIMATORS]
        if not all(os.path.exists(p) for p in paths):
            continue
        final, every = (np.load(p) for p in paths)
        k = int(round(share * len(final)))
        top_final = np.argsort(final, kind="stable")[:k]
        top_all = np.argsort(every, kind="stable")[:k]
        _, train_rows = read_csv_table(os.path.join(task, "train.csv"))
        labels = np.array([int(r[1]) for r in train_rows])
        counts = np.bincount(labels[top_final], minlength=10) / k
        noise = read_task_rows(os.path.join(task, "noise.csv"))
        flipped = np.array([r["flipped"] == "1" for r in noise])
        line = (
            f"- {name}: Spearman(final, all) {correlations(final, every)[1]:.2f}; top {share:.0%} "
            f"overlap {len(np.intersect1d(top_final, top_all)) / k:.2f}; largest class among the "
            f"removed: {fashion_mnist.CLASS_NAMES[int(counts.argmax())]} {counts.max():.0%}"
        )
        if flipped.any():
            line += (
                f"; flipped among them: final {flipped[top_final].mean():.2f}, all "
                f"{flipped[top_all].mean():.2f}"
            )
        out.append(line)
    return out


def class_lines(a):
    """Per task and method at the largest ratio: removed samples and the change of test
    accuracy per class against the task's n = 0 model (markdown table rows).
    """
    from sgd_influence_plugin.dataset import load_dataset
    from sgd_influence_plugin.nnabla_adapter import load_model

    names = [c.split("/")[0] for c in fashion_mnist.CLASS_NAMES]
    out = []
    for name in sorted(os.listdir(a.work)) if os.path.isdir(a.work) else []:
        task = os.path.join(a.work, name)
        rows = [r for r in read_task_rows(os.path.join(task, "rows.csv")) if r["method"] != "none"]
        if not rows or not os.path.exists(os.path.join(task, "base", "results.nnp")):
            continue
        count = max(int(r["n_removed"]) for r in rows)
        _, train_rows = read_csv_table(os.path.join(task, "train.csv"))
        labels = np.array([int(r[1]) for r in train_rows])
        test = y = None
        base_acc = None
        table = [
            f"{name}, {count} removed: removed per class / Δ test accuracy per class (points)",
            "",
            "| method | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for method in ("none",) + METHODS:
            folder = "base" if method == "none" else f"{method}_{count}"
            nnp = os.path.join(task, folder, "results.nnp")
            if not os.path.exists(nnp):
                continue
            model = load_model(model=nnp)
            if test is None:
                test = load_dataset(os.path.join(task, "test.csv"), model.info.input_shapes)
                y = test.arrays["y"].reshape(len(test.rows)).astype(int)
            pred = model.predict(test.arrays).reshape(len(y), -1).argmax(axis=1)
            acc = np.array([(pred[y == k] == k).mean() for k in range(len(names))])
            if base_acc is None:
                base_acc = acc
                continue
            if method == "random":
                removed = np.random.RandomState(10_000 + int(rows[0]["seed"])).permutation(
                    len(labels)
                )[:count]
            else:
                removed = np.argsort(
                    np.load(os.path.join(task, f"scores_{method}.npy")), kind="stable"
                )[:count]
            counts = np.bincount(labels[removed], minlength=len(names))
            table.append(
                f"| {method} | "
                + " | ".join(f"{c} / {100 * d:+.1f}" for c, d in zip(counts, acc - base_acc))
                + " |"
            )
        out += table + [""]
    return out


def paired_table(rows):
    """:func:`evaluate.aggregate` (paired Δ against each seed's n = 0 row, wins, precision)
    per (n, method), in the order n, then none / final / all / random / final_balanced.
    """
    order = {m: i for i, m in enumerate(("none",) + METHODS + ("final_balanced",))}
    return sorted(aggregate(rows), key=lambda g: (g["n_removed"], order[g["method"]]))


def plot(path, tables, a):
    """Top row: test accuracy (mean ± sample SD over seeds); then the paired changes of test
    accuracy and test loss against the same seed's no-removal model (mean ± SD), which removes the
    seed-to-seed spread.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(tables)
    fig, axes = plt.subplots(3, cols, figsize=(5.5 * cols, 11), squeeze=False, sharex=True)
    for c, (noise, agg) in enumerate(sorted(tables.items())):
        none = [g for g in agg if g["method"] == "none"]
        for row, (key, ylabel, scale) in enumerate(
            (
                ("acc", "test accuracy", 1.0),
                ("dacc", "Δ test accuracy vs same seed, n = 0 (points)", 100.0),
                ("dloss", "Δ test loss vs same seed, n = 0", 1.0),
            )
        ):
            ax = axes[row][c]
            for method in METHODS:
                pts = sorted(
                    none + [g for g in agg if g["method"] == method], key=lambda g: g["ratio"]
                )
                x = [100 * g["ratio"] + (METHODS.index(method) - 1) * 0.1 for g in pts]
                ax.errorbar(
                    x,
                    [scale * g[key + "_mean"] for g in pts],
                    yerr=[scale * g[key + "_std"] for g in pts],
                    fmt="o-",
                    capsize=3,
                    color=COLORS[method],
                    label=LABELS[method],
                )
            if row:
                ax.axhline(0, color="gray", lw=1, ls="--")
            if row == 2:
                ax.set_xlabel("removed training samples (% of the training set)")
            if row == 0:
                ax.set_title("clean labels" if noise == 0 else f"{noise:.0%} flipped labels")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    axes[1][0].legend(fontsize=8, loc="lower left")
    seeds = sorted(
        {g["seeds"] for agg in tables.values() for g in agg if g["method"] in ("none",) + METHODS}
    )
    fig.suptitle(
        f"Fashion-MNIST, retrained from scratch: {a.train} images, SGD lr {a.lr:g}, "
        f"batch {a.batch_size}, {a.epochs} epochs, {min(seeds)}-{max(seeds)} seeds per point"
        if min(seeds) != max(seeds)
        else f"Fashion-MNIST, retrained from scratch: {a.train} images, SGD lr {a.lr:g}, "
        f"batch {a.batch_size}, {a.epochs} epochs, {max(seeds)} seeds"
    )
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
