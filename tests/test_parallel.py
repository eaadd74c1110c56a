"""The local executor's worker processes, started both ways (``fork``, Linux's fast path, and
``spawn``, the only way on Windows): the same results as a loop in one process on a real
nnabla model, errors and interruptions that end every worker, nothing left behind; and the
fd replay's forked co-worker."""

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

from sgd_influence_plugin import child_processes, core, coworker, interrupts, parallel, replay
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.errors import SettingsError
from sgd_influence_plugin.executor import LocalExecutor
from sgd_influence_plugin.nnabla_adapter import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_fork = pytest.mark.skipif(not parallel.fork_available(), reason="no fork on this platform")
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads processes from /proc (Linux)"
)
#: Both ways to start workers: every behaviour below must hold for each.
STARTS = [pytest.param("fork", marks=needs_fork), "spawn"]


def _children(pid=None):
    """Pids of the live (not zombie) child processes of ``pid`` (default: this process), but
    for multiprocessing's resource tracker: the first spawn on POSIX starts it, and it lives
    as long as this process (it ends when its pipe from here closes)."""
    from multiprocessing import resource_tracker

    pid = pid or os.getpid()
    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, ppid = fields[0], int(fields[1])
        if ppid == pid and state != "Z" and int(entry) != tracker:
            out.append(int(entry))
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# Units: module-level functions, as every executor requires.


def _pid(item, progress):
    return os.getpid()


def _slow_in_reverse(item, progress, factor):
    time.sleep(0.05 * (4 - item))
    progress("work", 1, 2)
    progress("work", 2, 2)
    return item * factor, os.getpid()


def _fails_on_two(item, progress, folder):
    if item == 2:
        raise SettingsError(f"item {item}: bad value; pass a good one")
    if item == 0:  # would outlive the test unless ended
        open(os.path.join(folder, str(os.getpid())), "w").close()
        time.sleep(60)
    return item


