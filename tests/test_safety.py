"""Data safety: the tool never removes or changes a file it did not write, refuses bad input
with one line before computing, stops cleanly on Ctrl-C / SIGTERM, and writes files with the
user's usual permissions.

Each case is one the tool once got wrong (issue 10). The data-loss cases compare every file
under the user's folders byte for byte (and mode) before and after. Everything runs on the
small 7x7 dataset and its logistic-regression result; refusals happen before computing, so
most cases take a fraction of a second.
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import h5py
import numpy as np
import pytest
from PIL import Image

from sgd_influence_plugin import cli, interrupts, output, ownership, validation
from sgd_influence_plugin.errors import OutputError
from sgd_influence_plugin.runner import RunRequest, run
from sgd_influence_plugin.settings import InfluenceSettings
from support.user_files import (
    CLI,
    argv_for,
    label_edit,
    load_plugin,
    one_line_error,
    plugin_error,
    run_argv,
    tree,
)

#: The tool's temporary caches go to the world's ``tmp`` folder, which must be left empty.
pytestmark = pytest.mark.usefixtures("private_tmpdir")

N_CLASSES = 10  # the logreg fixture's Affine layer has 10 outputs (conftest / netdef)


# ----------------------------------------------------------------------------------------
# Everything refused before computing, with one line, and nothing changed (items 1-6, 9-11)
# ----------------------------------------------------------------------------------------


def _nan_weight_h5(w):
    params = w["root"] / "nan.h5"
    shutil.copy(w["result"] / "parameters.h5", params)
    with h5py.File(params, "a") as f:
        d = f["Affine/affine/W"]
        a = d[...]
        a[3, 4] = np.nan
        d[...] = a
    return ["--model", None, "--config", str(w["result"] / "net.nntxt"), "--params", str(params)]


def _inf_weight_nnp(w):
    nnp = w["root"] / "inf.nnp"
    with zipfile.ZipFile(w["model"]) as src, zipfile.ZipFile(nnp, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith(".h5"):
                tmp = w["root"] / "p.h5"
                tmp.write_bytes(data)
                with h5py.File(tmp, "a") as f:
                    d = f["Affine/affine/b"]
                    a = d[...]
                    a[0] = np.inf
                    d[...] = a
                data = tmp.read_bytes()
                tmp.unlink()
            dst.writestr(name, data)
    return ["--model", str(nnp)]


def _string_h5(w):
    params = w["root"] / "str.h5"
    shutil.copy(w["result"] / "parameters.h5", params)
    with h5py.File(params, "a") as f:
        attrs = dict(f["Affine/affine/b"].attrs)
        del f["Affine/affine/b"]
        f.create_dataset("Affine/affine/b", data=np.array([b"abc"] * 10)).attrs.update(attrs)
    return ["--model", None, "--config", str(w["result"] / "net.nntxt"), "--params", str(params)]


def _truncated_png(w):
    png = w["data"] / "train" / "000002.png"
    data = png.read_bytes()
    png.write_bytes(data[: len(data) // 2])  # a copy cut short
    return []


def _rgb_png(w):
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(w["data"] / "train" / "000004.png")
    return []


def _images_named_like_our_thumbnails(w):
    # The user keeps the training images in data/influence_thumbnails/.
    os.replace(w["data"] / "train", w["data"] / "influence_thumbnails")
    text = open(w["train"]).read().replace("train/", "influence_thumbnails/")
    open(w["train"], "w").write(text)
    return ["--output", str(w["data"] / "influence.csv")]


def _user_file(name, content=b"mine\n"):
    def make(w):
        out = w["root"] / "out"
        out.mkdir()
        path = out / name
        if name.endswith("/"):
            path.mkdir()
            (path / "notes.txt").write_bytes(content)
        else:
            path.write_bytes(content)
        return ["--output", str(out / "influence.csv")]

    return make


def _user_cache(w):
    cache = w["root"] / "cache"
    cache.mkdir()
    (cache / "keep.txt").write_text("the user's")
    return ["--cache-dir", str(cache)]


REFUSED = {
    # item 1: --output naming a folder
    "output is the data folder": (lambda w: ["--output", str(w["data"])], r"names a folder"),
    "output ends with a separator": (
        lambda w: ["--output", str(w["data"]) + os.sep],
        r"names a folder",
    ),
    "output is .": (lambda w: ["--output", "."], r"--output \.: names a folder"),
    "output is empty": (lambda w: ["--output", ""], r"--output is empty"),
    # item 2: our thumbnails folder would be the user's images, or a folder of the user's
    "images in <stem>_thumbnails/": (_images_named_like_our_thumbnails, r"overlap .*images"),
    "user folder named <stem>_thumbnails": (
        _user_file("influence_thumbnails/"),
        r"influence_thumbnails: already exists and has no \.sgd_influence_thumbnails marker",
    ),
    "user file named like a companion": (
        _user_file("influence_summary.txt"),
        r"influence_summary\.txt: already exists and was not written by sgd-influence",
    ),
    "damaged ledger in the output folder": (
        _user_file(ownership.LEDGER, b"{oops"),
        r"cannot tell which files here sgd-influence wrote",
    ),
    "user CSV at the output path": (
        _user_file("influence.csv", b"x:image,y:label\n"),
        r"influence\.csv: already exists and was not written by sgd-influence.*another --output",
    ),
    # item 3: --output naming a training image, or placed among the images
    "output is a training image": (
        lambda w: ["--output", str(w["data"] / "train" / "000000.png")],
        r"must be a file name ending in \.csv \(an existing file, which is left alone\)",
    ),
    "output among the images": (
        lambda w: ["--output", str(w["data"] / "train" / "influence.csv")],
        r"lies in .*train, a folder of the dataset's images",
    ),
    "output is the training CSV": (
        lambda w: ["--output", w["train"]],
        r"refusing to overwrite the input",
    ),
    # item 4: the cache folder
    "cache dir holds the parameters": (
        lambda w: [
            "--model",
            None,
            "--config",
            str(w["result"] / "net.nntxt"),
            "--params",
            str(w["result"] / "parameters.h5"),
            "--cache-dir",
            str(w["result"]),
        ],
        r"the cache folder would hold the input .*(net\.nntxt|parameters\.h5)",
    ),
    "cache dir is the data folder": (
        lambda w: ["--cache-dir", str(w["data"])],
        r"the cache folder would hold the input .*train\.csv",
    ),
    "cache dir is an image folder": (
        lambda w: ["--cache-dir", str(w["data"] / "val")],
        r"would overlap .*val, a folder of the dataset's images",
    ),
    "cache dir is a file": (lambda w: ["--cache-dir", w["train"]], r"--cache-dir .*: is a file"),
    "cache dir holds the user's files": (_user_cache, r"is not empty and is not a cache folder"),
    # item 5: labels (the network has 10 classes)
    "label 12": (
        label_edit("12"),
        rf"row 4, column 'y:label': label 12 is out of range .*{N_CLASSES} cl",
    ),
    "label 1e9": (label_edit("1e9"), r"row 4, .*label 1e9 is out of range .*\(0\.\.9\)"),
    "label -1": (label_edit("-1"), r"row 4, .*label -1 is out of range"),
    "label 2.5": (label_edit("2.5"), r"row 4, .*label '2\.5' is not a whole number"),
    "label nan": (label_edit("nan"), r"row 4, .*'nan' is not a finite number"),
    "label inf": (label_edit("inf"), r"row 4, .*'inf' is not a finite number"),
    "label 1_0": (label_edit("1_0"), r"row 4, .*'1_0' is neither a number nor a file path"),
    "validation label 10": (
        label_edit("10", "val", 0),
        r"val\.csv row 1, .*label 10 is out of range",
    ),
    # item 6: weights and weight decay
    "NaN weight in the h5": (_nan_weight_h5, r"'Affine/affine/W' holds 1 NaN or infinite"),
    "inf weight in the nnp": (_inf_weight_nnp, r"'Affine/affine/b' holds 1 NaN or infinite"),
    "weight decay inf": (lambda w: ["--weight-decay", "inf"], r"--weight-decay inf: .*finite"),
    "lr nan": (
        lambda w: ["--lr", "nan"],
        r"learning rate nan: must be a positive number, auto or solver",
    ),
    # items 9-10: options checked late, or with a traceback
    "thumb size 0": (lambda w: ["--thumb-size", "0"], r"--thumb-size 0: .*16 to 512"),
    "thumb size 100000": (lambda w: ["--thumb-size", "100000"], r"--thumb-size 100000"),
    "seed -1": (lambda w: ["--seed", "-1"], r"--seed -1: give a whole number in 0\.\.42949672\d\d"),
    "seed 2**67": (
        lambda w: ["--seed", "99999999999999999999"],
        r"--seed 99999999999999999999: give a whole number",
    ),
    "last trial's seed too large": (
        lambda w: ["--seed", str(2**32 - 1), "--trials", "2"],
        r"in 0\.\.4294967294 \(the 2 trials",
    ),
    "h5 holding strings": (_string_h5, r"str\.h5: 'Affine/affine/b' holds \|S3 data, not number"),
    "output under a file": (
        lambda w: ["--output", os.path.join(w["train"], "influence.csv")],
        r"because .*train\.csv is a file, not a folder",
    ),
    # item 11: misleading messages
    "config without params": (
        lambda w: ["--model", None, "--config", str(w["result"] / "net.nntxt")],
        r"net\.nntxt: holds no parameters .*--params",
    ),
    "model with config": (
        lambda w: ["--config", str(w["result"] / "net.nntxt")],
        r"both --model and --config given",
    ),
    "truncated PNG": (_truncated_png, r"row 3, .*'train/000002\.png' .*truncated"),
    "RGB image for a grayscale network": (
        _rgb_png,
        r"row 5: 'train/000004\.png' has 3 channel\(s\), color \(RGB\), but .* takes 1 ",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_one_line_before_computing_and_nothing_changes(world, case, capsys):
    edit, pattern = REFUSED[case]
    argv = argv_for(world, edit)
    before = tree(world["root"])
    assert cli.main(argv) == 2
    one_line_error(capsys, pattern)
    assert tree(world["root"]) == before  # byte for byte, modes included; nothing new


def test_plugin_output_dot_in_the_result_folder_keeps_the_result(world, monkeypatch, caplog):
    monkeypatch.chdir(world["result"])
    before = tree(world["root"])
    assert load_plugin().main(["-o", "."]) == 2
    plugin_error(caplog, r"^--output \.: names a folder")
    assert tree(world["root"]) == before


def test_plugin_remove_ratio_that_empties_the_set_is_refused_before_computing(
    world, monkeypatch, caplog
):
    ten = world["data"] / "ten.csv"
    lines = open(world["train"]).read().splitlines()
    ten.write_text("\n".join(lines[:11]) + "\n")
    monkeypatch.chdir(world["result"])
    before = tree(world["root"])
    plugin = load_plugin()
    assert plugin.main(["-t", str(ten), "-v", world["val"], "-r", "0.96"]) == 2
    said = plugin_error(caplog, r"^--remove_ratio 0\.96: would remove 10 of the 10 rows")
    assert not any("--remove " in m or m.startswith("train:") for m in said)  # no training
    assert tree(world["root"]) == before


def test_unwritable_output_place_is_refused_before_computing(world, capsys):
    try:  # /sys takes no new files, not even from root
        open("/sys/sgd_influence_probe_test", "w").close()
        os.unlink("/sys/sgd_influence_probe_test")
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    assert cli.main(run_argv(world, "/sys/influence.csv")) == 2
    one_line_error(capsys, r"/sys/influence\.csv: cannot write in /sys")


def test_full_disk_is_refused_before_computing(world, capsys, monkeypatch):
    real = shutil.disk_usage

    def nearly_full(path):
        u = real(path)
        return type(u)(u.total, u.total - 1000, 1000)

    monkeypatch.setattr(validation.shutil, "disk_usage", nearly_full)
    before = tree(world["root"])
    assert cli.main(run_argv(world, world["root"] / "out" / "influence.csv")) == 2
    one_line_error(capsys, r"MB are needed but only 0\.0 MB are free")
    assert tree(world["root"]) == before


def test_disk_full_while_writing_leaves_nothing(world, capsys, monkeypatch):
    from sgd_influence_plugin import report

    def fills_up(path, *args, **kwargs):
        with open(path, "w") as f:
            f.write("<html>half a page")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(report, "write_report", fills_up)
    before = tree(world["root"])
    out = world["root"] / "new" / "deep" / "influence.csv"
    assert cli.main(run_argv(world, out, "--report")) == 2
    one_line_error(capsys, r"cannot write \(No space left on device\); nothing was written")
    assert tree(world["root"]) == before  # no staging, no folders made for it, no cache


def test_lr_that_diverges_writes_nothing(world, capsys):
    before = tree(world["root"])
    # Without weight decay: lr 1e6 with the solver's 0.01 is refused before computing
    # (every step would flip the weights; test_one_line_messages.py, "weight decay ...").
    out = world["root"] / "out" / "influence.csv"
    assert cli.main(run_argv(world, out, "--lr", "1e6", "--weight-decay", "0")) == 2
    err = one_line_error(
        capsys, r"unstable at lr=62500 \(the training phase diverged .* nothing was written"
    )
    # The loss it names at the trained parameters is the one the network gives, unchanged.
    from sgd_influence_plugin.core import mean_loss
    from sgd_influence_plugin.dataset import load_dataset
    from sgd_influence_plugin.nnabla_adapter import load_model

    model = load_model(world["model"])
    val = load_dataset(world["val"], model.info.input_shapes)
    loss0 = mean_loss(model, val.arrays)
    assert f"(validation loss {loss0:.4g} -> " in err
    assert tree(world["root"]) == before


# ----------------------------------------------------------------------------------------
# A real run's outputs: ownership, modes, cleanse (items 2, 7, 11, 12)
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data7, results):
    """One plugin-style run (report and cleansed CSV) under umask 027, into ``out/``."""
    root = tmp_path_factory.mktemp("finished")
    out = root / "out" / "influence.csv"
    old = os.umask(0o027)
    try:
        paths, result = run(
            RunRequest(
                output=str(out),
                model=os.path.join(results("logreg"), "results.nnp"),
                train=data7["train"],
                val=data7["val"],
                report=True,
                remove_ratio=0.1,
            )
        )
    finally:
        os.umask(old)
    return {"root": root, "out": out, "paths": paths, "scores": result.scores}


def test_outputs_are_named_after_the_csv_and_get_the_usual_modes(finished, data7):
    folder = finished["out"].parent
    assert sorted(os.listdir(folder)) == [
        ownership.LEDGER,
        "influence.csv",
        "influence_cleansed.csv",
        "influence_report.html",
        "influence_settings.yaml",
        "influence_summary.txt",
        "influence_trials.csv",
    ]  # no thumbnails folder: the 7x7 images fit the box and are shown as they are
    # umask 027 was in force: files 0640, folders 0750, like anything the user creates.
    assert os.stat(folder).st_mode & 0o777 == 0o750
    for path in folder.iterdir():
        assert os.stat(path).st_mode & 0o777 == 0o640, path
    # The cleansed CSV drops round(0.1 * 50) = 5 rows: the five lowest scores.
    scores = finished["scores"]
    worst = set(np.argsort(scores, kind="stable")[:5].tolist())
    with open(data7["train"]) as f:
        train_rows = f.read().splitlines()[1:]
    kept = open(folder / "influence_cleansed.csv").read().splitlines()[1:]
    assert len(kept) == 45
    kept_images = {os.path.normpath(os.path.join(folder, r.split(",")[0])) for r in kept}
    for j, row in enumerate(train_rows):
        full = os.path.normpath(os.path.join(data7["folder"], row.split(",")[0]))
        assert (full in kept_images) == (j not in worst)


def _copy_finished(finished, tmp_path):
    dst = tmp_path / "out"
    shutil.copytree(finished["out"].parent, dst)
    return dst


def test_only_files_the_tool_wrote_and_nobody_changed_are_replaced(finished, tmp_path):
    out = _copy_finished(finished, tmp_path)
    csv_path = str(out / "influence.csv")
    for kind in ("settings", "summary", "report", "cleansed"):
        ownership.check_replaceable(output.companion_path(csv_path, kind))  # ours: no error
    ownership.check_replaceable(csv_path)
    # Edited by the user: no longer ours.
    with open(out / "influence_summary.txt", "a") as f:
        f.write("my notes\n")
    with pytest.raises(OutputError, match=r"influence_summary\.txt: already exists and was not"):
        ownership.check_replaceable(str(out / "influence_summary.txt"))
    # A damaged ledger: nothing here can be told to be ours.
    (out / ownership.LEDGER).write_text("{not json")
    with pytest.raises(OutputError, match="cannot tell which files here sgd-influence wrote"):
        ownership.check_replaceable(csv_path)


def test_images_in_a_thumbnails_folder_survive_a_run_beside_them(world):
    # The user keeps training images in data/thumbnails/ and writes the output into data/.
    os.replace(world["data"] / "train", world["data"] / "thumbnails")
    text = open(world["train"]).read().replace("train/", "thumbnails/")
    open(world["train"], "w").write(text)
    before = tree(world["data"] / "thumbnails")
    assert cli.main(run_argv(world, world["data"] / "influence.csv", "--report")) == 0
    assert tree(world["data"] / "thumbnails") == before
    # The images fit the box: the CSV shows the user's own files, nothing is copied.
    with open(world["data"] / "influence.csv", newline="") as f:
        shown = {r["x:image"] for r in csv.DictReader(f)}
    assert shown and all(s.startswith("thumbnails/") for s in shown)
    assert not (world["data"] / "influence_thumbnails").exists()
    assert (world["data"] / "influence_report.html").is_file()
    # A second run replaces its own output (the ledger and the marker say it is ours) and
    # removes the report it no longer writes, so no stale view is left beside the new CSV.
    first = (world["data"] / "influence.csv").read_bytes()
    assert cli.main(run_argv(world, world["data"] / "influence.csv")) == 0
    assert (world["data"] / "influence.csv").read_bytes() == first
    assert not (world["data"] / "influence_report.html").exists()
    assert tree(world["data"] / "thumbnails") == before


def _cleanse(finished, train, out, *extra):
    return [
        "cleanse",
        "--influence",
        str(finished["out"]),
        "--train",
        str(train),
        "--output",
        str(out),
        *(extra or ("--remove", "3")),
    ]


def test_cleanse_refuses_what_does_not_belong_and_writes_nothing(finished, data7, tmp_path, capsys):
    train = data7["train"]  # read only
    text = open(train).read()
    infl = open(finished["out"]).read().splitlines()

    def edited_influence(name, row, col, value):
        path = tmp_path / name
        lines = [line.split(",") for line in infl]
        lines[row + 1][col] = value
        path.write_text("\n".join(",".join(c) for c in lines) + "\n")
        return path

    index_col = infl[0].split(",").index("datasource_index")
    first_index = int(infl[1].split(",")[index_col])
    other_label = str((int(infl[1].split(",")[1]) + 1) % N_CLASSES)
    changed_labels = tmp_path / "relabelled.csv"
    rows = text.splitlines()
    cells = rows[first_index + 1].split(",")
    rows[first_index + 1] = f"{cells[0]},{other_label}"
    changed_labels.write_text("\n".join(rows) + "\n")
    user_csv = tmp_path / "mine.csv"
    user_csv.write_text("a,b\n1,2\n")
    cases = [
        # item 7: labels differ from the training CSV's
        (
            _cleanse(finished, changed_labels, tmp_path / "c.csv"),
            rf"row 1: label '{infl[1].split(',')[1]}' of datasource_index {first_index} differs "
            rf"from .*relabelled\.csv row {first_index + 1} \('{other_label}'\)",
        ),
        # NaN influence
        (
            ["cleanse", "--influence", str(edited_influence("nan.csv", 2, 2, "nan"))]
            + ["--train", str(train), "--remove", "3", "--output", str(tmp_path / "c.csv")],
            r"nan\.csv row 3: influence 'nan' is not a finite number",
        ),
        # item 11: an index out of range is named as such
        (
            ["cleanse", "--influence", str(edited_influence("index.csv", 4, index_col, "50"))]
            + ["--train", str(train), "--remove", "3", "--output", str(tmp_path / "c.csv")],
            r"index\.csv row 5: datasource_index 50 is not a row of .*\(it has rows 0\.\.49\)",
        ),
        (
            _cleanse(finished, train, tmp_path / "c.csv", "--remove-ratio", "0.9999"),
            r"--remove-ratio 0\.9999: would remove 50 of the 50 rows",
        ),
        # item 10: --output naming a folder
        (_cleanse(finished, train, tmp_path), r"--output .*: names a folder"),
        (_cleanse(finished, train, user_csv), r"mine\.csv: already exists and was not written"),
        (_cleanse(finished, train, finished["out"]), r"refusing to overwrite the input"),
    ]
    for argv, pattern in cases:
        before = tree(tmp_path)
        assert cli.main(argv) == 2, argv
        one_line_error(capsys, pattern)
        assert tree(tmp_path) == before
    # A cleansed CSV it wrote itself is replaced on the next call; once edited, it is not.
    assert cli.main(_cleanse(finished, train, tmp_path / "c.csv")) == 0
    assert cli.main(_cleanse(finished, train, tmp_path / "c.csv", "--remove", "4")) == 0
    assert len(open(tmp_path / "c.csv").read().splitlines()) == 1 + 50 - 4
    with open(tmp_path / "c.csv", "a") as f:
        f.write("extra.png,1\n")
    assert cli.main(_cleanse(finished, train, tmp_path / "c.csv")) == 2
    capsys.readouterr()


def test_install_plugin_refuses_a_file_an_unwritable_place_and_a_foreign_package(tmp_path, capsys):
    afile = tmp_path / "plugins.txt"
    afile.write_text("x")
    assert cli.main(["install-plugin", str(afile)]) == 2
    one_line_error(capsys, r"plugins\.txt: is a file, not a folder")
    if os.path.isdir("/sys"):
        assert cli.main(["install-plugin", "/sys"]) == 2
        one_line_error(capsys, r"cannot install there")
    # A mistyped path is no new plugins folder: refused, nothing made.
    before = tree(tmp_path)
    assert cli.main(["install-plugin", str(tmp_path / "nnc" / "libs" / "plugnis")]) == 2
    one_line_error(capsys, r"plugnis: no such folder; give the console's plugins folder")
    assert tree(tmp_path) == before
    foreign = tmp_path / "nnc" / "_Post_Process" / "_XAI" / "_Image" / "sgd_influence_plugin"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("the user's")
    before = tree(tmp_path)
    assert cli.main(["install-plugin", str(tmp_path / "nnc")]) == 2
    one_line_error(capsys, r"sgd_influence_plugin: already exists and was not installed by")
    assert tree(tmp_path) == before
    (tmp_path / "fresh").mkdir()
    old = os.umask(0o022)
    try:
        assert cli.main(["install-plugin", str(tmp_path / "fresh")]) == 0
    finally:
        os.umask(old)
    script = tmp_path / "fresh" / "_Post_Process" / "_XAI" / "_Image" / "SGD_Influence_Cleansing.py"
    assert os.stat(script).st_mode & 0o777 == 0o644
    assert os.stat(script.parent / "sgd_influence_plugin").st_mode & 0o777 == 0o755


# ----------------------------------------------------------------------------------------
# Interrupts (item 8)
# ----------------------------------------------------------------------------------------


#: Run in a fresh interpreter: how a signal reaches Python code inside nnabla's C++ depends
#: on the process's threads and handlers, which earlier tests in the same process may change.
_SIGNAL_IN_CALLBACK = r"""
import os, signal, sys, time
import numpy as np
import nnabla as nn
import nnabla.functions as F
from sgd_influence_plugin import cli, interrupts

