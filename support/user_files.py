"""A user's folders for the safety tests: every file under them compared before and after
(bytes and mode), the command lines a case edits, the one-line refusal a case expects, and
the console's entry script loaded as the console loads it.

A "world" (the ``world`` fixture of ``tests/conftest.py``) is a dict: ``root`` (the folder
holding everything), ``data`` (a private copy of the dataset folder), ``train`` / ``val``
(its CSVs), ``result`` (a private copy of a training result), ``model`` (its results.nnp) and
``tmp`` (the tool's temporary folder, which must be left empty).
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import sys

from support.results import IMAGE_SCRIPT

#: The ``sgd-influence`` command of the environment the tests run in.
CLI = os.path.join(os.path.dirname(sys.executable), "sgd-influence")


def tree(root) -> dict:
    """Every folder and file under ``root``: relative path -> 'dir' or (bytes, mode)."""
    out = {}
    for folder, _, files in os.walk(root):
        out[os.path.relpath(folder, root)] = "dir"
        for f in files:
            p = os.path.join(folder, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = (fh.read(), os.stat(p).st_mode)
    return out


def run_argv(w, out, *extra):
    """``sgd-influence run`` on the world ``w`` into ``out``, quiet, with ``extra`` options."""
    return [
        "run",
        "--model",
        w["model"],
        "--train",
        w["train"],
        "--val",
        w["val"],
        "--output",
        str(out),
        "--quiet",
        *extra,
    ]


def argv_for(w, edit):
    """The run argv with the case's changes (``edit(w)`` returns option, value pairs):
    ('--flag', None) removes a flag and its value, another value replaces or adds it.
    """
    argv = run_argv(w, w["root"] / "out" / "influence.csv")
    extra = edit(w)
    i = 0
    while i < len(extra):
        flag, value = extra[i], extra[i + 1]
        if flag in argv:
            k = argv.index(flag)
            del argv[k : k + 2]
        if value is not None:
            argv += [flag, value]
        i += 2
    return argv


def one_line_error(capsys_or_capfd, pattern: str) -> str:
    """The captured standard error is one line, no traceback, matching ``pattern``."""
    err = capsys_or_capfd.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert err.count("\n") == 0, err
    assert re.search(pattern, err), err
    return err


def plugin_error(caplog, pattern: str) -> list:
    """The plugin reports through nnabla's logger: exactly one CRITICAL line, matching."""
    critical = [r.getMessage() for r in caplog.records if r.levelname == "CRITICAL"]
    assert len(critical) == 1 and "\n" not in critical[0], critical
    assert re.search(pattern, critical[0]), critical
    return [r.getMessage() for r in caplog.records]


def rewrite_cell(csv_path, row, col, value):
    """Set data row ``row`` (0-based), column ``col`` of a CSV to ``value``."""
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    rows[row + 1][col] = value
    with open(csv_path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def label_edit(value, which="train", row=3):
    """An edit for :func:`argv_for`: the label of data row ``row`` of the world's ``which``
    CSV set to ``value``; the command line stays as it is.
    """

    def edit(w):
        rewrite_cell(w[which], row, 1, value)
        return []

    return edit


def load_plugin():
    """The console's image entry script (SGD_Influence_Cleansing.py) as a module."""
    spec = importlib.util.spec_from_file_location("sgd_influence_console_safety", IMAGE_SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
