"""Progress reporting: lines every 10% when the output is not a terminal, bars when it is, and
the CLI's reading stage."""

import io
import os
import subprocess
import sys

from sgd_influence_plugin.progress import LogProgress, TqdmProgress

CLI = os.path.join(os.path.dirname(sys.executable), "sgd-influence")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_progress_writes_a_line_per_tenth_and_restarts_with_the_stage():
    lines = []
    p = LogProgress(lines.append)
    for t in range(1, 95):
        p("replay", t, 94)
    # 10 lines: the first step at or past each tenth (10% of 94 is 9.4 steps, so step 10, ...)
    assert len(lines) == 10
    assert lines[0] == "replay: 10/94 (10%)" and lines[-1] == "replay: 94/94 (100%)"
    assert lines[4] == "replay: 47/94 (50%)"
    lines.clear()
    for t in range(1, 95):  # the next trial's replay: counted again
        p("replay", t, 94)
    assert len(lines) == 10
    lines.clear()
    for done in range(500, 6001, 500):  # how the CSV reader reports: every 500 rows
        p("reading training CSV", done, 6000)
    # shares done: 500 -> 0, 1000 -> 1, ..., 3000 and 3500 -> 5, ..., 6000 -> 10
    done = [int(line.split(": ")[1].split("/")[0]) for line in lines]
    assert done == [1000, 1500, 2000, 2500, 3000, 4000, 4500, 5000, 5500, 6000]
    assert len(lines) == 10 and lines[-1].startswith("reading training CSV: 6000/6000")
    lines.clear()
    LogProgress(lines.append, every=0.25)("a", 3, 3)  # a stage done in one call: one line
    assert lines == ["a: 3/3 (100%)"]


def test_bar_on_a_terminal_lines_elsewhere():
    pipe = io.StringIO()
    p = TqdmProgress(stream=pipe)
    for t in range(1, 1901):
        p("train", t, 1900)
    text = pipe.getvalue()
    assert "\r" not in text and text.splitlines() == ["train: 1900/1900 (100%)"]

    term = _Terminal()
    p = TqdmProgress(stream=term)
    for t in range(1, 11):
        p("train", t, 10)
    assert "\r" in term.getvalue() and "train" in term.getvalue()

    # A terminal that reports no width (os.get_terminal_size fails): lines, not a bar.
    r, w = os.pipe()
    with os.fdopen(w, "w") as no_width:
        no_width.isatty = lambda: True
        p = TqdmProgress(stream=no_width)
        for t in range(1, 11):
            p("replay", t, 10)
    with os.fdopen(r) as f:
        assert f.read() == "replay: 10/10 (100%)\n"

    quiet = io.StringIO()
    p = TqdmProgress(enabled=False, stream=quiet)
    p("train", 1, 1)
    assert quiet.getvalue() == ""


def test_cli_to_a_file_shows_reading_and_every_stage_as_lines(results, data28, tmp_path):
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.run(
            [
                CLI,
                "run",
                "--model",
                os.path.join(results("mlp"), "results.nnp"),
                "--train",
                data28["train"],
                "--val",
                data28["val"],
                "--output",
                str(tmp_path / "out" / "influence.csv"),
                "--trials",
                "1",
                "--thumb-size",
                "16",  # 28x28 images: reduced thumbnails are written (and shown as a stage)
            ],
            stderr=err,
            stdout=subprocess.DEVNULL,
        )
    text = log.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "\r" not in text
    lines = text.splitlines()
    for stage in (
        "reading training CSV",
        "reading validation CSV",
        "train",
        "replay",
        "thumbnails",
    ):
        mine = [line for line in lines if line.startswith(stage + ": ")]
        assert 1 <= len(mine) <= 10 and mine[-1].endswith(" (100%)"), text
    assert "train: 8/8 (100%)" in lines and "replay: 8/8 (100%)" in lines
    assert "thumbnails: 256/256 (100%)" in lines
    # Every stage is timed in the settings file, reading and writing included.
    import yaml

    timings = yaml.safe_load(open(tmp_path / "out" / "influence_settings.yaml"))["timings_seconds"]
    for key in ("reading", "losses", "curvature", "training", "replay", "thumbnails", "write_csvs"):
        assert isinstance(timings[key], float) and timings[key] >= 0, key
