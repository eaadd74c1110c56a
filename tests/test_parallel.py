"""The forked worker pool: same results as a serial loop on a real nnabla model, errors and
interruptions that end every worker, nothing left behind."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from sgd_influence_plugin import core, interrupts, parallel
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.errors import SettingsError
from sgd_influence_plugin.nnabla_adapter import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_fork = pytest.mark.skipif(not parallel.fork_available(), reason="no fork on this platform")
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads processes from /proc (Linux)"
)


def _children(pid=None):
    """Pids of the live (not zombie) child processes of ``pid`` (default: this process)."""
    pid = pid or os.getpid()
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
        if ppid == pid and state != "Z":
            out.append(int(entry))
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_default_jobs_is_the_usable_cores_at_most_the_items():
    cores = len(os.sched_getaffinity(0))
    assert parallel.usable_cores() == cores
    assert parallel.default_jobs(1) == 1
    assert parallel.default_jobs(1000) == cores
    assert parallel.default_jobs(0) == 1
    # One home for "CUDA does not survive fork()": any context but a CPU one gets one worker.
    assert parallel.workers_for("cudnn", 4, 8) == parallel.workers_for("cudnn:1") == 1
    assert parallel.workers_for("cpu", 3, 8) == 3
    assert parallel.workers_for("cpu", None, 1) == 1 and parallel.workers_for("cpu") == cores
    with pytest.raises(ValueError, match="at least 1"):
        parallel.run_parallel(lambda x, p: x, [1, 2], jobs=0)


def test_one_job_or_no_fork_runs_in_this_process(monkeypatch):
    me = os.getpid()
    out = parallel.run_parallel(lambda x, p: (x, os.getpid()), [1, 2], jobs=1)
    assert out == [(1, me), (2, me)]
    monkeypatch.setattr(parallel, "fork_available", lambda: False)
    assert parallel.run_parallel(lambda x, p: os.getpid(), [1, 2, 3], jobs=3) == [me] * 3


@needs_fork
def test_results_in_item_order_with_callbacks_in_the_parent():
    """Items finish in reverse order; results still come in item order."""
    me = os.getpid()
    seen, steps = [], []

    def fn(item, progress):
        time.sleep(0.05 * (4 - item))
        progress("work", 1, 2)
        progress("work", 2, 2)
        return item * 10, os.getpid()

    out = parallel.run_parallel(
        fn,
        [0, 1, 2, 3],
        jobs=4,
        on_result=lambda i, r: seen.append((i, r[0], os.getpid())),
        on_progress=lambda i, stage, done, total: steps.append((i, stage, done, total)),
    )
    assert [r[0] for r in out] == [0, 10, 20, 30]
    workers = {r[1] for r in out}
    assert me not in workers and len(workers) == 4
    assert sorted(seen) == [(0, 0, me), (1, 10, me), (2, 20, me), (3, 30, me)]
    assert sorted(steps) == sorted((i, "work", d, 2) for i in range(4) for d in (1, 2))
    assert _children() == []


@needs_fork
def test_forked_workers_compute_the_same_replay_as_a_serial_loop(results, data28):
    """SGD epoch + exact replay in forked workers (after the parent built and ran the graphs)
    equals the same loop in this process, bit for bit; the parent's model is untouched."""
    model = load_model(model=os.path.join(results("cnn_bn"), "results.nnp"))
    train = {
        k: v[:96] for k, v in load_dataset(data28["train"], model.info.input_shapes).arrays.items()
    }
    val = load_dataset(data28["val"], model.info.input_shapes).arrays
    theta0 = model.get_params()
    n = len(train["y"])  # 3 steps of 32
    lrs = np.full(core.n_steps(n, 32), 0.02, np.float32)

    def trial(seed, progress):
        model.set_params(theta0)
        order = core.epoch_orders(n, 1, seed)[0]
        core.sgd_epoch(model, train, order, lrs, 32, progress=progress)
        u = core.validation_gradient(model, val)
        infl, stats = core.replay(model, train, order, lrs, 32, u, progress=progress)
        return infl, stats.u_growth

    serial = parallel.run_parallel(trial, [0, 1], jobs=1)  # builds the graphs here first
    model.set_params(theta0)
    stages = set()
    forked = parallel.run_parallel(
        trial, [0, 1], jobs=2, on_progress=lambda i, s, d, t: stages.add((s, t))
    )
    assert stages == {("train", 3), ("replay", 3)}
    for (a, ga), (b, gb) in zip(serial, forked):
        assert np.all(np.isfinite(b)) and np.std(b) > 0
        np.testing.assert_array_equal(a, b)
        assert ga == gb
    assert not np.array_equal(serial[0][0], serial[1][0])  # different orders, different scores
    for k, v in model.get_params().items():  # the workers' changes stayed in the workers
        np.testing.assert_array_equal(v, theta0[k])
    assert _children() == []


