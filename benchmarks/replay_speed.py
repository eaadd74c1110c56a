"""Speed of SGD-influence runs against a plain SGD training epoch and the published plugin's method.

One run builds a Fashion-MNIST subset (PNGs and console CSVs, default 3,000 training images),
and for each network (default: the sample CNN ``cnn`` and the LeNet-style ``lenet`` of
:mod:`support.netdef`) writes a console-style ``net.nntxt``, trains it with
``nnabla_cli train`` and measures, on that model and data (B = 32 unless ``--batch-size``):

- **epoch**: one plain SGD training epoch, :func:`core.sgd_epoch` (median of 3, graphs built
  beforehand). Every end-to-end time below is also given as a multiple of it.
- **end to end**: ``sgd-influence run`` as a subprocess, exactly as a user starts it (the
  interpreter's start-up, imports, reading the CSVs, every trial, the recommendation and all
  outputs), once with its defaults, once with ``--no-recommend`` (the scores alone, what the
  published plugin computes) and once with ``--trials 3`` (the default before one trial);
  wall-clock seconds and the peak resident memory of the run's process. The defaults' own
  ``settings.yaml`` timings are printed stage by stage in training epochs, next to each
  stage's floor (the training phase is one epoch; a replay step is two forward-backward
  passes, so a replay is at least two epochs of work, one epoch of wall time in two
  processes, per query vector: a run that recommends replays two; the check runs one epoch
  of its sample per candidate plus one).
- **baseline**: the published NNC plugin's method, the only code re-implemented here: per trial
  one SGD epoch (:func:`core.sgd_epoch`) and the validation gradient, then a backward replay
  whose every step computes the per-sample gradients by a batch-size-1 forward/backward loop,
  their dot products with u in numpy, and a separate Hessian-vector product of the batch;
  ``--baseline-trials`` (default 6) trials one after another, as that plugin runs them. Its
  graphs are built once and reused, so it is as fast as that method can be made here; the time
  excludes reading and writing (which favours the baseline).
- **steps**: seconds per replay step of :class:`replay_steps.ExactStep` (one fused double-backward
  pass), :class:`replay_steps.FiniteDifferenceStep` (two first-order passes), the same two for two
  query vectors at once (:mod:`crossfit`, what a run that recommends replays) and the
  baseline's loop step, against one training step (:func:`core.sgd_epoch` on one batch),
  interleaved step by step on full batches at fixed parameters; medians of wall time (the
  targets) and of this process's CPU time (the same ratios, less disturbed when other
  processes share the CPU).
- **checks**: the exact step against the baseline's loop (dot products and H u of a few
  batches; they must agree within ``--tolerance`` or the script exits 1, because the timings
  would not compare the same computation), and a whole replay with the fd step against the
  exact one at ``--replay-lr`` (default 0.01, a stable rate: where the replay expands u, any
  difference grows with it): Pearson and Spearman of the scores, largest difference.
- **cache**: bytes of the final-parameters cache of the default run (``--cache-dir``) against
  the model's ``.h5`` plus 4N, and of an all-parameters cache (:func:`influence.compute_influence`).
- **memory** (``--memory``): peak resident memory of one exact replay, one fd replay, one
  baseline epoch and one training epoch, each in a fresh process (Linux ``VmHWM``).

Targets are printed beside the figures; ``--strict`` makes a missed one exit 1.
``--context cudnn`` runs the in-process measurements and the CLI runs on the GPU (needs
nnabla-ext-cuda); ``nnabla_cli train`` stays on the CPU.

Run: ``.venv/bin/python benchmarks/replay_speed.py [--arch cnn,lenet] [--out-json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from sgd_influence_plugin import core, crossfit, influence, output, parallel, replay, replay_steps  # noqa: E402
from sgd_influence_plugin.dataset import load_dataset  # noqa: E402
from sgd_influence_plugin.errors import SGDInfluenceError  # noqa: E402
from sgd_influence_plugin.nnabla_adapter import load_model, make_context  # noqa: E402
from sgd_influence_plugin.settings import InfluenceSettings, read_yaml  # noqa: E402
from support import fashion_mnist  # noqa: E402
from support.netdef import ARCHITECTURES, NetSpec, write_nntxt  # noqa: E402

NNABLA_CLI = os.path.join(os.path.dirname(sys.executable), "nnabla_cli")

#: Targets: (figure key, comparison, bound, what it means).
TARGETS = (
    ("baseline_over_default", ">=", 20.0, "baseline / defaults end to end"),
    ("baseline_over_scores_only", ">=", 20.0, "baseline / --no-recommend end to end"),
    ("exact_over_train", "<=", 3.5, "exact replay step / training step"),
    ("fd_over_train", "<=", 3.5, "fd replay step / training step"),
    ("final_cache_overhead_abs", "<=", 4096, "|final cache - (model h5 + 4N)| bytes"),
)


def log(msg: str = "") -> None:
    print(msg, flush=True)


def cli_env() -> dict:
    """Environment for subprocesses: this checkout's package first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def rel_diff(a, b) -> float:
    """max|a - b| / max|b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


# ------------------------------------------------------------------------------------------
# Setup: data, network definition, training
# ------------------------------------------------------------------------------------------


def build_data(work: str, args) -> dict:
    sizes = fashion_mnist.SplitSizes(train=args.n_train, val=args.n_val, test=args.n_test)
    return fashion_mnist.build_splits(os.path.join(work, "data"), sizes, seed=args.seed)


def train_network(work: str, arch: str, csvs: dict, args) -> str:
    """net.nntxt + ``nnabla_cli train``; returns the result folder (with results.nnp)."""
    result = os.path.join(work, f"result_{arch}")
    os.makedirs(result, exist_ok=True)
    spec = NetSpec(
        arch=arch,
        batch_size=args.batch_size,
        lr=args.lr,
        max_epoch=args.train_epochs,
        iter_per_epoch=max(1, args.n_train // args.batch_size),
        train_csv=csvs["train"],
        val_csv=csvs["val"],
        seed=args.seed,
    )
    nntxt = write_nntxt(spec, os.path.join(result, "net.nntxt"))
    proc = subprocess.run(
        [NNABLA_CLI, "train", "-c", nntxt, "-o", result], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"nnabla_cli train failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    with zipfile.ZipFile(os.path.join(result, "results.nnp")) as zf, zf.open(
        "parameter.h5"
    ) as src, open(os.path.join(result, "parameters.h5"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    return result


# ------------------------------------------------------------------------------------------
# The baseline: the published plugin's method (the only re-implemented code)
# ------------------------------------------------------------------------------------------


class LoopMethod:
    """The published plugin's replay step: per-sample gradients by a batch-size-1
    forward/backward loop, dot products with u in numpy, and a separate Hessian-vector product
    of the batch. Graphs are built once and reused."""

    def __init__(self, model):
        self.one = model.graph(1)
        self.params = list(self.one.params.values())
        # core's fused graphs, used for H u only (param.g): w.need_grad off, so no per-sample
        # dot products come out of it. A one-sample batch is padded as core does.
        self._hvp = core.GraphCache(model, fused=True)
        self.seconds_samples = 0.0
        self.seconds_hvp = 0.0

    def sample_dots(self, arrays, idx, u) -> np.ndarray:
        """<u, grad l_j> for each j in idx: batch-1 forward/backward, dot product in numpy."""
        dots = np.empty(len(idx))
        for i, j in enumerate(idx):
            for col, var in self.one.inputs.items():
                var.d = arrays[col][j : j + 1]
            self.one.loss.forward(clear_no_need_grad=True)
            for p in self.params:
                p.grad.zero()
            self.one.loss.backward(clear_buffer=True)
            dots[i] = sum(float(np.vdot(p.g, uk)) for p, uk in zip(self.params, u))
        return dots

    def hessian_vector(self, arrays, idx, u):
        """H u of the batch-mean loss, one array per parameter."""
        sg = self._hvp(len(idx))
        sg.w.need_grad = False
        sg.feed(arrays, idx, np.full(len(idx), 1.0 / len(idx), dtype=np.float32))
        for var, value in zip(sg.u, u):
            var.d = value
        sg.score.forward(clear_no_need_grad=True)
        for p in sg.params:
            p.grad.zero()
        sg.score.backward(clear_buffer=True)
        return [np.array(p.g, copy=True) for p in sg.params]

    def __call__(self, arrays, idx, u):
        """Same call and result as core's replay steps: ``(dots, hu)``."""
        t0 = time.perf_counter()
        dots = self.sample_dots(arrays, idx, u)
        t1 = time.perf_counter()
        hu = self.hessian_vector(arrays, idx, u)
        self.seconds_samples += t1 - t0
        self.seconds_hvp += time.perf_counter() - t1
        return dots, hu