class _Unpicklable(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")

    def __reduce__(self):
        raise TypeError("no pickling")


def _raises_unpicklable(item, progress):
    raise _Unpicklable("this", "that")


def _dies_on_one(item, progress):
    if item == 1:
        os._exit(3)
    time.sleep(30)


def _changes_shared(item, progress, big, small):
    """Sees the shared arrays, then changes them in place (as a trial changes the model's
    parameters until it restores them)."""
    seen = (float(big.sum()), float(small.sum()), type(big).__name__)
    big += 1
    small += 1
    time.sleep(0.2)
    return seen


def test_default_jobs_is_the_usable_cores_at_most_the_items():
    cores = len(os.sched_getaffinity(0))
    assert parallel.usable_cores() == cores
    assert parallel.default_jobs(1) == 1
    assert parallel.default_jobs(1000) == cores
    assert parallel.default_jobs(0) == 1
    # One home for "one worker on a GPU": any context but a CPU one gets one worker.
    assert parallel.workers_for("cudnn", 4, 8) == parallel.workers_for("cudnn:1") == 1
    assert parallel.workers_for("cpu", 3, 8) == 3
    assert parallel.workers_for("cpu", None, 1) == 1 and parallel.workers_for("cpu") == cores
    with pytest.raises(ValueError, match="at least 1"):
        parallel.run_parallel(_pid, [1, 2], jobs=0)
    with pytest.raises(ValueError, match="at least 1"):
        LocalExecutor(0)


def test_a_unit_must_be_a_module_level_function_wherever_it_runs():
    """A lambda or a nested function would run forked on Linux and fail on Windows: refused
    everywhere, even with one job."""

    def nested(item, progress):
        return item

    for unit in (lambda x, p: x, nested, LocalExecutor(1).map):
        with pytest.raises(TypeError, match="not a module-level function"):
            parallel.run_parallel(unit, [1, 2], jobs=1)
    assert parallel.run_parallel(_pid, [1, 2], jobs=1) == [os.getpid()] * 2


def test_the_start_method_defaults_to_fork_on_linux_and_follows_the_variable(monkeypatch):
    monkeypatch.delenv(parallel.START_VARIABLE, raising=False)
    assert parallel.default_start() == ("fork" if parallel.fork_available() else "spawn")
    monkeypatch.setenv(parallel.START_VARIABLE, "spawn")
    assert parallel.default_start() == "spawn"
    monkeypatch.setenv(parallel.START_VARIABLE, "nonsense")
    assert parallel.default_start() == ("fork" if parallel.fork_available() else "spawn")
    monkeypatch.setattr(parallel, "fork_available", lambda: False)  # Windows
    monkeypatch.setenv(parallel.START_VARIABLE, "fork")
    assert parallel.default_start() == "spawn"


@pytest.mark.parametrize("start", STARTS)
def test_results_in_item_order_with_callbacks_in_the_parent(start):
    """Items finish in reverse order; results still come in item order."""
    me = os.getpid()
    seen, steps = [], []
    out = LocalExecutor(4, start).map(
        _slow_in_reverse,
        [0, 1, 2, 3],
        shared=(10,),
        on_result=lambda i, r: seen.append((i, r[0], os.getpid())),
        on_progress=lambda i, stage, done, total: steps.append((i, stage, done, total)),
    )
    assert [r[0] for r in out] == [0, 10, 20, 30]
    workers = {r[1] for r in out}
    assert me not in workers and len(workers) == 4
    assert sorted(seen) == [(0, 0, me), (1, 10, me), (2, 20, me), (3, 30, me)]
    assert sorted(steps) == sorted((i, "work", d, 2) for i in range(4) for d in (1, 2))
    assert _children() == []


@pytest.mark.parametrize("start", STARTS)
def test_what_a_unit_changes_in_the_shared_inputs_stays_in_its_worker(start):
    """A spawned worker maps the large arrays copy-on-write (as a fork shares them): a unit
    may change its copy, which reaches neither the parent nor the file."""
    big = np.zeros(100_000, np.float32)  # 400 kB: goes as a mapped .npy under spawn
    small = np.zeros(3, np.float32)  # pickled
    out = LocalExecutor(2, start).map(_changes_shared, range(2), shared=(big, small))
    assert [o[:2] for o in out] == [(0.0, 0.0), (0.0, 0.0)]  # one unit per worker
    assert {o[2] for o in out} == {"ndarray"}  # a plain array, not np.memmap
    assert not big.any() and not small.any()
    assert not [f for f in os.listdir(tempfile.gettempdir()) if "sgd_influence_shared_" in f]


def _trial_loop(seed, progress, model, train, val, theta0):
    """An SGD epoch and its exact replay from ``theta0`` (restored after)."""
    n = len(train["y"])  # 3 steps of 32
    lrs = np.full(core.n_steps(n, 32), 0.02, np.float32)
    model.set_params(theta0)
    try:
        order = core.epoch_orders(n, 1, seed)[0]
        core.sgd_epoch(model, train, order, lrs, 32, progress=progress)
        u = core.validation_gradient(model, val)
        infl, stats = replay.replay(model, train, order, lrs, 32, u, progress=progress)
        return infl, stats.u_growth
    finally:
        model.set_params(theta0)


@pytest.fixture(scope="module")
def cnn(results, data28):
    model = load_model(model=os.path.join(results("cnn_bn"), "results.nnp"))
    train = {
        k: v[:96] for k, v in load_dataset(data28["train"], model.info.input_shapes).arrays.items()
    }
    val = load_dataset(data28["val"], model.info.input_shapes).arrays
    return model, train, val


@pytest.mark.parametrize("start", STARTS)
def test_workers_compute_the_same_replay_as_a_serial_loop(cnn, start):
    """SGD epoch + exact replay in workers (after the parent built and ran the graphs; under
    spawn on a model the adapter rebuilt there) equals the same loop in this process, bit for
    bit; the parent's model is untouched."""
    model, train, val = cnn
    theta0 = model.get_params()
    shared = (model, train, val, theta0)
    serial = LocalExecutor(1).map(_trial_loop, [0, 1], shared)  # builds the graphs here first
    stages = set()
    there = LocalExecutor(2, start).map(
        _trial_loop, [0, 1], shared, on_progress=lambda i, s, d, t: stages.add((s, t))
    )
    assert stages == {("train", 3), ("replay", 3)}
    for (a, ga), (b, gb) in zip(serial, there):
        assert np.all(np.isfinite(b)) and np.std(b) > 0
        np.testing.assert_array_equal(a, b)
        assert ga == gb
    assert not np.array_equal(serial[0][0], serial[1][0])  # different orders, different scores
    for k, v in model.get_params().items():  # the workers' changes stayed in the workers
        np.testing.assert_array_equal(v, theta0[k])
    assert _children() == []


@pytest.mark.parametrize("start", STARTS)
def test_every_unit_of_the_package_gives_the_serial_results(results, data28, start, tmp_path):
    """The trials, the recommendation's check epochs, the check's re-runs and evaluate's
    retrainings, each written once as a unit: the same numbers in one process and in two
    workers started either way."""
    from sgd_influence_plugin import recommend as rc
    from sgd_influence_plugin.evaluate import EvaluateRequest, evaluate
    from sgd_influence_plugin.fidelity import check_fidelity
    from sgd_influence_plugin.influence import compute_influence
    from sgd_influence_plugin.settings import InfluenceSettings

    nnp = os.path.join(results("mlp"), "results.nnp")
    model = load_model(model=nnp)
    shapes = model.info.input_shapes
    train = {k: v[:96] for k, v in load_dataset(data28["train"], shapes).arrays.items()}
    val = load_dataset(data28["val"], shapes).arrays
    label = next(iter(model.info.label_classes))
    rows = np.arange(0, 96, 7, dtype=np.int64)
    settings = InfluenceSettings(trials=3, lr=0.05, replay_step="exact")

    def all_units(executor, name):
        cache = tmp_path / name
        trials = compute_influence(model, train, val, settings, str(cache), executor=executor)
        cands = [
            rc.Candidate(0.1, "remove", rows, np.zeros(len(rows), np.int64)),
            rc.Candidate(0.2, "relabel", rows[:5], np.ones(5, np.int64)),
        ]
        rc.check_candidates(
            model, train, val, label, cands, 0.05, 32, seed=3, predict=model.predict,
            executor=executor,
        )  # fmt: skip
        check = check_fidelity(model, train, val, settings, samples=6, executor=executor)
        req = EvaluateRequest(
            {"model": nnp}, data28["train"], data28["val"], data28["val"],
            str(tmp_path / f"eval_{name}"), [0, 0.1], [4], "last", InfluenceSettings(trials=1),
        )  # fmt: skip
        rows_ = evaluate(req, executor=executor)
        return trials, cands, check, rows_

    here = all_units(LocalExecutor(1), "here")
    there = all_units(LocalExecutor(2, start), "there")
    np.testing.assert_array_equal(here[0].trial_scores, there[0].trial_scores)
    assert here[0].timings["jobs"] == 1 and there[0].timings["jobs"] == 2
    for m in range(3):  # the cache, written by the workers where it goes
        a, b = (tmp_path / w / f"trial_{m:02d}" for w in ("here", "there"))
        np.testing.assert_array_equal(np.load(a / "order.npy"), np.load(b / "order.npy"))
    for a, b in zip(here[1], there[1]):
        np.testing.assert_array_equal(a.heldout_loss, b.heldout_loss)
        assert a.accuracy_change == b.accuracy_change and b.loss_change != 0
    np.testing.assert_array_equal(here[2].actual, there[2].actual)
    for a, b in zip(here[3], there[3]):  # evaluate's rows, but for the time taken
        assert {**a, "seconds": 0} == {**b, "seconds": 0}
    assert len(here[3]) == 3
    assert _children() == []


@pytest.mark.parametrize("start", STARTS)
def test_an_error_in_a_worker_keeps_its_type_and_message_and_ends_the_others(tmp_path, start):
    with pytest.raises(SettingsError, match=r"^item 2: bad value; pass a good one$") as info:
        LocalExecutor(2, start).map(_fails_on_two, [0, 1, 2, 3], shared=(str(tmp_path),))
    assert isinstance(info.value.__cause__, child_processes.RemoteTraceback)
    assert "in _fails_on_two" in str(info.value.__cause__)  # the worker's traceback
    assert _children() == []
    assert not [int(p) for p in os.listdir(tmp_path) if _alive(int(p))]


@pytest.mark.parametrize("start", STARTS)
def test_an_exception_that_does_not_pickle_arrives_as_its_name_and_message(start):
    with pytest.raises(RuntimeError, match="_Unpicklable: this and that"):
        LocalExecutor(2, start).map(_raises_unpicklable, [0, 1])
    assert _children() == []


@pytest.mark.parametrize("start", STARTS)
def test_a_worker_that_dies_is_reported_and_the_rest_are_ended(start):
    with pytest.raises(child_processes.WorkerError, match="exit code 3"):
        LocalExecutor(2, start).map(_dies_on_one, [0, 1])
    assert _children() == []


_QUIET = textwrap.dedent(
    """
    import logging, sys
    sys.path.insert(0, {root!r})
    from sgd_influence_plugin.executor import LocalExecutor
    from sgd_influence_plugin.nnabla_adapter import load_model

    def n_params(item, progress, model):
        return model.n_params

    if __name__ == "__main__":  # not run again in the workers, which import this file
        logging.basicConfig(level=logging.WARNING)  # as the command does before nnabla loads
        model = load_model(model={nnp!r})
        print(LocalExecutor(2, "spawn").map(n_params, [0, 1], (model,)))
    """
)


def test_spawned_workers_have_nnabla_set_up_by_the_adapter_and_say_nothing(results, tmp_path):
    """A spawned worker imports nnabla afresh; the adapter (prepare_process) sets it up before
    the model is rebuilt there, so nnabla's import-time INFO line stays quiet: the command's
    output is its own."""
    script = tmp_path / "quiet.py"
    nnp = os.path.join(results("mlp"), "results.nnp")
    script.write_text(_QUIET.format(root=ROOT, nnp=nnp))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    n = load_model(model=nnp).n_params
    assert proc.stdout == f"[{n}, {n}]\n"
    assert proc.stderr == ""


_INTERRUPTED = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {root!r})
    from sgd_influence_plugin import interrupts, parallel

    def fn(item, progress):
        open(os.path.join({folder!r}, str(os.getpid())), "w").close()
        time.sleep(60)

    if __name__ == "__main__":
        try:
            with interrupts.stop_requests():  # as the CLI and the plugin run
                parallel.run_parallel(fn, [0, 1, 2], jobs=2, start={start!r})
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
    """
)


_INTERRUPTED_HELPER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {root!r})
    from sgd_influence_plugin import coworker, interrupts

    def fn(x):
        open(os.path.join({folder!r}, str(os.getpid())), "w").close()
        time.sleep(60)

    try:
        with interrupts.stop_requests():
            with coworker.helper(fn) as h:
                h.submit(1)
                h.result()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    """
)


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
@pytest.mark.parametrize(
    "kind",
    [pytest.param("fork", marks=needs_fork), "spawn", pytest.param("helper", marks=needs_fork)],
)
def test_sigterm_or_ctrl_c_ends_every_worker(tmp_path, how, kind):
    """SIGTERM to the parent (as the CLI maps it) or SIGINT to the whole process group (what
    Ctrl-C in a terminal sends): the parent exits through KeyboardInterrupt, no worker (forked
    or spawned, nor the replay's co-worker) lives."""
    script = tmp_path / "interrupted.py"
    folder = tmp_path / "pids"
    folder.mkdir()
    template = _INTERRUPTED_HELPER if kind == "helper" else _INTERRUPTED
    script.write_text(template.format(root=ROOT, folder=str(folder), start=kind))
    expected = 1 if kind == "helper" else 2
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 60
        while len(os.listdir(folder)) < expected and time.time() < deadline:
            time.sleep(0.05)
        workers = [int(p) for p in os.listdir(folder)]
        assert len(workers) == expected and all(_alive(p) for p in workers)
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "interrupted" in out
    assert "Traceback" not in err, err
    time.sleep(0.2)
    assert not [p for p in workers if _alive(p)]


