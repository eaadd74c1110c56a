"""Enough memory for the decoded datasets (sgd_influence_plugin/memory.py): a set too large
for the machine is refused in one line before any image is opened, through the CLI and the
console's entry script; the estimate covers the arrays really decoded; the readers of the
available memory (Linux, its cgroups, Windows, macOS) on fake inputs; a MemoryError after
the check is one line too.
"""

from __future__ import annotations

import ctypes
import os
import sys

import pytest

from sgd_influence_plugin import cli, dataset, inputs, memory, parallel
from sgd_influence_plugin.errors import DatasetError
from sgd_influence_plugin.settings import InfluenceSettings
from support import console_kinds
from support.memory_probe import measured_run
from support.netdef import NetSpec
from support.results import train_on
from support.user_files import load_plugin, one_line_error, plugin_error, run_argv, tree

GIB = 2**30


@pytest.fixture
def no_decoding(monkeypatch):
    """Every cell decoded is recorded here (none should be, when the data is refused)."""
    opened = []

    def record(path, number, *args):
        opened.append((path, number))
        raise AssertionError("a cell was decoded")

    monkeypatch.setattr(dataset, "variable_value", record)
    return opened


def _little_memory(monkeypatch, gigabytes=0.1):
    monkeypatch.setattr(memory, "available_memory", lambda: int(gigabytes * 1e9))


REFUSAL = (
    r"train\.csv \(50 rows\) and \S*val\.csv \(30 rows\): decoding them needs about "
    r"\d+\.\d GB of memory \(0\.0 GB of float32 arrays, .*\) but only 0\.1 GB are available; "
    r"use a subset of the training CSV, smaller images, or a machine with more memory$"
)


def test_cli_refuses_data_too_large_for_memory_before_decoding(
    world, capsys, monkeypatch, no_decoding
):
    """Before: no check; a set too large was decoded until the out-of-memory killer (exit
    137) or a MemoryError traceback ended the run."""
    _little_memory(monkeypatch)
    before = tree(world["root"])
    assert cli.main(run_argv(world, world["root"] / "out" / "influence.csv")) == 2
    one_line_error(capsys, REFUSAL)
    assert no_decoding == []  # refused before any image was opened
    assert tree(world["root"]) == before  # nothing written, no cache left


def test_console_script_refuses_data_too_large_for_memory(world, monkeypatch, caplog, no_decoding):
    _little_memory(monkeypatch)
    monkeypatch.chdir(world["result"])
    before = tree(world["root"])
    assert load_plugin().main(["-t", world["train"], "-v", world["val"]]) == 2
    plugin_error(caplog, REFUSAL)
    assert no_decoding == []
    assert tree(world["root"]) == before


def test_check_and_evaluate_decode_through_the_same_check(world, capsys, monkeypatch):
    _little_memory(monkeypatch)
    argv = ["--model", world["model"], "--train", world["train"], "--val", world["val"]]
    out = world["root"] / "out"
    assert cli.main(["check", *argv, "--output", str(out / "check.csv"), "--quiet"]) == 2
    one_line_error(capsys, REFUSAL)
    evaluate = ["evaluate", *argv, "--test", world["val"], "--output-dir", str(out)]
    assert cli.main(evaluate) == 2
    one_line_error(capsys, r"decoding them needs about .* but only 0\.1 GB are available")
    assert not out.exists()


def test_unknown_available_memory_refuses_nothing(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: None)
    huge = [("train.csv", 10**7, 3 * 512 * 512, True), ("val.csv", 10**6, 3 * 512 * 512, False)]
    need = memory.check_memory(huge, n_params=10**8, processes=16)
    assert need.total > 6 * 10**13  # 66 TB: far beyond any machine, yet not refused on a guess
    monkeypatch.setattr(memory, "available_memory", lambda: need.total)
    memory.check_memory(huge, n_params=10**8, processes=16)  # exactly enough: not refused
    monkeypatch.setattr(memory, "available_memory", lambda: need.total - 1)
    with pytest.raises(DatasetError, match=r"needs about \d+\.\d GB"):
        memory.check_memory(huge, n_params=10**8, processes=16)