def baseline_replay(loop: LoopMethod, arrays, order, lrs, batch_size, u_list, wd=0.0):
    """The loop method over one epoch, backwards like replay.replay: influence (N,)."""
    n = len(next(iter(arrays.values())))
    u_cur = [x.copy() for x in u_list]
    infl = np.zeros(n)
    for t in range(core.n_steps(len(order), batch_size) - 1, -1, -1):
        idx = core.step_indices(order, t, batch_size)
        dots, hu = loop(arrays, idx, u_cur)
        infl[idx] += float(lrs[t]) / len(idx) * dots
        u_cur = replay_steps.update_query(u_cur, hu, float(lrs[t]), wd)
    return infl


def baseline_trials(model, train, val, args, trials: int) -> dict:
    """``trials`` trials of the published plugin's method, one after another: seconds."""
    theta0 = model.get_params()
    n = len(next(iter(train.values())))
    lrs = np.full(core.n_steps(n, args.batch_size), args.lr, np.float32)
    loop = LoopMethod(model)
    graphs = core.GraphCache(model, fused=False)
    start = time.perf_counter()
    for m in range(trials):
        model.set_params(theta0)
        order = core.epoch_orders(n, 1, args.seed + m)[0]
        core.sgd_epoch(model, train, order, lrs, args.batch_size, graphs=graphs)
        u = core.validation_gradient(model, val)
        baseline_replay(loop, train, order, lrs, args.batch_size, [u[k] for k in u])
    seconds = time.perf_counter() - start
    model.set_params(theta0)
    return {"trials": trials, "seconds": seconds}