@needs_fork
def test_a_replay_with_a_helper_process_equals_the_replay_alone(cnn):
    """The fd step's minus pass in a forked co-worker (replay.replay's ``helper``) gives the same
    scores and u, bit for bit, as both passes here; the co-worker is gone afterwards. Without
    the fd step, or with the parameters of every step, none is started."""
    model, train, val = cnn
    u = core.validation_gradient(model, val)
    order = core.epoch_orders(96, 1, 3)[0]
    lrs = np.full(core.n_steps(96, 32), 0.02, np.float32)
    alone, s1 = replay.replay(model, train, order, lrs, 32, u, step="fd")
    started = []

    def counting_helper(fn):
        started.append(fn)
        return coworker.helper(fn)

    paired, s2 = replay.replay(model, train, order, lrs, 32, u, step="fd", helper=counting_helper)
    assert len(started) == 1 and np.std(alone) > 0
    np.testing.assert_array_equal(alone, paired)
    assert s1.u_growth == s2.u_growth
    assert _children() == []
    replay.replay(model, train, order, lrs, 32, u, step="exact", helper=counting_helper)
    theta = model.get_params()
    replay.replay(
        model, train, order, lrs, 32, u, step="fd", helper=counting_helper,
        params_at=lambda t: theta,
    )  # fmt: skip
    assert len(started) == 1