def test_a_refusal_with_many_workers_names_what_one_would_need(monkeypatch):
    """Every worker holds the network: with a large one on many cores, ``--jobs 1`` may fit
    where the default does not, and the refusal says how much it would need."""
    small = [("train.csv", 1000, 10, True), ("val.csv", 100, 10, False)]
    one = memory.estimate_memory([c[1:] for c in small], 10**8, 2).total
    many = memory.estimate_memory([c[1:] for c in small], 10**8, 16).total
    monkeypatch.setattr(memory, "available_memory", lambda: (one + many) // 2)
    with pytest.raises(DatasetError, match=rf"--jobs 1: about {one / memory.GB:.1f} GB"):
        memory.check_memory(small, n_params=10**8, processes=16)
    with pytest.raises(DatasetError) as e:  # one worker already: nothing fewer to suggest
        memory.check_memory(small, n_params=10**8 * 20, processes=2)
    assert "--jobs" not in str(e.value)


def test_this_machine_reports_a_number_or_nothing():
    free = memory.available_memory()
    assert free is None or (isinstance(free, int) and free > 0)
    if sys.platform.startswith("linux"):
        assert free is not None  # /proc/meminfo has MemAvailable since Linux 3.14


class _Model:
    def __init__(self, shapes, n_params, feature_width=None):
        fields = {"input_shapes": shapes, "train_dataset": None, "val_dataset": None}
        self.info = type("Info", (), fields)()  # no dataset named: images divided by 255
        self.n_params = n_params
        self.feature_width = feature_width


@pytest.mark.parametrize("jobs, start", [(1, "fork"), (2, "fork"), (2, "spawn")])
def test_the_estimate_covers_the_arrays_decoded(data7, monkeypatch, jobs, start):
    """On a real dataset (50 + 30 rows of 7x7 images and a label), the estimate's arrays are
    the decoded arrays' bytes, and the whole estimate is at least that; a CSV decoded in
    workers counts its joined copy, spawned workers the files of the arrays they map (before:
    not counted, and a spawned run of 8,000 64x64 colour images took 1.05 times the
    estimate), the recommendation the network's features."""
    monkeypatch.setenv(parallel.START_VARIABLE, start)
    seen = []
    real = memory.check_memory
    monkeypatch.setattr(memory, "check_memory", lambda *a, **k: seen.append(real(*a, **k)))
    monkeypatch.setattr(dataset, "PARALLEL_MIN_ROWS", 40)  # the training CSV in workers
    model = _Model({"x": (1, 7, 7), "y": (1,)}, n_params=500, feature_width=20)
    settings = InfluenceSettings(jobs=jobs, trials=3)
    csvs = [(data7["train"], None), (data7["val"], None)]
    train, val = inputs.read_datasets(csvs, model, settings, jobs=None)
    decoded = sum(a.nbytes for d in (train, val) for a in d.arrays.values())
    (need,) = seen
    assert need.arrays == decoded == (50 + 30) * (49 + 1) * 4
    assert need.total >= decoded
    mapped = decoded if start == "spawn" else 0
    assert need.copies == (50 if jobs > 1 else 30) * 50 * 4 + mapped
    assert need.processes == (jobs + 1) * (memory.PROCESS_BYTES + memory.PARAM_BYTES * 500)
    assert need.rows == memory.ROW_BYTES * 80 + 8 * 50 * 3
    assert need.features == 2 * 4 * 20 * 80 + 16 * 50 * 30  # two copies, one chunk's distances


# --------------------------------------------------- the estimate against a run's real peak


def _measured(tmp_path, data, spec, *extra):
    """A run of ``spec`` trained on ``data``, its process tree's peak memory measured."""
    result = train_on(str(tmp_path / "result"), data, spec)
    argv = ["run", "--model", os.path.join(result, "results.nnp"), "--train", data["train"],
            "--val", data["val"], "--output", str(tmp_path / "out" / "influence.csv"),
            "--quiet", *extra]  # fmt: skip
    got = measured_run(argv, str(tmp_path / "out"))
    return got["need"]["total"], got["tree_pss"] * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_estimate_covers_a_large_networks_run(tmp_path):
    """A 3-million-parameter MLP on 128x128 colour images (200 + 100 rows): the run's
    processes (sampled, proportional set size) stay under the estimate, which is at most 3
    times as large. Before: 16 bytes a parameter a process, and the run took 1.5 times the
    estimate (the replay's graphs and the curvature's Lanczos vectors take ~150).
    """
    data = console_kinds.write_colour(str(tmp_path / "data"), 200, 100, size=128, seed=0)
    need, peak = _measured(
        tmp_path, data, NetSpec(arch="mlp", n_classes=2, max_epoch=2), "--jobs", "1"
    )
    assert peak <= need <= 3 * peak, (need / 2**20, peak / 2**20)


@pytest.mark.slow  # 3,500 images written and trained on: ~10 s
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_estimate_covers_the_neighbours_features(tmp_path):
    """A logistic regression on 64x64 colour images (3,000 + 500 rows): its features are the
    images themselves, compared with the validation rows' in a copy scaled to unit length.
    Before: not counted, and the run took 1.16 times the estimate.
    """
    data = console_kinds.write_colour(str(tmp_path / "data"), 3000, 500, size=64, seed=0)
    need, peak = _measured(
        tmp_path, data, NetSpec(arch="logreg", n_classes=2, max_epoch=2), "--jobs", "1"
    )
    assert peak <= need <= 3 * peak, (need / 2**20, peak / 2**20)


# ------------------------------------------------------------------------------ the readers

MEMINFO = "MemTotal:       24683772 kB\nMemFree:  20596192 kB\nMemAvailable:   23780284 kB\n"


def test_meminfo_available():
    assert memory.meminfo_available(MEMINFO) == 23780284 * 1024
    assert memory.meminfo_available("MemTotal: 1000 kB\nMemFree: 10 kB\n") is None  # < 3.14
    assert memory.meminfo_available(None) is None


def _files(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


def test_cgroup_v2_limit_of_the_process_and_its_parents(tmp_path):
    root = tmp_path / "cgroup"
    _files(root, memory_stat="inactive_file 0\n")  # the root has no memory.max
    _files(root / "user.slice", memory_max="max\n", memory_current="1\n")
    _files(
        root / "user.slice" / "run.scope",
        memory_max=f"{2 * GIB}\n",
        memory_current=f"{GIB}\n",
        memory_stat=f"anon 5\ninactive_file {GIB // 4}\nactive_file 7\n",
    )
    own = "0::/user.slice/run.scope\n"
    assert memory.cgroup_available(str(root), own) == 2 * GIB - (GIB - GIB // 4)
    _files(root / "user.slice", memory_max=f"{GIB}\n", memory_current=f"{GIB // 2}\n")
    assert memory.cgroup_available(str(root), own) == GIB // 2  # the parent's is tighter
    assert memory.cgroup_available(str(tmp_path / "none"), own) is None


def test_cgroup_v1_limit_and_no_limit(tmp_path):
    root = tmp_path / "cgroup"
    _files(root / "memory", memory_limit_in_bytes="9223372036854771712\n")  # no limit
    _files(root / "memory", memory_usage_in_bytes="12345\n")
    own = "4:memory:/docker/abc\n3:cpuset:/\n"
    assert memory.cgroup_available(str(root), own) is None
    _files(
        root / "memory" / "docker" / "abc",
        memory_limit_in_bytes=f"{GIB}\n",
        memory_usage_in_bytes=f"{GIB // 2}\n",
        memory_stat=f"inactive_file 9\ntotal_inactive_file {GIB // 8}\n",
    )
    assert memory.cgroup_available(str(root), own) == GIB - (GIB // 2 - GIB // 8)
    assert memory.cgroup_available(str(root), None) is None  # the mount point: no limit


def test_linux_available_is_the_smaller_of_meminfo_and_the_cgroup(tmp_path):
    (tmp_path / "meminfo").write_text(MEMINFO)
    (tmp_path / "self").write_text("0::/job\n")
    _files(tmp_path / "cg" / "job", memory_max=f"{GIB}\n", memory_current="0\n")
    paths = [str(tmp_path / "meminfo"), str(tmp_path / "cg"), str(tmp_path / "self")]
    assert memory.linux_available(*paths) == GIB
    (tmp_path / "cg" / "job" / "memory.max").write_text("max\n")
    assert memory.linux_available(*paths) == 23780284 * 1024
    assert memory.linux_available(str(tmp_path / "no"), str(tmp_path / "no"), "") is None


def test_windows_reader_fills_memorystatusex():
    seen = {}

    def fill(ref):
        status = ref._obj
        seen["length"] = status.dwLength
        seen["size"] = ctypes.sizeof(status)
        status.ullAvailPhys = 6 * GIB
        status.ullAvailVirtual = 2**47
        return 1

    assert memory.windows_available(fill) == 6 * GIB
    assert seen["length"] == seen["size"] == 64  # MEMORYSTATUSEX: 2 DWORDs, 7 DWORDLONGs
    assert memory.windows_available(lambda ref: 0) is None  # the call failed


@pytest.mark.skipif(sys.platform == "win32", reason="tests the fallback where kernel32 is missing")
def test_a_platform_reader_that_fails_gives_none(monkeypatch):
    monkeypatch.setattr(memory.sys, "platform", "win32")  # no ctypes.windll here
    assert memory.available_memory() is None
    monkeypatch.setattr(memory.sys, "platform", "sunos5")
    assert memory.available_memory() is None


def test_macos_reader_counts_free_and_reclaimable_pages():
    argv = []

    def sysctl(args):
        argv.append(list(args))
        return "16384\n1000\n200\n50\n3000\n"

    assert memory.macos_available(sysctl) == 16384 * 4250
    assert argv[0][:2] == ["sysctl", "-n"] and len(argv[0]) == 7
    assert memory.macos_available(lambda args: "16384\n1000\n") is None  # a name unknown


# ------------------------------------------------------------------ a MemoryError after it

NUMPY_WORDS = "Unable to allocate 1.1 GiB for an array with shape (6250, 3, 128, 128)"


def _memory_error_while_decoding(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: None)

    def out_of_memory(*args):
        raise MemoryError(NUMPY_WORDS)

    monkeypatch.setattr(dataset, "variable_value", out_of_memory)


def test_a_later_memory_error_is_one_line_naming_the_stage(world, capsys, monkeypatch):
    """Before: a MemoryError traceback (exit 1)."""
    _memory_error_while_decoding(monkeypatch)
    before = tree(world["root"])
    assert cli.main(run_argv(world, world["root"] / "out" / "influence.csv")) == 2
    err = one_line_error(capsys, r"out of memory while decoding the dataset CSVs \(Unable to")
    assert "a machine with more memory" in err
    assert tree(world["root"]) == before


def test_a_later_memory_error_in_the_console_is_one_line(world, monkeypatch, caplog):
    _memory_error_while_decoding(monkeypatch)
    monkeypatch.chdir(world["result"])
    assert load_plugin().main(["-t", world["train"], "-v", world["val"]]) == 2
    plugin_error(caplog, r"^out of memory while decoding the dataset CSVs")


def test_memory_error_line_without_words_or_stage():
    line = memory.memory_error_line(MemoryError())
    assert line.startswith("out of memory while running; ") and "\n" not in line