# ------------------------------------------------------------------------------------------
# Measurements with the package's functions
# ------------------------------------------------------------------------------------------


def epoch_seconds(model, train, args, repeats: int = 3) -> float:
    """Median wall time of one plain SGD epoch (core.sgd_epoch), graphs built beforehand."""
    theta0 = model.get_params()
    n = len(next(iter(train.values())))
    lrs = np.full(core.n_steps(n, args.batch_size), args.lr, np.float32)
    graphs = core.GraphCache(model, fused=False)
    order = core.epoch_orders(n, 1, args.seed)[0]
    core.sgd_epoch(model, train, order[: 2 * args.batch_size], lrs, args.batch_size, graphs=graphs)
    if n % args.batch_size:
        graphs(n % args.batch_size)
    times = []
    for _ in range(repeats):
        model.set_params(theta0)
        t0 = time.perf_counter()
        core.sgd_epoch(model, train, order, lrs, args.batch_size, graphs=graphs)
        times.append(time.perf_counter() - t0)
    model.set_params(theta0)
    return float(np.median(times))


def measure_steps(model, train, u_list, args) -> dict:
    """Interleaved per-step timing of the exact, fd and loop steps, of the exact and fd steps
    for two query vectors (a run that recommends, :mod:`crossfit`), and a training step."""
    n = len(next(iter(train.values())))
    B = args.batch_size
    order = core.epoch_orders(n, 1, args.seed)[0]
    T = core.n_steps(n, B)
    lrs = np.full(T, args.lr, np.float32)
    theta = model.get_params()
    exact, fd, loop = (
        replay_steps.ExactStep(model),
        replay_steps.FiniteDifferenceStep(model),
        LoopMethod(model),
    )
    # two query vectors in one step, as a run that recommends replays them (crossfit.py)
    exact2, fd2 = crossfit.ExactSteps(model), crossfit.FiniteDifferenceSteps(model)
    pair = [u_list, [np.float32(0.5) * x for x in u_list]]
    train_graphs = core.GraphCache(model, fused=False)

    def train_step(idx, t):
        core.sgd_epoch(model, train, idx, lrs[t : t + 1], B, graphs=train_graphs)

    full = [t for t in range(T) if len(core.step_indices(order, t, B)) == B]
    keys = ("exact", "fd", "exact2", "fd2", "loop", "train")
    times = {k: [] for k in keys}
    cpu = {k: [] for k in keys}

    def stamp():
        return time.perf_counter(), time.process_time()

    for r in range(args.repeats + 1):
        warm = r == 0
        for i in range(args.warmup if warm else args.steps):
            t = full[i % len(full)]
            idx = core.step_indices(order, t, B)
            stamps = [stamp()]
            exact(train, idx, u_list)
            stamps.append(stamp())
            fd(train, idx, u_list)
            stamps.append(stamp())
            exact2(train, idx, pair)
            stamps.append(stamp())
            fd2(train, idx, pair)
            stamps.append(stamp())
            loop(train, idx, u_list)
            stamps.append(stamp())
            train_step(idx, t)
            stamps.append(stamp())
            model.set_params(theta)  # the training step's change, undone outside the timing
            if not warm:
                for k, key in enumerate(keys):
                    times[key].append(stamps[k + 1][0] - stamps[k][0])
                    cpu[key].append(stamps[k + 1][1] - stamps[k][1])
        if warm:
            loop.seconds_samples = loop.seconds_hvp = 0.0
    out = {k: float(np.median(v)) for k, v in times.items()}
    # CPU time of this process: the same ratios, less disturbed by other processes on a
    # shared machine (wall time is what the targets use)
    out["cpu"] = {k: float(np.median(v)) for k, v in cpu.items()}
    out["n"] = len(times["train"])
    out["loop_per_sample_gradients"] = loop.seconds_samples / out["n"]
    out["loop_hessian_vector"] = loop.seconds_hvp / out["n"]
    return out


