"""Replay speed, cache size and memory of the fused one-pass replay, on a real console model.

One run builds a Fashion-MNIST subset (PNGs and console CSVs), writes a console-style network
(``--arch``, default the CNN; :mod:`support.netdef`), trains it with ``nnabla_cli
train``, loads the ``results.nnp`` and then measures, on that model and data:

- **fused replay step**: the body of :func:`sgd_influence_plugin.core.replay`'s loop on the
  graphs of ``core.GraphCache(model, fused=True)``: feed the batch and u, one
  ``score.forward`` / ``score.backward`` of the double-backward graph, read the per-sample dot
  products ``<u, grad l_i>`` from ``w.g`` and ``H u`` from ``param.g``, update u.
- **loop step** (the published plugin's method): for each sample of the batch, a first-order
  forward/backward at batch size 1 and the dot product of its gradient with u in numpy; then a
  separate Hessian-vector product of the batch (the same double-backward graph, used for
  ``param.g`` only, with ``w.need_grad`` off), and the same u update. Its graphs are built once
  and reused, so this baseline is as fast as that method can be made here.
- **training step**: one step of plain SGD, :func:`core.sgd_epoch` on one batch, reusing its
  graphs.

Every graph is built once and reused; steps are warmed up first, then the three methods run
interleaved step by step (at the same parameters: the training step's change is undone outside
the timed region) and each reports the median seconds per step. ``core.replay``,
``core.sgd_epoch`` and the loop are also timed over one whole epoch as a cross-check (that time
includes ``core.replay``'s graph construction).

Correctness (so that the comparison is apples to apples): one epoch of the loop method and one
of the fused body give influence vectors that are compared with ``core.replay``'s, and the
per-sample dot products of a few batches are compared directly; the relative difference is
``max|a - b| / max|b|``. A difference above ``--tolerance`` makes the script exit with status 1.

Cache size: :func:`api.compute_influence` with ``cache="final"`` and ``cache="all"`` into
folders under the work folder; ``InfluenceResult.cache_bytes`` against the model size (the
cache's ``parameters.h5``) plus 4N bytes (``order.npy``'s int32 payload), and all / final
against T (Hara et al.'s cache grows with the number of steps, Suzuki et al.'s does not).

Memory: the peak resident set of a process, ``getrusage(RUSAGE_SELF).ru_maxrss`` (KiB), read
as Linux's ``VmHWM`` (the same figure, except that ru_maxrss keeps a parent's peak across
``exec``). Each method runs one epoch, graph construction included, in its own fresh process
(this script with the internal ``--memory-phase``), which loads the model and the arrays and u
saved by the parent, resets the high-water mark to the current resident size
(``/proc/self/clear_refs``), runs the epoch and reads the mark again. In one long process the
freed buffers of one phase, kept by nnabla's and the C library's allocators, would hide the
next phase's. Compare the increases: the totals are the whole process (Python, nnabla, the
data), and memory freed while loading is reused first, so an increase is a lower bound.
``tracemalloc`` would miss nnabla's C++ buffers, so it is not used.

The targets are printed beside the figures; ``--strict`` also makes a missed target exit with
status 1. ``--context cudnn`` loads the model on the GPU (needs nnabla-ext-cuda); training with
``nnabla_cli`` stays on the CPU.

Run: ``.venv/bin/python benchmarks/replay_speed.py [--n-train 2048] [--out-json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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

from sgd_influence_plugin import api, core  # noqa: E402
from sgd_influence_plugin.dataset import load_dataset  # noqa: E402
from sgd_influence_plugin.errors import SGDInfluenceError  # noqa: E402
from sgd_influence_plugin.nnabla_adapter import load_model, make_context  # noqa: E402
from sgd_influence_plugin.settings import InfluenceSettings  # noqa: E402
from support import fashion_mnist  # noqa: E402
from support.netdef import ARCHITECTURES, NetSpec, write_nntxt  # noqa: E402

NNABLA_CLI = os.path.join(os.path.dirname(sys.executable), "nnabla_cli")

#: Targets: (key of the figure, comparison, bound, what it means).
TARGETS = (
    ("loop_over_fused", ">=", 1.8, "loop step / fused step"),
    ("replay_over_training", "<=", 4.5, "replay epoch / training epoch (fused / train step)"),
    ("final_cache_overhead_abs", "<=", 4096, "|final cache - (model h5 + 4N)| bytes"),
)


def log(msg: str) -> None:
    print(msg, flush=True)


def maxrss_kib() -> int:
    """The process's peak resident set size so far, KiB: Linux's ``VmHWM``, which is what
    ``getrusage(RUSAGE_SELF).ru_maxrss`` reports except that ru_maxrss also keeps the peak of
    the process before ``exec`` (the parent's size, in a child); ru_maxrss where there is no
    ``/proc``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def reset_maxrss() -> bool:
    """Reset the kernel's high-water mark to the current resident size (Linux
    ``/proc/self/clear_refs``; ru_maxrss follows it). False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------
# Setup: data, network definition, training
# ------------------------------------------------------------------------------------------


def build_and_train(work: str, args) -> dict:
    """Fashion-MNIST subset + net.nntxt + ``nnabla_cli train``; returns the paths."""
    data_dir = os.path.join(work, "data")
    sizes = fashion_mnist.SplitSizes(train=args.n_train, val=args.n_val, test=args.n_test)
    t0 = time.perf_counter()
    csvs = fashion_mnist.build_splits(data_dir, sizes, seed=args.seed)
    t1 = time.perf_counter()
    result = os.path.join(work, "result")
    os.makedirs(result, exist_ok=True)
    spec = NetSpec(
        arch=args.arch,
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
    nnp = os.path.join(result, "results.nnp")
    with zipfile.ZipFile(nnp) as zf, zf.open("parameter.h5") as src, open(
        os.path.join(result, "parameters.h5"), "wb"
    ) as dst:
        shutil.copyfileobj(src, dst)
    return {
        "csvs": csvs,
        "nnp": nnp,
        "seconds_data": t1 - t0,
        "seconds_train": time.perf_counter() - t1,
    }


# ------------------------------------------------------------------------------------------
# The three kinds of step
# ------------------------------------------------------------------------------------------


def _set_u(variables, u_cur) -> None:
    for var, value in zip(variables, u_cur):
        var.d = value


def _update_u(params, u_cur, lr: float, wd: float) -> None:
    for k, p in enumerate(params):
        hu = p.g
        u_cur[k] = u_cur[k] - lr * (hu + wd * u_cur[k]) if wd else u_cur[k] - lr * hu


def fused_step(sg, arrays, idx, u_cur, lr: float, wd: float, infl) -> np.ndarray:
    """One step of ``core.replay`` (its loop body): returns the dot products <u, grad l_i>."""
    sg.feed(arrays, idx, np.full(len(idx), 1.0 / len(idx), dtype=np.float32))
    _set_u(sg.u, u_cur)
    sg.score.forward(clear_no_need_grad=True)
    sg.zero_grads()
    sg.score.backward(clear_buffer=True)
    dots = np.asarray(sg.w.g, dtype=np.float64).ravel()[: len(idx)]
    infl[idx] += lr / len(idx) * dots
    _update_u(sg.params, u_cur, lr, wd)
    return dots


class LoopMethod:
    """The published plugin's step: per-sample gradients at batch size 1, dot products in
    numpy, and a separate Hessian-vector product of the batch. Graphs are built once."""

    def __init__(self, model):
        self.one = model.graph(1)
        self.params = list(self.one.params.values())
        # core's fused graphs, used for H u only (param.g): w.need_grad off, so no per-sample
        # dot products are computed. The cache pads a one-sample step like core.replay does.
        self._hvp = core.GraphCache(model, fused=True)
        self.seconds_samples = 0.0
        self.seconds_hvp = 0.0

    def hvp_graph(self, size: int):
        sg = self._hvp(size)
        sg.w.need_grad = False
        return sg

    def sample_dots(self, arrays, idx, u_cur) -> np.ndarray:
        """<u, grad l_j> for each j in idx: batch-1 forward/backward, dot product in numpy."""
        dots = np.empty(len(idx))
        for i, j in enumerate(idx):
            for col, var in self.one.inputs.items():
                var.d = arrays[col][j : j + 1]
            self.one.loss.forward(clear_no_need_grad=True)
            for p in self.params:
                p.grad.zero()
            self.one.loss.backward(clear_buffer=True)
            dots[i] = sum(float(np.vdot(p.g, uk)) for p, uk in zip(self.params, u_cur))
        return dots

    def hessian_vector(self, arrays, idx, u_cur):
        """param.g <- H u of the batch-mean loss; returns the graph."""
        sg = self.hvp_graph(len(idx))
        sg.feed(arrays, idx, np.full(len(idx), 1.0 / len(idx), dtype=np.float32))
        _set_u(sg.u, u_cur)
        sg.score.forward(clear_no_need_grad=True)
        sg.zero_grads()
        sg.score.backward(clear_buffer=True)
        return sg

    def step(self, arrays, idx, u_cur, lr: float, wd: float, infl) -> np.ndarray:
        t0 = time.perf_counter()
        dots = self.sample_dots(arrays, idx, u_cur)
        infl[idx] += lr / len(idx) * dots
        t1 = time.perf_counter()
        sg = self.hessian_vector(arrays, idx, u_cur)
        _update_u(sg.params, u_cur, lr, wd)
        self.seconds_samples += t1 - t0
        self.seconds_hvp += time.perf_counter() - t1
        return dots


def loop_epoch(loop: LoopMethod, arrays, order, lrs, batch_size: int, u_list, wd: float):
    """The loop method over one epoch, backwards like core.replay: (infl, seconds)."""
    n = len(next(iter(arrays.values())))
    u_cur = [x.copy() for x in u_list]
    infl = np.zeros(n)
    t0 = time.perf_counter()
    for t in range(core.n_steps(len(order), batch_size) - 1, -1, -1):
        idx = core.step_indices(order, t, batch_size)
        loop.step(arrays, idx, u_cur, float(lrs[t]), wd, infl)
    return infl, time.perf_counter() - t0


def rel_diff(a, b) -> float:
    """max|a - b| / max|b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def stats(seconds) -> dict:
    s = np.asarray(seconds, dtype=np.float64)
    return {
        "median": float(np.median(s)),
        "min": float(np.min(s)),
        "p90": float(np.percentile(s, 90)),
        "n": int(len(s)),
    }


# ------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------


def epoch_setup(n: int, args):
    """(order, lrs, T) of the replayed epoch; the same in the parent and the memory probes."""
    T = core.n_steps(n, args.batch_size)
    return core.epoch_orders(n, 1, args.seed)[0], np.full(T, args.lr, dtype=np.float32), T


def measure_steps(model, train, u_list, args) -> dict:
    n = len(next(iter(train.values())))
    B, lr, wd = args.batch_size, args.lr, 0.0
    order, lrs, T = epoch_setup(n, args)
    names = list(model.graph(B).params.keys())
    u = dict(zip(names, u_list))
    theta = model.get_params()
    out = {}

    # Whole epochs: core.replay (reference), the fused body, the loop; checks and cross-checks.
    log("  core.replay, one epoch ...")
    infl_ref, rstats = core.replay(model, train, order, lrs, B, u)
    fused = core.GraphCache(model, fused=True)
    u_cur = [x.copy() for x in u_list]
    infl_fused = np.zeros(n)
    for t in range(T - 1, -1, -1):
        idx = core.step_indices(order, t, B)
        fused_step(fused(len(idx)), train, idx, u_cur, float(lrs[t]), wd, infl_fused)
    log("  loop method, one epoch ...")
    loop = LoopMethod(model)
    infl_loop, loop_seconds = loop_epoch(loop, train, order, lrs, B, u_list, wd)
    log("  core.sgd_epoch, one epoch ...")
    train_graphs = core.GraphCache(model, fused=False)
    t0 = time.perf_counter()
    core.sgd_epoch(model, train, order, lrs, B, wd, graphs=train_graphs)
    train_seconds = time.perf_counter() - t0
    model.set_params(theta)

    # Direct per-batch comparison (same u, same parameters): dot products and H u.
    dots_diff, hvp_diff = [], []
    for t in range(min(4, T)):
        idx = core.step_indices(order, t, B)
        a = fused_step(fused(len(idx)), train, idx, [x.copy() for x in u_list], lr, wd, np.zeros(n))
        hvp_fused = [np.array(p.g, dtype=np.float64) for p in fused(len(idx)).params]
        b = loop.sample_dots(train, idx, u_list)
        hvp_loop = [
            np.array(p.g, dtype=np.float64) for p in loop.hessian_vector(train, idx, u_list).params
        ]
        dots_diff.append(rel_diff(a, b))
        hvp_diff.append(
            rel_diff(
                np.concatenate([h.ravel() for h in hvp_fused]),
                np.concatenate([h.ravel() for h in hvp_loop]),
            )
        )
    out["correctness"] = {
        "dots_max_rel_diff": max(dots_diff),
        "hvp_max_rel_diff": max(hvp_diff),
        "infl_loop_vs_replay_rel_diff": rel_diff(infl_loop, infl_ref),
        "infl_fused_body_vs_replay_rel_diff": rel_diff(infl_fused, infl_ref),
    }
    out["u_growth"] = float(getattr(rstats, "u_growth", float("nan")))

    # Interleaved per-step timing at fixed parameters, on full batches.
    log(f"  per-step timing: {args.warmup} warm-up + {args.repeats} x {args.steps} steps ...")
    times = {"fused": [], "loop": [], "train": []}
    full = [t for t in range(T) if len(core.step_indices(order, t, B)) == B]
    sequence = [full[i % len(full)] for i in range(args.steps)]
    for r in range(args.repeats + 1):
        warm = r == 0
        if warm:
            loop.seconds_samples = loop.seconds_hvp = 0.0
        u_f, u_l = [x.copy() for x in u_list], [x.copy() for x in u_list]
        for t in sequence[: args.warmup] if warm else sequence:
            idx = core.step_indices(order, t, B)
            s0 = time.perf_counter()
            fused_step(fused(B), train, idx, u_f, lr, wd, np.zeros(n))
            s1 = time.perf_counter()
            loop.step(train, idx, u_l, lr, wd, np.zeros(n))
            s2 = time.perf_counter()
            core.sgd_epoch(model, train, idx, lrs[t : t + 1], B, wd, graphs=train_graphs)
            s3 = time.perf_counter()
            model.set_params(theta)
            if not warm:
                times["fused"].append(s1 - s0)
                times["loop"].append(s2 - s1)
                times["train"].append(s3 - s2)
        if warm:
            loop.seconds_samples = loop.seconds_hvp = 0.0
    n_timed = len(times["loop"])
    out["step_seconds"] = {k: stats(v) for k, v in times.items()}
    out["loop_breakdown_seconds"] = {
        "per_sample_gradients": loop.seconds_samples / n_timed,
        "hessian_vector_product": loop.seconds_hvp / n_timed,
    }
    out["epoch_seconds"] = {
        "core_replay": rstats.seconds,
        "loop": loop_seconds,
        "core_sgd_epoch": train_seconds,
        "T": T,
    }
    return out


#: Memory probes: phase name -> what it runs (one epoch each, graphs built inside).
MEMORY_PHASES = {
    "fused": "core.replay",
    "loop": "loop method (batch-1 gradients + HVP)",
    "train": "core.sgd_epoch",
}


def memory_probe(work: str, args) -> dict:
    """Run in a fresh process (``--memory-phase``): load the model, the arrays and u that the
    parent saved, read ru_maxrss, run one epoch of the phase, read it again."""
    model = load_model(model=os.path.join(work, "result", "results.nnp"), context=args.context)
    with np.load(os.path.join(work, "train.npz")) as z:
        train = {k: z[k] for k in z.files}
    with np.load(os.path.join(work, "u.npz")) as z:
        u_list = [z[f"arr_{i}"] for i in range(len(z.files))]
    n = len(next(iter(train.values())))
    order, lrs, _ = epoch_setup(n, args)
    import nnabla.functions  # noqa: F401 - modules every graph build imports, not the phase's
    import nnabla.utils.load  # noqa: F401

    reset = reset_maxrss()  # else "before" includes the transient peaks of loading
    before = maxrss_kib()
    if args.memory_phase == "fused":
        names = list(model.graph(args.batch_size).params.keys())
        core.replay(model, train, order, lrs, args.batch_size, dict(zip(names, u_list)))
    elif args.memory_phase == "loop":
        loop_epoch(LoopMethod(model), train, order, lrs, args.batch_size, u_list, 0.0)
    else:
        core.sgd_epoch(model, train, order, lrs, args.batch_size, 0.0)
    return {"before_kib": before, "peak_kib": maxrss_kib(), "reset": reset}


def measure_memory(work: str, train, u_list, args) -> dict:
    """Each phase in its own fresh process, so that one phase's freed buffers (kept by nnabla's
    and the C library's allocators) do not hide the next one's."""
    np.savez(os.path.join(work, "train.npz"), **train)
    np.savez(os.path.join(work, "u.npz"), *u_list)
    out = {}
    for phase in MEMORY_PHASES:
        log(f"  memory probe: {MEMORY_PHASES[phase]} in a fresh process ...")
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--memory-phase",
            phase,
            "--workdir",
            work,
            "--batch-size",
            str(args.batch_size),
            "--lr",
            repr(args.lr),
            "--seed",
            str(args.seed),
            "--context",
            args.context,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memory probe {phase} failed:\n{proc.stderr[-2000:]}")
        out[phase] = json.loads(proc.stdout.strip().splitlines()[-1])
        out[phase]["increase_kib"] = out[phase]["peak_kib"] - out[phase]["before_kib"]
    return out


def measure_cache(model, train, val, args, work: str) -> dict:
    out = {}
    for mode in ("final", "all"):
        log(f"  api.compute_influence(cache={mode!r}) ...")
        cache_dir = os.path.join(work, f"cache_{mode}")
        settings = InfluenceSettings(
            cache=mode, batch_size=args.batch_size, lr=args.lr, seed=args.seed, context=args.context
        )
        res = api.compute_influence(model, train, val, settings, cache_dir=cache_dir)
        files = {}
        for root, _, names in os.walk(cache_dir):
            for f in names:
                rel = os.path.relpath(os.path.join(root, f), cache_dir)
                files[rel] = os.path.getsize(os.path.join(root, f))
        out[mode] = {
            "cache_bytes": int(res.cache_bytes),
            "timings": dict(res.timings),
            "files": files,
        }
    return out


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------


def check(value: float, op: str, bound: float) -> bool:
    return value >= bound if op == ">=" else value <= bound


def report(info: dict) -> dict:
    st, ca, n, T = info["steps"], info["cache"], info["N"], info["T"]
    med = {k: v["median"] for k, v in st["step_seconds"].items()}
    final = ca["final"]
    h5 = final["files"]["parameters.h5"]
    expected = h5 + 4 * n
    steps_files = [v for k, v in ca["all"]["files"].items() if k.startswith("steps")]
    figures = {
        "loop_over_fused": med["loop"] / med["fused"],
        "replay_over_training": med["fused"] / med["train"],
        "replay_over_training_epoch": st["epoch_seconds"]["core_replay"]
        / st["epoch_seconds"]["core_sgd_epoch"],
        "final_cache_bytes": final["cache_bytes"],
        "model_h5_bytes": h5,
        "final_cache_expected_bytes": expected,
        "final_cache_overhead": final["cache_bytes"] - expected,
        "final_cache_overhead_abs": abs(final["cache_bytes"] - expected),
        "all_cache_bytes": ca["all"]["cache_bytes"],
        "all_over_final": ca["all"]["cache_bytes"] / final["cache_bytes"],
        # all = final + T step files of about the model's size
        "all_over_final_expected": 1 + T * h5 / final["cache_bytes"],
        "all_step_files": len(steps_files),
    }

    log("")
    log("== setup")
    for key in (
        "nnabla",
        "python",
        "context",
        "arch",
        "N",
        "N_val",
        "B",
        "T",
        "n_params",
        "train_epochs_nnabla_cli",
        "seconds_build_data",
        "seconds_nnabla_cli_train",
    ):
        value = info[key]
        log(f"  {key:<26} {value:.1f}" if isinstance(value, float) else f"  {key:<26} {value}")
    log("")
    log(f"== seconds per step (median over {st['step_seconds']['fused']['n']} steps)")
    log(f"  {'method':<44} {'median':>10} {'min':>10} {'p90':>10}")
    labels = {
        "fused": "fused replay step (core.replay's body)",
        "loop": "loop step (B x batch-1 grad + dot, + HVP)",
        "train": "training step (core.sgd_epoch, one batch)",
    }
    for k, label in labels.items():
        s = st["step_seconds"][k]
        log(
            f"  {label:<44} {s['median'] * 1e3:>8.2f}ms {s['min'] * 1e3:>8.2f}ms "
            f"{s['p90'] * 1e3:>8.2f}ms"
        )
    bd = st["loop_breakdown_seconds"]
    log(
        f"  loop = per-sample gradients {bd['per_sample_gradients'] * 1e3:.2f}ms + HVP "
        f"{bd['hessian_vector_product'] * 1e3:.2f}ms (means)"
    )
    ep = st["epoch_seconds"]
    log(
        f"  whole epoch (T={T}) / T: core.replay {ep['core_replay'] / T * 1e3:.2f}ms (incl. "
        f"graph build), loop {ep['loop'] / T * 1e3:.2f}ms, core.sgd_epoch "
        f"{ep['core_sgd_epoch'] / T * 1e3:.2f}ms"
    )
    log("")
    log("== correctness (relative difference max|a-b|/max|b|)")
    co = st["correctness"]
    log(f"  fused vs loop per-sample dots, 4 batches  {co['dots_max_rel_diff']:.2e}")
    log(f"  loop epoch influence vs core.replay       {co['infl_loop_vs_replay_rel_diff']:.2e}")
    log(
        f"  fused body epoch vs core.replay           "
        f"{co['infl_fused_body_vs_replay_rel_diff']:.2e}"
    )
    log(f"  H u, fused vs loop's HVP, 4 batches       {co['hvp_max_rel_diff']:.2e}")
    log(f"  (||u|| after / before the replay: {st['u_growth']:.3g})")
    log("")
    log("== cache (api.compute_influence, one trial)")
    for name, size in sorted(final["files"].items()):
        log(f"  final/{name:<20} {size:>12,d} B")
    log(f"  final total               {final['cache_bytes']:>12,d} B")
    log(f"  model h5 + 4N             {expected:>12,d} B  ({h5:,d} + 4 x {n})")
    log(
        f"  all total                 {ca['all']['cache_bytes']:>12,d} B  "
        f"({len(steps_files)} step files)"
    )
    for mode in ("final", "all"):
        tm = ca[mode]["timings"]
        log(
            f"  {mode:<5} timings: training {tm['training']:.2f}s, inference "
            f"{tm['inference']:.2f}s, replay {tm['seconds_per_replay_step'] * 1e3:.2f}ms/step"
        )
    log("")
    log("== peak memory (ru_maxrss as VmHWM, KiB; each phase one epoch in a fresh process)")
    if not all(v["reset"] for v in info["memory"].values()):
        log("  (the high-water mark could not be reset: 'before' includes loading's peak)")
    log(f"  {'phase':<40} {'before':>10} {'peak':>10} {'increase':>10}")
    for k, v in info["memory"].items():
        log(
            f"  {MEMORY_PHASES[k]:<40} {v['before_kib']:>10,d} {v['peak_kib']:>10,d} "
            f"{v['increase_kib']:>10,d}"
        )
    log("")
    log("== ratios")
    results = []
    for key, op, bound, what in TARGETS:
        ok = check(figures[key], op, bound)
        results.append({"figure": key, "value": figures[key], "op": op, "bound": bound, "met": ok})
        value = f"{figures[key]:,.0f}" if "cache" in key else f"{figures[key]:.2f}x"
        log(f"  {what:<52} {value:>10}  target {op} {bound:g}  {'ok' if ok else 'MISSED'}")
    log(f"  {'final cache - (model h5 + 4N), signed':<52} {figures['final_cache_overhead']:>10,d}")
    log(
        f"  {'replay epoch / sgd epoch (whole epochs, cross-check)':<52} "
        f"{figures['replay_over_training_epoch']:>9.2f}x"
    )
    log(
        f"  {'all cache / final cache':<52} {figures['all_over_final']:>9.1f}x  vs T = {T} "
        f"(Table 1: ratio ~ T; 1 + T x h5 / final = {figures['all_over_final_expected']:.1f})"
    )
    return {"figures": figures, "targets": results}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--arch", default="cnn", choices=ARCHITECTURES, help="network (support/netdef.py)"
    )
    p.add_argument("--n-train", type=int, default=2048, help="training samples N")
    p.add_argument("--n-val", type=int, default=512, help="validation samples")
    p.add_argument("--n-test", type=int, default=32, help="test samples (only written)")
    p.add_argument("--batch-size", type=int, default=32, help="mini-batch size B")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate (training and replay)")
    p.add_argument("--train-epochs", type=int, default=1, help="epochs of nnabla_cli train")
    p.add_argument("--steps", type=int, default=64, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats (median over all)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps")
    p.add_argument(
        "--tolerance", type=float, default=1e-3, help="largest relative difference fused vs loop"
    )
    p.add_argument("--context", default="cpu", help="'cpu' or 'cudnn[:DEVICE]'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workdir",
        help="keep data, model and caches here (default: a temporary folder, removed at the end)",
    )
    p.add_argument("--out-json", help="also write every figure to this JSON file")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--memory-phase", choices=sorted(MEMORY_PHASES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_phase:  # internal: one memory probe in a fresh process
        return args
    for name in ("n_train", "n_val", "n_test", "batch_size", "train_epochs", "steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
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
        print(json.dumps(memory_probe(args.workdir, args)))
        return 0

    try:
        make_context(args.context)  # fail before minutes of setup
    except SGDInfluenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    work = args.workdir or tempfile.mkdtemp(prefix="sgdi_bench_")
    os.makedirs(work, exist_ok=True)
    try:
        log(f"building Fashion-MNIST subset and training with nnabla_cli under {work} ...")
        made = build_and_train(work, args)
        model = load_model(model=made["nnp"], context=args.context)
        train = load_dataset(made["csvs"]["train"], model.info.input_shapes).arrays
        val = load_dataset(made["csvs"]["val"], model.info.input_shapes).arrays
        u = core.validation_gradient(model, val, 256)
        u_list = [u[k] for k in model.graph(args.batch_size).params]
        log("measuring steps ...")
        steps = measure_steps(model, train, u_list, args)
        log("measuring memory ...")
        memory = measure_memory(work, train, u_list, args)
        log("measuring caches ...")
        cache = measure_cache(model, train, val, args, work)
    except SGDInfluenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    info = {
        "nnabla": nnabla.__version__,
        "python": platform.python_version(),
        "context": args.context,
        "arch": args.arch,
        "N": args.n_train,
        "N_val": args.n_val,
        "B": args.batch_size,
        "T": core.n_steps(args.n_train, args.batch_size),
        "n_params": model.n_params,
        "train_epochs_nnabla_cli": args.train_epochs,
        "seconds_build_data": made["seconds_data"],
        "seconds_nnabla_cli_train": made["seconds_train"],
        "steps": steps,
        "memory": memory,
        "cache": cache,
    }
    summary = report(info)
    info.update(summary)
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(info, f, indent=2)
        log(f"\nwrote {args.out_json}")
    worst = max(v for v in steps["correctness"].values())
    if worst > args.tolerance:
        print(
            f"error: fused and loop results differ by {worst:.2e} > {args.tolerance:g}; the "
            "timings do not compare the same computation",
            file=sys.stderr,
        )
        return 1
    if args.strict and not all(t["met"] for t in summary["targets"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