def test_the_replay_co_worker_is_asked_for_only_where_it_can_fork(monkeypatch):
    """Two cores per trial and the fd step: the co-worker; on Windows (no fork) none, and the
    trial computes both passes itself."""
    from sgd_influence_plugin.phases import replay_helper
    from sgd_influence_plugin.settings import InfluenceSettings

    fd = InfluenceSettings(replay_step="fd")
    assert replay_helper(fd, 1) is None and replay_helper(InfluenceSettings(), 4) is not None
    assert replay_helper(InfluenceSettings(replay_step="exact"), 4) is None
    assert LocalExecutor(4).cores_per_unit(2) == 2 and LocalExecutor(4).cores_per_unit(8) == 1
    monkeypatch.setattr(parallel, "fork_available", lambda: False)
    assert replay_helper(fd, 4) is None
    with coworker.helper(print) as h:
        assert h is None


@needs_fork
def test_a_helper_error_or_death_reaches_the_parent_and_no_process_is_left():
    def fn(x):
        if x == "bad":
            raise SettingsError("bad: give a good one")
        if x == "die":
            os._exit(4)
        return x * 2

    with coworker.helper(fn) as h:
        h.submit(21)
        assert h.result() == 42
        h.submit("bad")
        with pytest.raises(SettingsError, match="^bad: give a good one$"):
            h.result()
    assert _children() == []
    with pytest.raises(child_processes.WorkerError, match="exit code 4"):
        with coworker.helper(fn) as h:
            h.submit("die")
            h.result()
    assert _children() == []
    with pytest.raises(ValueError, match="the caller's"):  # an error here ends the helper too
        with coworker.helper(fn) as h:
            raise ValueError("the caller's")
    assert _children() == []