def check_steps(model, train, u_list, args) -> dict:
    """The exact step against the loop (a few batches), and a whole fd replay against the
    exact one."""
    n = len(next(iter(train.values())))
    B = args.batch_size
    order = core.epoch_orders(n, 1, args.seed + 100)[0]
    exact, loop = replay_steps.ExactStep(model), LoopMethod(model)
    dots_diff, hvp_diff = [], []
    for t in range(3):
        idx = core.step_indices(order, t, B)
        d0, h0 = exact(train, idx, u_list)
        d1, h1 = loop(train, idx, u_list)
        dots_diff.append(rel_diff(d0, d1))
        hvp_diff.append(
            rel_diff(
                np.concatenate([h.ravel() for h in h0]), np.concatenate([h.ravel() for h in h1])
            )
        )
    lrs = np.full(core.n_steps(n, B), args.replay_lr, np.float32)
    names = list(model.graph(B).params)
    u = dict(zip(names, u_list))
    infl_exact, st_exact = replay.replay(model, train, order, lrs, B, u)
    infl_fd, st_fd = replay.replay(model, train, order, lrs, B, u, step="fd")
    return {
        "exact_vs_loop_dots": max(dots_diff),
        "exact_vs_loop_hvp": max(hvp_diff),
        "fd_vs_exact_pearson": float(np.corrcoef(infl_fd, infl_exact)[0, 1]),
        "fd_vs_exact_spearman": spearman(infl_fd, infl_exact),
        "fd_vs_exact_max_rel_diff": rel_diff(infl_fd, infl_exact),
        "u_growth_exact": st_exact.u_growth,
        "u_growth_fd": st_fd.u_growth,
        "replay_seconds_exact": st_exact.seconds,
        "replay_seconds_fd": st_fd.seconds,
    }


def run_cli(result: str, csvs: dict, out_dir: str, extra, context: str) -> dict:
    """``sgd-influence run`` as a subprocess: wall seconds and the run's settings.yaml."""
    cmd = [
        sys.executable,
        "-c",
        RSS_WRAPPER,
        "run",
        "--model",
        os.path.join(result, "results.nnp"),
        "--train",
        csvs["train"],
        "--val",
        csvs["val"],
        "--output",
        os.path.join(out_dir, "influence.csv"),
        "--context",
        context,
        "--quiet",
        *extra,
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env()
    )
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    facts = read_yaml(os.path.join(out_dir, "influence_settings.yaml"))
    rss = [int(x) for x in err.strip().splitlines()[-1].split()[1:]]
    return {"args": list(extra), "seconds": seconds, "settings_yaml": facts, "peak_rss_kib": rss}


#: ``python -c`` body: the CLI as ``python -m sgd_influence_plugin.cli`` runs it, then, last on
#: stderr, ``peak-rss <its own KiB> <its largest worker's KiB>`` (Linux ``ru_maxrss``).
RSS_WRAPPER = (
    "import atexit, resource, sys\n"
    "def _rss():\n"
    "    r = resource.getrusage\n"
    "    sys.stderr.write('\\npeak-rss %d %d\\n' % (r(resource.RUSAGE_SELF).ru_maxrss, "
    "r(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "atexit.register(_rss)\n"
    "sys.argv[0] = 'sgd-influence'\n"
    "from sgd_influence_plugin.launch import entry\n"
    "entry()\n"
)


def startup_seconds() -> float:
    """A fresh interpreter importing nnabla and the runner (what every CLI run pays first)."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import nnabla.functions, sgd_influence_plugin.runner"],
        capture_output=True,
        env=cli_env(),
        check=True,
    )
    return time.perf_counter() - t0


def stages_in_process(result: str, csvs: dict, work: str, context: str) -> dict:
    """Loading, reading and writing, timed here with the package's functions."""
    t0 = time.perf_counter()
    model = load_model(model=os.path.join(result, "results.nnp"), context=context)
    t1 = time.perf_counter()
    train = load_dataset(csvs["train"], model.info.input_shapes)
    load_dataset(csvs["val"], model.info.input_shapes)
    t2 = time.perf_counter()
    scores = np.random.RandomState(0).randn(train.size)
    out_dir = os.path.join(work, "write_probe")
    output.write_influence_output(
        os.path.join(out_dir, "influence.csv"),
        output.RunContent(scores, train, list(model.info.input_shapes), {"probe": True}),
    )
    t3 = time.perf_counter()
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"load_model": t1 - t0, "read_csvs": t2 - t1, "write_outputs": t3 - t2}