@needs_fork
def test_an_error_in_a_worker_keeps_its_type_and_message_and_ends_the_others(tmp_path):
    def fn(item, progress):
        if item == 2:
            raise SettingsError(f"item {item}: bad value; pass a good one")
        if item == 0:  # would outlive the test unless ended
            (tmp_path / str(os.getpid())).write_text("")
            time.sleep(60)
        return item

    with pytest.raises(SettingsError, match=r"^item 2: bad value; pass a good one$") as info:
        parallel.run_parallel(fn, [0, 1, 2, 3], jobs=2)
    assert isinstance(info.value.__cause__, parallel.RemoteTraceback)
    assert "in fn" in str(info.value.__cause__)  # the worker's traceback
    assert _children() == []
    assert not [int(p) for p in os.listdir(tmp_path) if _alive(int(p))]


class _Unpicklable(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")

    def __reduce__(self):
        raise TypeError("no pickling")


@needs_fork
def test_an_exception_that_does_not_pickle_arrives_as_its_name_and_message():
    def fn(item, progress):
        raise _Unpicklable("this", "that")

    with pytest.raises(RuntimeError, match="_Unpicklable: this and that"):
        parallel.run_parallel(fn, [0, 1], jobs=2)
    assert _children() == []


@needs_fork
def test_a_worker_that_dies_is_reported_and_the_rest_are_ended():
    def fn(item, progress):
        if item == 1:
            os._exit(3)
        time.sleep(30)

    with pytest.raises(parallel.WorkerError, match="exit code 3"):
        parallel.run_parallel(fn, [0, 1], jobs=2)
    assert _children() == []


_INTERRUPTED = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {root!r})
    from sgd_influence_plugin import interrupts, parallel

    def fn(item, progress):
        open(os.path.join({folder!r}, str(os.getpid())), "w").close()
        time.sleep(60)

    try:
        with interrupts.stop_requests():  # as the CLI and the plugin run
            parallel.run_parallel(fn, [0, 1, 2], jobs=2)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    """
)


_INTERRUPTED_HELPER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {root!r})
    from sgd_influence_plugin import interrupts, parallel

    def fn(x):
        open(os.path.join({folder!r}, str(os.getpid())), "w").close()
        time.sleep(60)

    try:
        with interrupts.stop_requests():
            with parallel.helper(fn) as h:
                h.submit(1)
                h.result()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    """
)


@needs_fork
@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
@pytest.mark.parametrize("kind", ["workers", "helper"])
def test_sigterm_or_ctrl_c_ends_every_worker(tmp_path, how, kind):
    """SIGTERM to the parent (as the CLI maps it) or SIGINT to the whole process group (what
    Ctrl-C in a terminal sends): the parent exits through KeyboardInterrupt, no worker (nor
    the replay's helper) lives."""
    script = tmp_path / "interrupted.py"
    folder = tmp_path / "pids"
    folder.mkdir()
    template = _INTERRUPTED if kind == "workers" else _INTERRUPTED_HELPER
    script.write_text(template.format(root=ROOT, folder=str(folder)))
    expected = 2 if kind == "workers" else 1
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True
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
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "interrupted" in out
    time.sleep(0.2)
    assert not [p for p in workers if _alive(p)]