# Python's own handler, as in a terminal (a parent that ignores SIGINT passes that on).
signal.signal(signal.SIGINT, signal.default_int_handler)
x = nn.Variable.from_numpy_array(np.ones((2, 3), np.float32))
y = F.sin(F.exp(x))
sent = []

def hook(f):
    if not sent:
        sent.append(f)
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 10  # Python bytecodes: the handler runs in here
        while time.monotonic() < deadline and not interrupts.requested():
            pass

try:
    y.forward(function_pre_hook=hook)
    print("no error")
except BaseException as error:  # noqa
    print("interrupt" if interrupts.is_interrupt(error) else "other: %r" % error)
    def raises():
        raise error
    print("status", cli.report_errors(raises, lambda m: print("said", m)))
sent.clear()
handler = signal.getsignal(signal.SIGINT)
with interrupts.stop_requests():
    y.forward(function_pre_hook=hook)
    print("inside", bool(sent), interrupts.requested())
    try:
        interrupts.check()
    except KeyboardInterrupt:
        print("check stops")
print("put back", signal.getsignal(signal.SIGINT) is handler)
"""


def test_a_signal_inside_nnabla_callbacks_is_handled():
    """A signal that arrives while nnabla's C++ code runs a Python callback: Python's default
    handler raises there and nnabla turns it into a SystemError (the traceback users saw).
    Inside stop_requests the handler only records it, and check() stops at the next step.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNAL_IN_CALLBACK], capture_output=True, text=True, timeout=120
    )
    lines = [line for line in proc.stdout.splitlines() if line]
    assert lines == [
        "interrupt",
        f"said {interrupts.MESSAGE}",
        "status 130",
        "inside True True",
        "check stops",
        "put back True",
    ], proc.stdout + proc.stderr[-2000:]