def all_cache_bytes(model, train, val, args, work: str) -> dict:
    cache_dir = os.path.join(work, "cache_all")
    settings = InfluenceSettings(cache="all", seed=args.seed, context=args.context, trials=1)
    res = influence.compute_influence(model, train, val, settings, cache_dir=cache_dir)
    steps = len(os.listdir(os.path.join(cache_dir, "steps")))
    shutil.rmtree(cache_dir, ignore_errors=True)
    return {"bytes": int(res.cache_bytes), "step_files": steps}


def dir_files(path: str) -> dict:
    out = {}
    for root, _, names in os.walk(path):
        for f in names:
            out[os.path.relpath(os.path.join(root, f), path)] = os.path.getsize(
                os.path.join(root, f)
            )
    return out


# ------------------------------------------------------------------------------------------
# Memory probes (--memory): each in a fresh process
# ------------------------------------------------------------------------------------------

MEMORY_PHASES = {
    "exact": "replay.replay, exact step",
    "fd": "replay.replay, fd step",
    "loop": "baseline replay (batch-1 loop + HVP)",
    "train": "core.sgd_epoch",
}


def vm_hwm_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def memory_probe(args) -> dict:
    """Run in a fresh process (``--memory-phase``): reset the high-water mark, one epoch."""
    model = load_model(model=os.path.join(args.probe_result, "results.nnp"), context=args.context)
    with np.load(os.path.join(args.workdir, "probe.npz")) as z:
        train = {k[2:]: z[k] for k in z.files if k.startswith("x_")}
        u_list = [z[f"u_{i}"] for i in range(sum(k.startswith("u_") for k in z.files))]
    n = len(next(iter(train.values())))
    order = core.epoch_orders(n, 1, args.seed)[0]
    lrs = np.full(core.n_steps(n, args.batch_size), args.replay_lr, np.float32)
    import nnabla.functions  # noqa: F401 - imported by every graph build, not the phase's

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = vm_hwm_kib()
    names = list(model.graph(args.batch_size).params)
    u = dict(zip(names, u_list))
    if args.memory_phase in ("exact", "fd"):
        replay.replay(model, train, order, lrs, args.batch_size, u, step=args.memory_phase)
    elif args.memory_phase == "loop":
        baseline_replay(LoopMethod(model), train, order, lrs, args.batch_size, u_list)
    else:
        core.sgd_epoch(model, train, order, lrs, args.batch_size)
    return {"before_kib": before, "peak_kib": vm_hwm_kib()}


def measure_memory(work: str, result: str, train, u_list, args) -> dict:
    np.savez(
        os.path.join(work, "probe.npz"),
        **{f"x_{k}": v for k, v in train.items()},
        **{f"u_{i}": v for i, v in enumerate(u_list)},
    )
    out = {}
    for phase in MEMORY_PHASES:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--memory-phase",
            phase,
            "--probe-result",
            result,
            "--workdir",
            work,
            "--batch-size",
            str(args.batch_size),
            "--replay-lr",
            repr(args.replay_lr),
            "--seed",
            str(args.seed),
            "--context",
            args.context,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env())
        if proc.returncode != 0:
            raise RuntimeError(f"memory probe {phase} failed:\n{proc.stderr[-2000:]}")
        out[phase] = json.loads(proc.stdout.strip().splitlines()[-1])
        out[phase]["increase_kib"] = out[phase]["peak_kib"] - out[phase]["before_kib"]
    return out


# ------------------------------------------------------------------------------------------
# One network, and the report
# ------------------------------------------------------------------------------------------


