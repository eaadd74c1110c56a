"""The one output-set writer (issue 33 item 4): a set's members are written all together or
not at all, and a failure while writing any one of them leaves the previous set as it was.

The run's cases fail for real: a training image that became unreadable after it was read
(its thumbnail, the set's first member, fails), and a file-size limit (``ulimit -f``) that
only the report passes (the sixth member, after the influence CSV, trials, settings and
summary were written).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from sgd_influence_plugin import output, ownership
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.errors import DatasetError, OutputError
from sgd_influence_plugin.output_set import MAIN, OutputSet, write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree(root) -> dict:
    """Every file under ``root`` (hidden ones too) -> its bytes."""
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            p = os.path.join(folder, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def _plan(folder) -> OutputSet:
    main = os.path.join(str(folder), "a.csv")
    companions = {k: output.companion_path(main, k) for k in ("settings", "summary")}
    return OutputSet(main, "run", companions=companions)


def _writers(text: str, failing=None, error=None):
    """A writer per member that writes ``text``; ``failing`` writes half of it, then raises."""

    def writer(kind):
        def w(path):
            with open(path, "w") as f:
                f.write(f"{kind}: {text}\n" if kind != failing else "half")
            if kind == failing:
                raise error

        return w

    return {kind: writer(kind) for kind in ("settings", "summary", MAIN)}


def test_every_member_is_put_in_place_under_its_set(tmp_path):
    plan = _plan(tmp_path / "new" / "deep")
    write(plan, _writers("one"))
    assert sorted(os.listdir(plan.folder)) == [
        ownership.LEDGER,
        "a.csv",
        "a_settings.yaml",
        "a_summary.txt",
    ]  # no staging folder left behind
    for kind in plan.kinds:
        assert open(plan.path(kind)).read() == f"{kind}: one\n"
        assert ownership.output_set(plan.path(kind)) == "run a.csv"
        assert ownership.written_by_tool(plan.path(kind))


@pytest.mark.parametrize("failing", ["settings", "summary", MAIN])
def test_a_member_that_cannot_be_written_leaves_the_previous_set(tmp_path, failing):
    plan = _plan(tmp_path)
    write(plan, _writers("old"))
    before = _tree(tmp_path)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "staged")
    with pytest.raises(OutputError, match=r"cannot write \(No space left on device\); nothing"):
        write(plan, _writers("new", failing, full))
    assert _tree(tmp_path) == before  # ledger included; no staging folder


def test_an_error_of_a_writer_is_passed_on_and_changes_nothing(tmp_path):
    plan = _plan(tmp_path)
    write(plan, _writers("old"))
    before = _tree(tmp_path)
    with pytest.raises(DatasetError, match="unreadable"):
        write(plan, _writers("new", "summary", DatasetError("x.png: unreadable")))
    assert _tree(tmp_path) == before


def test_writers_must_cover_the_set_exactly(tmp_path):
    plan = _plan(tmp_path / "out")
    writers = _writers("one")
    del writers["summary"]
    with pytest.raises(ValueError, match="writers for"):
        write(plan, writers)
    writers = {**_writers("one"), "summary": lambda path: None}  # writes nothing
    with pytest.raises(ValueError, match=r"left out \['summary'\]"):
        write(plan, writers)
    assert not (tmp_path / "out").exists()


def test_a_user_file_in_the_set_is_refused_before_any_member_is_written(tmp_path):
    plan = _plan(tmp_path)
    (tmp_path / "a_summary.txt").write_text("mine\n")
    calls = []
    writers = {k: (lambda path, k=k: calls.append(k)) for k in plan.kinds}
    with pytest.raises(OutputError, match=r"a_summary\.txt: already exists and was not written"):
        write(plan, writers)
    assert calls == [] and _tree(tmp_path) == {"a_summary.txt": b"mine\n"}


# ---- a run's set, failing for real ----------------------------------------------------------


@pytest.fixture
def own_data(data28, tmp_path):
    """A private copy of the 28x28 images (a test may damage one) and the training set."""
    folder = tmp_path / "data"
    shutil.copytree(data28["folder"], folder)
    train_csv = str(folder / os.path.basename(data28["train"]))
    return train_csv, load_dataset(train_csv, {"x": (1, 28, 28), "y": (1,)})


def _content(train, seed):
    scores = np.random.RandomState(seed).randn(train.size) * 1e-3
    trials = np.stack([scores, scores * 2])
    return output.RunContent(scores, train, ["x", "y"], {"seed": seed}, trial_scores=trials)


def test_an_image_unreadable_at_thumbnail_time_leaves_the_previous_run(own_data, tmp_path):
    train_csv, train = own_data
    out = tmp_path / "out" / "influence.csv"
    output.write_influence_output(str(out), _content(train, 0), report=True, thumb_size=16)
    before = _tree(out.parent)
    assert "influence_thumbnails/000100.png" in before
    image = os.path.join(train.folder, train.cell(100, "x:image"))
    with open(image, "wb") as f:  # damaged after it was read
        f.write(b"not a png")
    with pytest.raises(DatasetError, match=re.escape(image) + ": cannot read this image"):
        output.write_influence_output(str(out), _content(train, 1), report=True, thumb_size=16)
    assert _tree(out.parent) == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ulimit -f (Linux)")
def test_a_report_past_the_file_size_limit_leaves_the_previous_run(own_data, tmp_path):
    train_csv, train = own_data
    out = tmp_path / "out" / "influence.csv"
    output.write_influence_output(str(out), _content(train, 0), report=True, thumb_size=16)
    before = _tree(out.parent)
    sizes = {name: len(data) for name, data in before.items()}
    others = max(n for name, n in sizes.items() if name != "influence_report.html")
    assert sizes["influence_report.html"] > 1.5 * others  # only the report passes the limit
    limit = (sizes["influence_report.html"] + others) // 2
    code = (  # the second run of _content(train, 1), under the limit
        "import resource, sys\n"
        "import numpy as np\n"
        "from sgd_influence_plugin import output\n"
        "from sgd_influence_plugin.dataset import load_dataset\n"
        "from sgd_influence_plugin.errors import OutputError\n"
        "train = load_dataset(sys.argv[1], {'x': (1, 28, 28), 'y': (1,)})\n"
        "scores = np.random.RandomState(1).randn(train.size) * 1e-3\n"
        "content = output.RunContent(scores, train, ['x', 'y'], {'seed': 1},\n"
        "                            trial_scores=np.stack([scores, scores * 2]))\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))\n"
        "try:\n"
        "    output.write_influence_output(sys.argv[2], content, True, 16)\n"
        "except OutputError as e:\n"
        "    print(e)\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, train_csv, str(out), str(limit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(
        r"cannot write \(File too large\); nothing was written.*ulimit -f", proc.stdout
    )
    assert _tree(out.parent) == before
