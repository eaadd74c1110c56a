"""The memory check's estimate (``memory.estimate_memory``) against the memory runs really take.

For a few kinds and sizes of console data, each with a network trained by ``nnabla_cli train``
(:mod:`support.results`), ``sgd-influence run`` runs as a subprocess exactly as a user starts
it (defaults, ``--jobs 1``, ``--trials 3``, spawned workers as on Windows and macOS) while
its process tree is polled every ``--interval`` seconds (:mod:`support.memory_probe`, Linux
``/proc``). For each run it prints and saves:

- **estimate**: the run's own ``memory.check_memory`` result (recorded by a wrapper around
  it inside the run: the same rows, values, parameters, processes and trials) and its parts;
- **at check**: the run's resident memory when the check ran (already taken, so already out
  of the available memory the estimate is compared with);
- **tree PSS**: the largest sum over the run's processes of their proportional set size
  (``smaps_rollup``: a page shared by k processes counts 1/k in each), the memory the run
  takes from the machine, sampled;
- **tree RSS**: the largest sum of their resident sizes (shared pages counted in every
  process: an upper bound of the same);
- **HWM**: the run's own peak resident size and its largest worker's (``VmHWM``, kept by the
  kernel between samples; ``RUSAGE_CHILDREN`` for workers that ended between two samples).

The run exits 1 when an estimate is below its run's tree PSS. Fixtures are built once in
``--workdir`` and reused (all cases: about 10 minutes on 2 cores). Not part of the test suite.

Run: ``.venv/bin/python benchmarks/memory_estimate.py [--cases gray3k_cnn,...] [--out-json P]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from support import console_kinds, fashion_mnist  # noqa: E402
from support.memory_probe import measured_run  # noqa: E402
from support.netdef import NetSpec  # noqa: E402
from support.results import train_on  # noqa: E402

MIB = 2**20

#: The Windows and macOS way of starting workers (each imports everything itself), on Linux.
SPAWN = "SGD_INFLUENCE_START=spawn"
#: name -> (data writer, its arguments, network, runs' extra options; ``VARIABLE=value`` an
#: environment variable of the run).
CASES = {
    "gray3k_cnn": (
        "png",
        (3000, 500, 28),
        "cnn",
        [[], ["--jobs", "1"], ["--trials", "3"], ["--trials", "3", SPAWN]],
    ),
    "gray12k_lenet": (
        "png",
        (12000, 1000, 28),
        "lenet",
        [[], ["--jobs", "1"], ["--trials", "3"], ["--trials", "3", SPAWN]],
    ),
    "colour64_mlp": ("colour", (3000, 500, 64), "mlp", [[], ["--jobs", "1"]]),
    "colour64_logreg": ("colour", (3000, 500, 64), "logreg", [[], ["--jobs", "1"]]),
    "colour64_8k_mlp": (
        "colour",
        (8000, 1000, 64),
        "mlp",
        [[], ["--jobs", "1"], ["--trials", "3", SPAWN]],
    ),
    "colour128_mlp": (
        "colour",
        (1500, 300, 128),
        "mlp",
        [
            [],
            ["--jobs", "1"],
            ["--trials", "3"],
            ["--trials", "3", SPAWN],
            ["--jobs", "4", "--trials", "4"],
        ],
    ),
    "table20k_mlp": ("table", (20000, 2000), "mlp", [[]]),
    "series256_mlp": ("series", (3000, 500, 256), "mlp", [[]]),
}


def log(msg: str = "") -> None:
    print(msg, flush=True)


def build_case(work: str, name: str) -> dict:
    """The case's data and trained result in ``work/name`` (built once)."""
    kind, sizes, arch, _ = CASES[name]
    folder = os.path.join(work, name)
    data_dir = os.path.join(work, "data_" + kind + "_".join(str(x) for x in sizes))
    if kind == "png":
        data = fashion_mnist.make_png_dataset(data_dir, *sizes[:2], size=sizes[2], seed=0)
        data = {**data, "input_shape": (1, sizes[2], sizes[2])}
    elif kind == "colour":
        data = console_kinds.write_colour(data_dir, *sizes[:2], size=sizes[2], seed=0)
    elif kind == "table":
        data = console_kinds.write_table(data_dir, *sizes, seed=0)
    else:
        data = console_kinds.write_series(data_dir, *sizes[:2], length=sizes[2], seed=0)
    result = os.path.join(folder, "result")
    if not os.path.exists(os.path.join(result, "results.nnp")):
        classes = 10 if kind == "png" else (3 if kind == "table" else 2)
        lr = 0.02 if kind == "table" else 0.05
        spec = NetSpec(arch=arch, n_classes=classes, max_epoch=2, lr=lr)
        t0 = time.perf_counter()
        train_on(result, data, spec)
        log(f"  {name}: trained in {time.perf_counter() - t0:.0f} s")
    return {"result": result, **data}


def run_measured(case: dict, out_dir: str, extra: list, interval: float) -> dict:
    """One ``sgd-influence run`` on ``case`` (:func:`support.memory_probe.measured_run`)."""
    argv = ["run", "--model", os.path.join(case["result"], "results.nnp"), "--train",
            case["train"], "--val", case["val"], "--output", os.path.join(out_dir, "influence.csv"),
            "--quiet", *(a for a in extra if "=" not in a)]  # fmt: skip
    env = dict(a.split("=", 1) for a in extra if "=" in a)  # VARIABLE=value: environment
    return {"args": extra, **measured_run(argv, out_dir, env, interval)}


def row(name: str, r: dict) -> str:
    """One table row, in MiB; the estimate over the tree's PSS and RSS peaks."""
    n = r["need"]
    est = n["total"] / MIB
    keys = ("arrays", "copies", "rows", "processes", "features")
    parts = "/".join(f"{n.get(k, 0) / MIB:.0f}" for k in keys)
    return (
        f"| {name} {' '.join(r['args']) or 'defaults'} | {est:.0f} ({parts}) | "
        f"{n['rss_kib'] / 1024:.0f} | {r['tree_pss'] / 1024:.0f} | {r['tree_rss'] / 1024:.0f} | "
        f"{r['own_hwm'] / 1024:.0f} / {r['worker_hwm'] / 1024:.0f} | {r.get('processes', 0)} | "
        f"{est / (r['tree_pss'] / 1024):.2f} / {est / (r['tree_rss'] / 1024):.2f} | "
        f"{r['seconds']:.0f} s |"
    )


HEADER = (
    "| case, options | estimate MiB (arrays/copies/rows/processes/features) | at check | "
    "tree PSS | tree RSS | HWM own / worker | processes | estimate / PSS / RSS | wall |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/sgdi_memory_bench")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    p.add_argument("--interval", type=float, default=0.05, help="seconds between samples")
    p.add_argument("--out-json", default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = {}
    for name in args.cases.split(","):
        case = build_case(args.workdir, name)
        for extra in CASES[name][3]:
            tag = "_".join(a.replace("=", "_") for a in extra) or "defaults"
            out_dir = os.path.join(args.workdir, name, "out_" + tag)
            r = run_measured(case, out_dir, extra, args.interval)
            results.setdefault(name, []).append(r)
            log(row(name, r))
    log(HEADER)
    for name, runs in results.items():
        for r in runs:
            log(row(name, r))
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(results, f, indent=1)
    runs = [r for rs in results.values() for r in rs]
    return 1 if any(r["need"]["total"] < r["tree_pss"] * 1024 for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