@needs_fork
def test_a_replay_with_a_helper_process_equals_the_replay_alone(results, data28):
    """The fd step's minus pass in a forked helper (core.replay's ``helper``) gives the same
    scores and u, bit for bit, as both passes here; the helper is gone afterwards. Without
    the fd step, or with the parameters of every step, no helper is started."""
    model = load_model(model=os.path.join(results("cnn_bn"), "results.nnp"))
    train = {
        k: v[:96] for k, v in load_dataset(data28["train"], model.info.input_shapes).arrays.items()
    }
    val = load_dataset(data28["val"], model.info.input_shapes).arrays
    u = core.validation_gradient(model, val)
    order = core.epoch_orders(96, 1, 3)[0]
    lrs = np.full(core.n_steps(96, 32), 0.02, np.float32)
    alone, s1 = core.replay(model, train, order, lrs, 32, u, step="fd")
    started = []

    def counting_helper(fn):
        started.append(fn)
        return parallel.helper(fn)

    paired, s2 = core.replay(model, train, order, lrs, 32, u, step="fd", helper=counting_helper)
    assert len(started) == 1 and np.std(alone) > 0
    np.testing.assert_array_equal(alone, paired)
    assert s1.u_growth == s2.u_growth
    assert _children() == []
    core.replay(model, train, order, lrs, 32, u, step="exact", helper=counting_helper)
    theta = model.get_params()
    core.replay(
        model, train, order, lrs, 32, u, step="fd", helper=counting_helper,
        params_at=lambda t: theta,
    )  # fmt: skip
    assert len(started) == 1


@needs_fork
def test_a_helper_error_or_death_reaches_the_parent_and_no_process_is_left():
    def fn(x):
        if x == "bad":
            raise SettingsError("bad: give a good one")
        if x == "die":
            os._exit(4)
        return x * 2

    with parallel.helper(fn) as h:
        h.submit(21)
        assert h.result() == 42
        h.submit("bad")
        with pytest.raises(SettingsError, match="^bad: give a good one$"):
            h.result()
    assert _children() == []
    with pytest.raises(parallel.WorkerError, match="exit code 4"):
        with parallel.helper(fn) as h:
            h.submit("die")
            h.result()
    assert _children() == []
    with pytest.raises(ValueError, match="the caller's"):  # an error here ends the helper too
        with parallel.helper(fn) as h:
            raise ValueError("the caller's")
    assert _children() == []


def test_cluster_units_ask_for_a_gpu_only_outside_a_cpu_context():
    assert parallel.cluster_resources("cpu") is None
    assert parallel.cluster_resources("cpu:float") is None
    assert parallel.cluster_resources("cudnn") == {"GPU": 1}


# ----------------------------------------------------------------------------------------
# Ctrl-C around forked workers (issue 18, case 13)
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


def _pid(item, progress):
    return os.getpid()


@needs_fork_hooks
def test_workers_start_with_ctrl_c_held(forks):
    """A Ctrl-C that arrives while a worker is forked must not run the parent's handler in the
    child (it printed "Exception ignored in _after_fork ... KeyboardInterrupt"): the child
    starts with SIGINT and SIGTERM blocked, and ignores SIGINT before it unblocks."""
    import signal

    pids = parallel.run_parallel(_pid, range(2), jobs=2)
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
            parallel.run_parallel(_pid, range(3), jobs=2)
    assert not [p for p in forks.iterdir() if p.name.startswith("fork_")]


def _stubborn(item, progress):
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL ends it
    progress("started", 0, 1)
    time.sleep(20)


@needs_fork_hooks
def test_a_second_ctrl_c_while_workers_are_reaped_leaves_none(monkeypatch):
    """The first Ctrl-C stops the run; a second one arrives while a worker is still being
    reaped (it ignores SIGTERM, so it is killed after the grace time). Before, the second
    Ctrl-C broke off the reaping and left the worker running (and an atexit traceback)."""
    import multiprocessing
    import signal
    import threading

    monkeypatch.setattr(parallel, "_TERMINATE_GRACE", 2.0)
    me = os.getpid()

    def on_progress(i, stage, done, total):
        os.kill(me, signal.SIGINT)  # the first Ctrl-C: a stop request
        threading.Timer(0.8, os.kill, (me, signal.SIGINT)).start()  # during the reaping

    try:
        with interrupts.stop_requests():
            t0 = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                parallel.run_parallel(_stubborn, range(2), jobs=2, on_progress=on_progress)
            assert time.monotonic() - t0 >= 2.0  # the grace time passed: the second was held
        assert multiprocessing.active_children() == []
    finally:  # whatever happened, no stubborn worker may outlive the test
        for child in multiprocessing.active_children():
            child.kill()
            child.join()
