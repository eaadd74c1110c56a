"""The whole Fashion-MNIST training set (60,000 images) at the defaults, end to end, timed.

What it does (each step skipped when its output is already in ``--work``):

1. ``samples/fashion_mnist/build_dataset.py --full``: the 60,000 training images as
   ``train.csv`` and the 10,000 test images as ``val.csv`` (PNGs, console CSVs), and the
   sample's ``net.nntxt`` (the small CNN, Sgd lr 0.1, batch 64, 10 epochs).
2. ``nnabla_cli train`` on it: the console's own training engine.
3. ``sgd-influence run`` with no option but the files, as a user starts it; wall-clock
   seconds, and the stage timings of its ``influence_settings.yaml``, also in training epochs
   (``--epoch-seconds``: one plain SGD epoch of this model and data, measured here first).

Target (issue 19): 90 s or less on 2 cores. Prints the figures; ``--strict`` exits 1 when the
target is missed.

Run: ``.venv/bin/python benchmarks/full_run.py [--work benchmarks/full_work]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (ROOT, os.path.dirname(os.path.abspath(__file__))):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from sgd_influence_plugin.settings import read_yaml  # noqa: E402
from support import fashion_mnist  # noqa: E402

BIN = os.path.dirname(sys.executable)
TARGET_SECONDS = 90.0


def log(msg: str = "") -> None:
    print(msg, flush=True)


def step(cmd, **kw) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def training_epoch_seconds(result: str, data: str) -> float:
    """One plain SGD epoch of the trained model on the training set, timed as ``make bench``
    times it (:func:`replay_speed.epoch_seconds`, graphs built first), once."""
    from replay_speed import epoch_seconds

    from sgd_influence_plugin.dataset import load_dataset
    from sgd_influence_plugin.nnabla_adapter import load_model

    model = load_model(model=os.path.join(result, "results.nnp"))
    train = load_dataset(os.path.join(data, "train.csv"), model.info.input_shapes, jobs=2).arrays
    timing = argparse.Namespace(batch_size=model.info.solver.batch_size, lr=1e-4, seed=0)
    return epoch_seconds(model, train, timing, repeats=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=os.path.join(ROOT, "benchmarks", "full_work"))
    p.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    p.add_argument("extra", nargs="*", help="options for sgd-influence run (after --)")
    a = p.parse_args(argv)
    if not fashion_mnist.available():
        p.error(f"Fashion-MNIST not found in {fashion_mnist.DEFAULT_DIR}; run 'make data'")
    data, result = os.path.join(a.work, "data"), os.path.join(a.work, "result")
    if not os.path.exists(os.path.join(data, "net.nntxt")):
        log("building the 60,000-image dataset ...")
        build = os.path.join(ROOT, "samples", "fashion_mnist", "build_dataset.py")
        log(f"  {step([sys.executable, build, '--full', '--out', data]):.0f} s")
    if not os.path.exists(os.path.join(result, "results.nnp")):
        log("training the sample CNN with nnabla_cli train (10 epochs) ...")
        nntxt = os.path.join(data, "net.nntxt")
        os.makedirs(result, exist_ok=True)  # nnabla_cli writes progress.txt there first
        log(
            f"  {step([os.path.join(BIN, 'nnabla_cli'), 'train', '-c', nntxt, '-o', result]):.0f} s"
        )
    log("one plain SGD training epoch (for the units) ...")
    epoch = training_epoch_seconds(result, data)
    out = os.path.join(a.work, "out", "influence.csv")
    cmd = [
        os.path.join(BIN, "sgd-influence"), "run", "--model", os.path.join(result, "results.nnp"),
        "--train", os.path.join(data, "train.csv"), "--val", os.path.join(data, "val.csv"),
        "--output", out, "--quiet", *a.extra,
    ]  # fmt: skip
    log(f"sgd-influence run {' '.join(a.extra) or '(defaults)'} ...")
    seconds = step(cmd)
    facts = read_yaml(os.path.join(os.path.dirname(out), "influence_settings.yaml"))
    t = facts.get("timings_seconds", {})
    log("")
    log(f"cores: {len(os.sched_getaffinity(0))}; one training epoch E = {epoch:.1f} s")
    log(f"end to end: {seconds:.1f} s = {seconds / epoch:.2f} E (target <= {TARGET_SECONDS:g} s)")
    for key, value in t.items():
        counts = ("u_growth", "seconds_per_replay_step", "jobs", "replay_processes", "replay_steps")
        if isinstance(value, float) and key not in counts:
            log(f"  {key:<26} {value:8.2f} s  {value / epoch:6.2f} E")
    rec = facts.get("recommendation") or {}
    log(f"recommendation: {rec.get('reason', '-')}")
    met = seconds <= TARGET_SECONDS
    log(f"target: {'met' if met else 'MISSED'}")
    return 1 if a.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
