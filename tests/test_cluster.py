"""--cluster: the Dask executor runs the package's units (trials, check epochs, re-runs,
retrainings) on a real Dask scheduler with two local worker processes, with the results of a
loop in one process.

The scheduler listens on the loopback address only; the fixture starts it with its workers
and stops them. Nothing of nnabla or Dask is mocked.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from sgd_influence_plugin import cluster, cluster_executor, influence, interrupts  # noqa: E402
from sgd_influence_plugin.dataset import load_dataset  # noqa: E402
from sgd_influence_plugin.errors import ClusterError  # noqa: E402
from sgd_influence_plugin.nnabla_adapter import load_model  # noqa: E402
from sgd_influence_plugin.settings import InfluenceSettings  # noqa: E402

CLI = os.path.join(os.path.dirname(sys.executable), "sgd-influence")
HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="kills worker processes by pid (Linux)"
)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """A scheduler on 127.0.0.1 and two single-threaded worker processes (with nannies, so a
    killed worker is restarted), started with Dask's own commands and stopped at the end; its
    address. Separate processes: nothing of theirs is a child of the test process."""
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    address = f"tcp://127.0.0.1:{_free_port()}"
    logs = tmp_path_factory.mktemp("dask")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(HERE)]))
    commands = [
        [dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
         "--no-dashboard"],
        [dask, "worker", address, "--host", "127.0.0.1", "--nworkers", "2", "--nthreads", "1",
         "--no-dashboard"],
    ]  # fmt: skip
    procs = []
    try:
        for i, cmd in enumerate(commands):
            with open(logs / f"{i}.log", "w") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, env=env))
        with distributed.Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def mlp(results, data28):
    """The small MLP result, its decoded arrays (96 training rows: 3 steps of 32)."""
    folder = results("mlp")
    model = load_model(model=os.path.join(folder, "results.nnp"))
    shapes = model.info.input_shapes
    train = {k: v[:96] for k, v in load_dataset(data28["train"], shapes).arrays.items()}
    val = load_dataset(data28["val"], shapes).arrays
    return folder, model, train, val


def _free_port():
    """A port nothing listens on (yet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_trials_on_the_cluster_equal_a_local_run_and_the_cache_comes_back(scheduler, mlp, tmp_path):
    _, model, train, val = mlp
    theta0 = model.get_params()
    settings = InfluenceSettings(trials=3, jobs=1, lr=0.05)
    here = influence.compute_influence(
        model, train, val, settings, cache_dir=str(tmp_path / "here")
    )
    stages = set()
    with cluster.connect(scheduler) as c:
        assert c.slots == 2
        there = influence.compute_influence(
            model,
            train,
            val,
            settings,
            cache_dir=str(tmp_path / "there"),
            progress=lambda s, d, t: stages.add((s, t)),
            executor=c,
        )
    np.testing.assert_array_equal(here.trial_scores, there.trial_scores)
    np.testing.assert_array_equal(here.scores, there.scores)
    assert [o.seed for o in there.trials] == [0, 1, 2]
    assert [o.val_loss for o in there.trials] == [o.val_loss for o in here.trials]
    assert there.timings["jobs"] == 2 and there.timings["replay_processes"] == 1
    assert ("train (trial 3)", 3) in stages and ("replay (trial 1)", 3) in stages
    # The cache the workers made is written here, file for file.
    for m in range(3):
        a, b = tmp_path / "here" / f"trial_{m:02d}", tmp_path / "there" / f"trial_{m:02d}"
        assert sorted(os.listdir(a)) == sorted(os.listdir(b))
        np.testing.assert_array_equal(np.load(a / "order.npy"), np.load(b / "order.npy"))
    for k, v in model.get_params().items():
        np.testing.assert_array_equal(v, theta0[k])


def _run_cli(folder, data28, out, *extra):
    return subprocess.run(
        [
            CLI,
            "run",
            "--model",
            os.path.join(folder, "results.nnp"),
            "--train",
            data28["train"],
            "--val",
            data28["val"],
            "--output",
            str(out),
            "--trials",
            "2",
            "--no-recommend",
            "--quiet",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_run_through_the_cluster_writes_the_local_scores(scheduler, mlp, data28, tmp_path):
    folder = mlp[0]
    local = _run_cli(folder, data28, tmp_path / "local" / "influence.csv", "--jobs", "1")
    assert local.returncode == 0, local.stderr[-2000:]
    remote = _run_cli(folder, data28, tmp_path / "remote" / "influence.csv", "--cluster", scheduler)
    assert remote.returncode == 0, remote.stderr[-2000:]
    a = (tmp_path / "local" / "influence.csv").read_text()
    b = (tmp_path / "remote" / "influence.csv").read_text()
    assert a == b
    trials = "influence_trials.csv"
    assert (tmp_path / "local" / trials).read_text() == (tmp_path / "remote" / trials).read_text()


def test_an_unreachable_address_is_refused_before_anything_is_read(data28, tmp_path):
    port = _free_port()
    out = tmp_path / "o" / "influence.csv"
    t0 = time.monotonic()
    proc = _run_cli("no-such-folder", data28, out, "--cluster", f"tcp://127.0.0.1:{port}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"--cluster tcp://127.0.0.1:{port}: no Dask scheduler answers there" in lines[0]
    assert "dask scheduler" in lines[0]
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "o").exists()
    with pytest.raises(ClusterError, match="not a scheduler address"):
        with cluster.connect("tcp://127.0.0.1:notaport"):
            pass


def test_files_the_workers_cannot_read_are_refused_before_anything_runs(scheduler, data28):
    with cluster.connect(scheduler) as c:
        c.check_paths([data28["train"]], "retraining")
        with pytest.raises(ClusterError, match="cannot read /no/such/file.csv, which retraining"):
            c.check_paths(["/no/such/file.csv"], "retraining")


def _kill_the_worker_that_runs(client, key_prefix):
    """SIGKILL the worker process that has a unit whose key starts so (it waits for one)."""
    for _ in range(600):
        for worker, keys in client.processing().items():
            if any(str(k).startswith(key_prefix) for k in keys):
                os.kill(client.run(os.getpid, workers=[worker])[worker], signal.SIGKILL)
                return worker
        time.sleep(0.05)
    raise AssertionError("no unit started")


def _in_thread(fn):
    """Start ``fn()`` in a thread; returns a function that waits and gives its result or
    raises its exception."""
    out = {}

    def body():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out["error"] = e

    thread = threading.Thread(target=body, daemon=True)
    thread.start()

    def result():
        thread.join(240)
        assert not thread.is_alive()
        if "error" in out:
            raise out["error"]
        return out["value"]

    return result


def test_a_killed_worker_has_its_trial_run_again_with_the_same_result(scheduler, mlp):
    _, model, train, val = mlp
    # epochs=40: each trial lasts long enough for the poll to see it running (a one-epoch
    # trial can start and end between two polls; the test failed once, on a loaded machine,
    # with "no unit started")
    settings = InfluenceSettings(trials=2, jobs=1, lr=0.05, epochs=40)
    here = influence.compute_influence(model, train, val, settings)
    with cluster.connect(scheduler) as c:
        result = _in_thread(
            lambda: influence.compute_influence(model, train, val, settings, executor=c)
        )
        assert _kill_the_worker_that_runs(c.client, "trial-")
        there = result()
        c.client.wait_for_workers(2, timeout=60)  # the nanny restarted it
    np.testing.assert_array_equal(here.trial_scores, there.trial_scores)


def _set_allowed_failures(client, n):
    def set_it(dask_scheduler):
        before = dask_scheduler.allowed_failures
        dask_scheduler.allowed_failures = n
        return before

    return client.run_on_scheduler(set_it)


def test_a_worker_lost_past_the_retries_stops_the_run_and_writes_nothing(
    scheduler, mlp, data28, tmp_path
):
    from sgd_influence_plugin.runner import RunRequest, run

    out = tmp_path / "o" / "influence.csv"
    request = RunRequest(
        output=str(out),
        model=os.path.join(mlp[0], "results.nnp"),
        train=data28["train"],
        val=data28["val"],
        settings=InfluenceSettings(trials=1, lr=0.05),
        recommend=False,
        cluster=scheduler,
    )
    with cluster.connect(scheduler) as c:
        before = _set_allowed_failures(c.client, 0)  # the first loss is one too many
        try:
            result = _in_thread(lambda: run(request))
            assert _kill_the_worker_that_runs(c.client, "trial-")
            with pytest.raises(ClusterError, match="lost its worker more often than Dask retries"):
                result()
        finally:
            _set_allowed_failures(c.client, before)
            c.client.wait_for_workers(2, timeout=60)
    assert not (tmp_path / "o").exists()


def test_check_re_runs_on_the_cluster_equal_the_local_ones(scheduler, mlp):
    from sgd_influence_plugin.fidelity import check_fidelity

    _, model, train, val = mlp
    settings = InfluenceSettings(lr=0.05)
    here = check_fidelity(model, train, val, settings, samples=6)
    steps = []
    with cluster.connect(scheduler) as c:
        there = check_fidelity(
            model, train, val, settings, samples=6, executor=c,
            progress=lambda s, d, t: steps.append((s, d, t)),
        )  # fmt: skip
    np.testing.assert_array_equal(here.index, there.index)
    np.testing.assert_array_equal(here.actual, there.actual)
    assert (here.pearson, here.spearman) == (there.pearson, there.spearman)
    assert [d for s, d, t in steps if s == "leave-one-out"] == [1, 2, 3, 4, 5, 6]


def test_the_recommendations_check_on_the_cluster_equals_the_local_one(scheduler, mlp):
    from sgd_influence_plugin import recommend as rc

    _, model, train, val = mlp
    theta0 = model.get_params()
    label = next(iter(model.info.label_classes))
    n = len(train[label])

    def candidates():
        rows = np.arange(0, n, 7, dtype=np.int64)
        return [
            rc.Candidate(0.1, "remove", rows, np.zeros(len(rows), np.int64)),
            rc.Candidate(0.2, "relabel", rows[:5], np.ones(5, np.int64), "margin_and_influence"),
        ]

    args = (model, train, val, label)
    here = rc.check_candidates(*args, candidates(), 0.05, 32, seed=3, predict=model.predict)
    steps = []
    with cluster.connect(scheduler) as c:
        there = rc.check_candidates(
            *args, candidates(), 0.05, 32, seed=3, predict=model.predict, executor=c,
            progress=lambda s, d, t: steps.append((s, d, t)),
        )  # fmt: skip
    for a, b in zip(here, there):
        np.testing.assert_array_equal(a.heldout_loss, b.heldout_loss)
        assert (a.loss_change, a.standard_error) == (b.loss_change, b.standard_error)
        assert a.accuracy_change == b.accuracy_change and np.isfinite(b.accuracy_change)
        assert b.loss_change != 0  # the epochs did change the held-out losses
    # base + 2 candidates, 3 steps each: progress counts all of them, up to the end
    assert {t for _, _, t in steps} == {9} and max(d for _, d, _ in steps) == 9
    # The whole rule, as the run calls it: the same decision, and it says where it ran.
    heldout = {k: np.concatenate([val[k], train[k][:40]]) for k in val}  # >= 100 rows
    rule = (model, train, heldout, label, -np.ones((1, n)), 32, 0.0, float("nan"), 1)
    local = rc.recommend(*rule)
    with cluster.connect(scheduler) as c:
        remote = rc.recommend(*rule, executor=c)
    assert local.checked and local.check["where"] == "this machine"
    assert remote.check["where"] == "cluster" and remote.check["jobs"] == 2
    assert [x.z for x in remote.checked] == [x.z for x in local.checked]
    assert remote.action.tolist() == local.action.tolist()
    for k, v in model.get_params().items():
        np.testing.assert_array_equal(v, theta0[k])


def _changing_unit(item, progress, big):
    """Sees the shared array, then changes it in place (as a trial changes the model's
    parameters until it restores them) and keeps it changed for a while."""
    seen = float(big[:1000].sum())
    big += 1
    time.sleep(0.3)
    big -= 1
    return seen


def test_what_a_unit_changes_never_reaches_another_worker(scheduler):
    """Workers pass each other the shared inputs as they were sent, not as a unit on the
    worker that had them first has changed them meanwhile."""
    big = np.zeros(8_000_000, np.float32)  # 32 MB: fetching it takes a while
    with cluster.connect(scheduler) as c:
        assert c.map(_changing_unit, range(6), shared=(big,), name="change") == [0.0] * 6


def _slow_unit(item, progress):
    """A unit of 100 steps of 0.1 s (10 s) that reports each step."""
    for step in range(100):
        time.sleep(0.1)
        progress("slow", step + 1, 100)
    return item


def test_ctrl_c_cancels_the_units_and_stops_the_running_ones(scheduler):
    with cluster.connect(scheduler) as c, interrupts.stop_requests():
        t0 = time.monotonic()

        def on_progress(i, stage, done, total):
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does: the handler sets a flag

        with pytest.raises(KeyboardInterrupt):
            c.map(_slow_unit, range(6), on_progress=on_progress, name="slow")
        assert time.monotonic() - t0 < 8
        for _ in range(100):  # the running units stop at their next step
            if not any(c.client.processing().values()):
                break
            time.sleep(0.05)
        assert not any(c.client.processing().values())
        assert time.monotonic() - t0 < 8


@pytest.mark.parametrize("retrain", ["last", "scratch"])
def test_evaluate_through_the_cluster_gives_the_local_rows(
    scheduler, mlp, data28, tmp_path, retrain
):
    from sgd_influence_plugin.evaluate import EvaluateRequest, evaluate

    nnp = os.path.join(mlp[0], "results.nnp")
    args = (data28["train"], data28["val"], data28["val"])
    settings = InfluenceSettings(trials=1, jobs=1)
    ratios, seeds = [0, 0.1], [4]

    def request(out):
        return EvaluateRequest({"model": nnp}, *args, out, ratios, seeds, retrain, settings)

    here = evaluate(request(str(tmp_path / "here")))
    with cluster.connect(scheduler) as c:
        there = evaluate(request(str(tmp_path / "there")), executor=c)
    assert [(r["method"], r["n_removed"]) for r in there] == [
        ("none", 0),
        ("harmful", 26),
        ("random", 26),
    ]
    for a, b in zip(here, there):
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }
    assert (tmp_path / "there" / "summary.md").exists()


def test_units_ask_for_a_gpu_only_outside_a_cpu_context():
    assert cluster_executor.resources_for("cpu") is None
    assert cluster_executor.resources_for("cpu:float") is None
    assert cluster_executor.resources_for("cudnn") == {"GPU": 1}


def test_a_unit_must_be_a_module_level_function_on_the_cluster_too(scheduler):
    with cluster.connect(scheduler) as c:
        with pytest.raises(TypeError, match="not a module-level function"):
            c.map(lambda item, progress: item, range(2))


def _protocol():
    folder = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import paper_protocol

    return paper_protocol


def test_paper_protocol_refuses_an_unreachable_cluster_before_anything(tmp_path, capsys):
    port = _free_port()
    work = tmp_path / "work"
    argv = ["--work", str(work), "--out", str(tmp_path / "out"), "--cluster", f"127.0.0.1:{port}"]
    assert _protocol().main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("paper_protocol: error: --cluster tcp://127.0.0.1:")
    assert "no Dask scheduler answers there" in err[0]
    assert not work.exists()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="make data")
def test_paper_protocol_through_the_cluster_gives_the_local_rows(scheduler, tmp_path):
    import csv

    def rows(name, *extra):
        argv = [
            "--work", str(tmp_path / name / "work"), "--out", str(tmp_path / name / "out"),
            "--pool-limit", "400", "--train", "200", "--val", "100", "--test", "100",
            "--epochs", "1", "--seeds", "3", "--noise", "0.1", "--ratios", "0.1", "--jobs", "1",
            *extra,
        ]  # fmt: skip
        t0 = time.monotonic()
        assert _protocol().main(argv) == 0
        with open(tmp_path / name / "out" / "results.csv", newline="") as f:
            got = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
        return got, time.monotonic() - t0

    here, _ = rows("here")
    there, _ = rows("there", "--cluster", scheduler)
    assert [(r["method"], r["n_removed"]) for r in there] == [
        ("none", "0"),
        ("final", "20"),
        ("all", "20"),
        ("random", "20"),
    ]
    assert here == there
    task = tmp_path / "there" / "work" / "task_0.1_3"
    for folder in ("base", "final_20", "all_20", "random_20"):  # sent back, written here
        assert (task / folder / "results.nnp").stat().st_size > 10_000