CLI = os.path.join(os.path.dirname(sys.executable), "sgd-influence")


def test_the_command_with_spawned_workers_writes_what_forked_ones_write(results, data28, tmp_path):
    """``sgd-influence run --jobs 2`` end to end with its workers spawned (as on Windows: each
    imports the console script and the package afresh) and forked: the same files, and
    nothing on stderr but the command's own lines."""
    outs = {}
    for start in ("spawn", "fork") if parallel.fork_available() else ("spawn",):
        out = tmp_path / start / "influence.csv"
        proc = subprocess.run(
            [
                CLI, "run", "--model", os.path.join(results("mlp"), "results.nnp"),
                "--train", data28["train"], "--val", data28["val"], "--output", str(out),
                "--trials", "3", "--jobs", "2", "--no-recommend", "--quiet",
            ],
            capture_output=True, text=True, timeout=300,
            env=dict(os.environ, **{parallel.START_VARIABLE: start}),
        )  # fmt: skip
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
        outs[start] = [
            (out.parent / name).read_text() for name in ("influence.csv", "influence_trials.csv")
        ]
    assert len(set(map(tuple, outs.values()))) == 1


# ----------------------------------------------------------------------------------------
# Ctrl-C around started workers (issue 18, case 13)
# ----------------------------------------------------------------------------------------