def measure_network(arch: str, work: str, csvs: dict, args) -> dict:
    log(f"[{arch}] training with nnabla_cli ...")
    result = train_network(work, arch, csvs, args)
    model = load_model(model=os.path.join(result, "results.nnp"), context=args.context)
    train = load_dataset(csvs["train"], model.info.input_shapes).arrays
    val = load_dataset(csvs["val"], model.info.input_shapes).arrays
    info = {"arch": arch, "n_params": model.n_params}
    log(f"[{arch}] training epoch ...")
    info["epoch_seconds"] = epoch_seconds(model, train, args)
    u = core.validation_gradient(model, val)
    u_list = [u[k] for k in model.graph(args.batch_size).params]
    log(f"[{arch}] checks: exact vs loop, fd vs exact ...")
    info["checks"] = check_steps(model, train, u_list, args)
    log(f"[{arch}] per-step timing: {args.warmup} warm-up + {args.repeats} x {args.steps} ...")
    info["steps"] = measure_steps(model, train, u_list, args)

    runs = [
        ("default", []),
        ("scores_only", ["--no-recommend"]),
        ("trials3", ["--trials", "3"]),
    ]
    info["cli"] = {}
    cache_dir = os.path.join(work, f"cache_{arch}")
    for name, extra in runs:
        out_dir = os.path.join(work, f"out_{arch}_{name}")
        log(f"[{arch}] sgd-influence run {' '.join(extra) or '(defaults)'} ...")
        keep = ["--cache-dir", cache_dir] if name == "default" else []
        info["cli"][name] = run_cli(result, csvs, out_dir, extra + keep, args.context)
        info["cli"][name]["label"] = " ".join(extra) or "(defaults)"
        shutil.rmtree(out_dir, ignore_errors=True)
    first_trial = os.path.join(cache_dir, "trial_00")  # one trial's cache when there are several
    info["final_cache_files"] = dir_files(first_trial if os.path.isdir(first_trial) else cache_dir)
    shutil.rmtree(cache_dir, ignore_errors=True)
    log(f"[{arch}] stages in process, all-parameters cache ...")
    info["stages"] = stages_in_process(result, csvs, work, args.context)
    info["all_cache"] = all_cache_bytes(model, train, val, args, work)
    log(f"[{arch}] baseline: {args.baseline_trials} trials of the published plugin's method ...")
    info["baseline"] = baseline_trials(model, train, val, args, args.baseline_trials)
    if args.memory:
        log(f"[{arch}] memory probes ...")
        info["memory"] = measure_memory(work, result, train, u_list, args)
    return info


def figures_of(info: dict, args) -> dict:
    epoch, st = info["epoch_seconds"], info["steps"]
    files = info["final_cache_files"]
    final_bytes = sum(files.values())
    expected = files["parameters.h5"] + 4 * args.n_train
    fig = {
        "epoch_seconds": epoch,
        "exact_over_train": st["exact"] / st["train"],
        "fd_over_train": st["fd"] / st["train"],
        "loop_over_train": st["loop"] / st["train"],
        "loop_over_exact": st["loop"] / st["exact"],
        "final_cache_bytes": final_bytes,
        "final_cache_expected_bytes": expected,
        "final_cache_overhead_abs": abs(final_bytes - expected),
        "all_cache_bytes": info["all_cache"]["bytes"],
        # six trials, as the published plugin runs by default (scaled if fewer were timed)
        "baseline_seconds": info["baseline"]["seconds"] * 6 / info["baseline"]["trials"],
    }
    fig["baseline_over_epoch"] = fig["baseline_seconds"] / epoch
    for name, run in info["cli"].items():
        fig[f"{name}_seconds"] = run["seconds"]
        fig[f"{name}_over_epoch"] = run["seconds"] / epoch
        fig[f"baseline_over_{name}"] = fig["baseline_seconds"] / run["seconds"]
    return fig


def stage_epochs(facts: dict, epoch: float) -> list:
    """``(label, epochs, floor or None)`` per stage of a run's settings.yaml, in units of one
    training epoch E of the same data (wall time; the floor is what the method must do).
    """
    t = facts.get("timings_seconds", {})
    check = (facts.get("recommendation") or {}).get("check") or {}
    trials = facts.get("used", {}).get("trials", 1)
    procs = t.get("replay_processes", 1)
    n = facts.get("n_train") or 1
    # a run that recommends replays two query vectors (crossfit.py): twice the passes
    vectors = 2 if (facts.get("validation_rows") or {}).get("candidates") else 1
    out = [("reading both CSVs", t.get("reading", 0.0) / epoch, None)]
    out.append(("per-sample losses (0: beside the trial)", t.get("losses", 0.0) / epoch, None))
    out.append(("curvature (the automatic rate)", t.get("curvature", 0.0) / epoch, None))
    out.append((f"training phase, {trials} trial(s)", t.get("training", 0.0) / epoch, trials))
    out.append(
        (
            f"replay, {trials} trial(s) x {vectors} vector(s), {procs} process(es) each",
            t.get("replay", 0.0) / epoch,
            2.0 * trials * vectors / procs,
        )
    )
    if check.get("epochs_run"):
        jobs = check.get("jobs") or 1
        after = check["epochs_run"] - (check.get("base_epoch") == "beside the influence")
        work = after * check.get("rows_per_epoch", n) / n
        out.append(
            (
                f"recommendation: {after} of {check['epochs_run']} check epochs after it",
                t.get("recommendation", 0.0) / epoch,
                work / max(1, min(jobs, after)),
            )
        )
    out.append(
        ("writing the outputs", (t.get("thumbnails", 0) + t.get("write_csvs", 0)) / epoch, None)
    )
    return out