def test_stop_request_during_a_run_leaves_nothing(world):
    out = world["root"] / "out" / "influence.csv"
    before = tree(world["root"])
    steps = []

    def progress(stage, done, total):
        if stage.startswith("reading"):
            return
        steps.append(stage)
        if len(steps) == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    request = RunRequest(
        output=str(out),
        model=world["model"],
        train=world["train"],
        val=world["val"],
        settings=InfluenceSettings(epochs=5, trials=1),
    )
    with interrupts.stop_requests(), pytest.raises(KeyboardInterrupt):
        run(request, progress=progress)
    assert steps == ["train", "train"]  # stopped at the very next step
    assert tree(world["root"]) == before


def test_cli_ctrl_c_while_computing_exits_130_with_one_line(world):
    # (SIGTERM: tests/test_plugin_cli.py)
    out = world["root"] / "out" / "influence.csv"
    env = dict(os.environ, TMPDIR=str(world["tmp"]))
    proc = subprocess.Popen(
        [CLI] + run_argv(world, out, "--epochs", "5000", "--cache", "all"),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not any(p.name.startswith("sgd_influence_cache_") for p in world["tmp"].iterdir()):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.02)
    time.sleep(0.3)  # inside the training phase: nnabla is running
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip() == "sgd-influence: " + interrupts.MESSAGE
    assert list(world["tmp"].iterdir()) == []
    assert not (world["root"] / "out").exists()


def test_stop_request_while_trials_run_in_workers_leaves_nothing(world):
    """Three trials in two forked workers: SIGTERM to the parent ends every worker, and no
    output, cache or worker process is left."""
    import multiprocessing

    out = world["root"] / "out" / "influence.csv"
    before = tree(world["root"])
    seen = []

    def progress(stage, done, total):
        if "trial" in stage:
            seen.append(stage)
            if len(seen) == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    request = RunRequest(
        output=str(out),
        model=world["model"],
        train=world["train"],
        val=world["val"],
        settings=InfluenceSettings(epochs=5, trials=3, jobs=2),
    )
    with interrupts.stop_requests(), pytest.raises(KeyboardInterrupt):
        run(request, progress=progress)
    assert multiprocessing.active_children() == []
    assert tree(world["root"]) == before