#: What the fork hooks below record while armed: ("child", blocked signals) per child,
#: ("fork",) per fork in the parent. os.register_at_fork hooks cannot be removed, so they are
#: registered once and record only while a test arms them.
_FORKS = {"armed": None}


def _after_in_child():
    if _FORKS["armed"] is not None:
        import signal

        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        with open(os.path.join(_FORKS["armed"], f"child_{os.getpid()}"), "w") as f:
            f.write(" ".join(str(int(s)) for s in sorted(blocked)))


def _after_in_parent():
    if _FORKS["armed"] is not None:
        open(os.path.join(_FORKS["armed"], f"fork_{time.monotonic_ns()}"), "w").close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_in_child, after_in_parent=_after_in_parent)


@pytest.fixture
def forks(tmp_path):
    folder = tmp_path / "forks"
    folder.mkdir()
    _FORKS["armed"] = str(folder)
    yield folder
    _FORKS["armed"] = None


needs_fork_hooks = pytest.mark.skipif(
    not hasattr(os, "register_at_fork") or not parallel.fork_available(), reason="no fork here"
)


@needs_fork_hooks
def test_workers_start_with_ctrl_c_held(forks):
    """A Ctrl-C that arrives while a worker is forked must not run the parent's handler in the
    child (it printed "Exception ignored in _after_fork ... KeyboardInterrupt"): the child
    starts with SIGINT and SIGTERM blocked, and ignores SIGINT before it unblocks."""
    import signal

    pids = parallel.run_parallel(_pid, range(2), jobs=2, start="fork")
    seen = sorted(p.name for p in forks.iterdir() if p.name.startswith("child_"))
    assert seen == sorted(f"child_{p}" for p in pids)
    for name in seen:
        blocked = {int(x) for x in (forks / name).read_text().split()}
        assert {int(signal.SIGINT), int(signal.SIGTERM)} <= blocked, name
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()  # the parent's is restored


@needs_fork_hooks
def test_no_worker_starts_after_a_stop_request(forks):
    """Ctrl-C while the curvature is measured (no step looks at it there): the trials that
    follow must not fork workers that then have to be terminated (5 s each, at worst)."""
    import signal

    with interrupts.stop_requests():
        os.kill(os.getpid(), signal.SIGINT)  # recorded, not raised
        assert interrupts.requested()
        with pytest.raises(KeyboardInterrupt):
            parallel.run_parallel(_pid, range(3), jobs=2, start="fork")
    assert not [p for p in forks.iterdir() if p.name.startswith("fork_")]


def _stubborn(item, progress):
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL ends it
    progress("started", 0, 1)
    time.sleep(20)


@pytest.mark.parametrize("start", STARTS)
def test_a_second_ctrl_c_while_workers_are_reaped_leaves_none(monkeypatch, start, tmp_path):
    """The first Ctrl-C stops the run; a second one arrives while a worker is still being
    reaped (it ignores SIGTERM, so it is killed after the grace time). Before, the second
    Ctrl-C broke off the reaping and left the worker running (and an atexit traceback)."""
    import multiprocessing
    import signal
    import threading

    monkeypatch.setattr(child_processes, "TERMINATE_GRACE", 2.0)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where spawn writes the inputs
    me = os.getpid()

    def on_progress(i, stage, done, total):
        os.kill(me, signal.SIGINT)  # the first Ctrl-C: a stop request
        threading.Timer(0.8, os.kill, (me, signal.SIGINT)).start()  # during the reaping

    try:
        with interrupts.stop_requests():
            t0 = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                parallel.run_parallel(
                    _stubborn, range(2), jobs=2, on_progress=on_progress, start=start
                )
            assert time.monotonic() - t0 >= 2.0  # the grace time passed: the second was held
        assert multiprocessing.active_children() == []
        assert os.listdir(tmp_path) == []  # the second Ctrl-C did not skip the clean-up
    finally:  # whatever happened, no stubborn worker may outlive the test
        for child in multiprocessing.active_children():
            child.kill()
            child.join()