def check(value: float, op: str, bound: float) -> bool:
    return value >= bound if op == ">=" else value <= bound


def report(infos: list, args, setup: dict) -> list:
    log("")
    log("== setup")
    for k, v in setup.items():
        log(f"  {k:<26} {v}")
    results = []
    for info in infos:
        fig = figures_of(info, args)
        info["figures"] = fig
        st, ch = info["steps"], info["checks"]
        T = core.n_steps(args.n_train, args.batch_size)
        log("")
        log(
            f"== {info['arch']}: {info['n_params']:,} parameters, N={args.n_train}, "
            f"B={args.batch_size}, T={T}"
        )
        epoch = fig["epoch_seconds"]
        log(f"  one plain SGD training epoch (core.sgd_epoch)   {epoch:8.2f} s = 1 E")
        log("  end to end (sgd-influence run, subprocess)      seconds   x epoch")
        for name, run in info["cli"].items():
            log(f"    {run['label']:<44} {run['seconds']:8.2f} {fig[name + '_over_epoch']:8.1f}x")
        bt = info["baseline"]["trials"]
        timed = "" if bt == 6 else f", {bt} timed x 6/{bt}"
        log(f"  baseline: published plugin's method, 6 trials (compute only{timed})")
        log(f"    {'':<44} {fig['baseline_seconds']:8.2f} {fig['baseline_over_epoch']:8.1f}x")
        for name, run in info["cli"].items():
            log(f"    baseline / {run['label']:<33} {fig['baseline_over_' + name]:8.1f}x")
        log("  peak resident memory: the run's process / its largest worker process")
        for run in info["cli"].values():
            main_kib, worker_kib = run["peak_rss_kib"]
            log(f"    {run['label']:<44} {main_kib / 1024:8.0f} / {worker_kib / 1024:.0f} MiB")
        log("  the defaults' stages (settings.yaml), in training epochs, next to their floor")
        for label, value, floor in stage_epochs(info["cli"]["default"]["settings_yaml"], epoch):
            bound = f"floor {floor:.2f}" if floor is not None else ""
            log(f"    {label:<44} {value:8.2f} E  {bound}")
        log(f"  seconds per step (median of {st['n']}, interleaved)")
        for key, label in (
            ("exact", "exact replay step (replay_steps.ExactStep)"),
            ("fd", "fd replay step (replay_steps.FiniteDifferenceStep)"),
            ("loop", "baseline loop step (B x batch-1 + HVP)"),
            ("train", "training step (core.sgd_epoch, one batch)"),
            ("exact2", "two vectors, exact (crossfit.ExactSteps)"),
            ("fd2", "two vectors, fd (crossfit.FiniteDifferenceSteps)"),
        ):
            ratio = ""
            if key != "train":
                cpu = st["cpu"][key] / st["cpu"]["train"]
                ratio = f"{st[key] / st['train']:6.2f}x training (CPU time {cpu:.2f}x)"
            log(f"    {label:<44} {st[key] * 1e3:8.2f} ms {ratio}")
        log(
            f"    loop = per-sample gradients {st['loop_per_sample_gradients'] * 1e3:.2f} ms + "
            f"HVP {st['loop_hessian_vector'] * 1e3:.2f} ms"
        )
        log("  stage breakdown")
        sg = info["stages"]
        log(f"    start-up (interpreter + imports)            {setup['startup_seconds']:8.2f} s")
        log(f"    load model                                  {sg['load_model']:8.2f} s")
        log(f"    read both CSVs                              {sg['read_csvs']:8.2f} s")
        log(f"    write outputs (CSV, thumbnails, summary)    {sg['write_outputs']:8.2f} s")
        for name, run in info["cli"].items():
            timings = run["settings_yaml"].get("timings_seconds", {})
            shown = ", ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in timings.items()
            )
            log(f"    {name} settings.yaml timings: {shown}")
        log("  checks")
        log(
            f"    exact vs loop: dots {ch['exact_vs_loop_dots']:.1e}, "
            f"H u {ch['exact_vs_loop_hvp']:.1e}"
        )
        log(
            f"    whole replay fd vs exact: Pearson {ch['fd_vs_exact_pearson']:.4f}, Spearman "
            f"{ch['fd_vs_exact_spearman']:.4f}, max diff {ch['fd_vs_exact_max_rel_diff']:.1e}; "
            f"u growth {ch['u_growth_exact']:.3g} / {ch['u_growth_fd']:.3g}"
        )
        log("  cache")
        log(
            f"    final {fig['final_cache_bytes']:,} B vs model h5 + 4N "
            f"{fig['final_cache_expected_bytes']:,} B; all {fig['all_cache_bytes']:,} B "
            f"({info['all_cache']['step_files']} step files)"
        )
        if "memory" in info:
            log("  peak memory increase (fresh process each, KiB)")
            for k, v in info["memory"].items():
                log(f"    {MEMORY_PHASES[k]:<44} {v['increase_kib']:>10,d}")
        log("  targets")
        for key, op, bound, what in TARGETS:
            ok = check(fig[key], op, bound)
            results.append(
                {
                    "arch": info["arch"],
                    "figure": key,
                    "value": fig[key],
                    "op": op,
                    "bound": bound,
                    "met": ok,
                }
            )
            value = f"{fig[key]:,.0f}" if "cache" in key else f"{fig[key]:.2f}x"
            log(f"    {what:<46} {value:>10}  target {op} {bound:g}  {'ok' if ok else 'MISSED'}")
    return results


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--arch",
        default="cnn,lenet",
        help=f"comma-separated networks of {', '.join(ARCHITECTURES)}",
    )
    p.add_argument("--n-train", type=int, default=3000, help="training samples N")
    p.add_argument("--n-val", type=int, default=500, help="validation samples")
    p.add_argument("--n-test", type=int, default=32, help="test samples (only written)")
    p.add_argument("--batch-size", type=int, default=32, help="mini-batch size B")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate of nnabla_cli train")
    p.add_argument(
        "--replay-lr",
        type=float,
        default=0.01,
        help="learning rate of the replays that compare fd with exact (a stable one)",
    )
    p.add_argument("--train-epochs", type=int, default=2, help="epochs of nnabla_cli train")
    p.add_argument("--steps", type=int, default=32, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=2, help="timing repeats (median over all)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps")
    p.add_argument("--baseline-trials", type=int, default=6, help="trials of the baseline")
    p.add_argument(
        "--tolerance", type=float, default=1e-3, help="largest relative difference exact vs loop"
    )
    p.add_argument("--context", default="cpu", help="'cpu' or 'cudnn[:DEVICE]'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory", action="store_true", help="also measure peak memory per phase")
    p.add_argument(
        "--workdir", help="keep data, models and outputs here (default: a temporary folder)"
    )
    p.add_argument("--out-json", help="also write every figure to this JSON file")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--memory-phase", choices=sorted(MEMORY_PHASES), help=argparse.SUPPRESS)
    p.add_argument("--probe-result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_phase:
        return args
    args.archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    for a in args.archs:
        if a not in ARCHITECTURES:
            p.error(f"--arch {a}: choose from {', '.join(ARCHITECTURES)}")
    for name in ("n_train", "n_val", "n_test", "batch_size", "train_epochs", "steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.baseline_trials < 1:
        p.error("--warmup must be >= 0 and --baseline-trials >= 1")
    if args.batch_size > args.n_train:
        p.error("--batch-size must be at most --n-train")
    if not fashion_mnist.available():
        p.error(f"Fashion-MNIST not found in {fashion_mnist.DEFAULT_DIR}; run 'make data'")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import logging

    import nnabla
    from nnabla.logger import logger

    logger.setLevel(logging.WARNING)  # no INFO line per saved .h5
    if args.memory_phase:
        print(json.dumps(memory_probe(args)))
        return 0
    try:
        make_context(args.context)  # fail before minutes of setup
    except SGDInfluenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    work = args.workdir or tempfile.mkdtemp(prefix="sgdi_bench_")
    os.makedirs(work, exist_ok=True)
    started = time.perf_counter()
    try:
        log(f"building a {args.n_train}-image Fashion-MNIST subset under {work} ...")
        csvs = build_data(work, args)
        setup = {
            "nnabla": nnabla.__version__,
            "python": platform.python_version(),
            "context": args.context,
            "usable cores": parallel.usable_cores(),
            "startup_seconds": round(startup_seconds(), 3),
        }
        infos = [measure_network(a, work, csvs, args) for a in args.archs]
    except SGDInfluenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    setup["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    targets = report(infos, args, setup)
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump({"setup": setup, "networks": infos, "targets": targets}, f, indent=2)
        log(f"\nwrote {args.out_json}")
    worst = max(
        max(i["checks"]["exact_vs_loop_dots"], i["checks"]["exact_vs_loop_hvp"]) for i in infos
    )
    if worst > args.tolerance:
        print(
            f"error: the exact step and the loop differ by {worst:.2e} > {args.tolerance:g}; the "
            "timings do not compare the same computation",
            file=sys.stderr,
        )
        return 1
    if args.strict and not all(t["met"] for t in targets):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
