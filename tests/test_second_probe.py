"""The second hostile probe (issue 18): no file of the user's or the console's is ever
replaced, and no wrong result exits 0.

Each test names the case of the issue it covers. The data-loss cases compare every file under
the user's folders byte for byte (and mode) before and after, as ``test_safety.py`` does;
refusals happen before computing, so most cases take a fraction of a second. Everything uses
the real nnabla and the small real fixtures of ``conftest.py``.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import shutil
import subprocess
import time

import pytest
import test_safety as first

from sgd_influence_plugin import cli, interrupts, ownership, parallel, places

# Fixtures and helpers shared with the first probe (tests/test_safety.py).
world = first.world
_private_tmpdir = first._private_tmpdir
_tree = first._tree
_run_argv = first._run_argv
_one_line_error = first._one_line_error


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------
# Case 3: the output set is committed all or nothing
# ----------------------------------------------------------------------------------------


def _chattr(flag, path) -> bool:
    try:
        proc = subprocess.run(["chattr", flag, str(path)], capture_output=True)
    except OSError:
        return False
    return proc.returncode == 0


@pytest.mark.parametrize("how", ["immutable", "cannot move aside", "cannot move in", "companion"])
def test_case3_an_output_that_cannot_be_replaced_changes_nothing(world, capsys, monkeypatch, how):
    """The CSV cannot be replaced at commit time (a file open in Excel on Windows; here an
    immutable file, or os.replace failing for it, or for a companion): exit 2, and neither the
    CSV nor any companion changes."""
    out = world["root"] / "out" / "influence.csv"
    assert cli.main(_run_argv(world, out)) == 0
    capsys.readouterr()
    failing = str(out if how != "companion" else out.parent / "influence_summary.txt")
    if how == "immutable":
        if not _chattr("+i", out):
            pytest.skip("chattr +i is not available here")
    else:
        real = os.replace

        def replace(src, dst, *args, **kwargs):
            src, dst = str(src), str(dst)
            blocked = {
                "cannot move aside": src == failing,
                "cannot move in": dst == failing and ".sgd_influence_staging_" in src,
                "companion": dst == failing and ".sgd_influence_staging_" in src,
            }[how]
            if blocked:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), failing)
            return real(src, dst, *args, **kwargs)

        monkeypatch.setattr(ownership.os, "replace", replace)
    before = _tree(world["root"])
    try:
        # Another seed: every file of the new set differs from the old one.
        assert cli.main(_run_argv(world, out, "--seed", "1", "--report")) == 2
    finally:
        if how == "immutable":
            _chattr("-i", out)
        monkeypatch.undo()
    _one_line_error(
        capsys, rf"{os.path.basename(failing)}: cannot be replaced .*Nothing was changed"
    )
    assert _tree(world["root"]) == before
    # Once the file can be replaced, the same run goes through.
    assert cli.main(_run_argv(world, out, "--seed", "1", "--report")) == 0
    assert (out.parent / "influence_report.html").is_file()
    assert not [p for p in os.listdir(out.parent) if p.startswith(".") and "old" in p]


# ----------------------------------------------------------------------------------------
# Cases 1, 7, 12: evaluate follows the ownership rule and checks everything before computing
# ----------------------------------------------------------------------------------------


def _eval_argv(w, out, *extra):
    return [
        "evaluate",
        "--model",
        w["model"],
        "--train",
        w["train"],
        "--val",
        w["val"],
        "--test",
        w["val"],
        "--output-dir",
        str(out),
        "--ratios",
        "0,0.1",
        "--seeds",
        "0",
        "--trials",
        "1",
        "--quiet",
        *extra,
    ]


def _copy_csv(w, name, row=None, label=None):
    """A copy of the validation CSV in data/ named ``name``, with one label changed."""
    path = w["data"] / name
    shutil.copy(w["val"], path)
    if row is not None:
        first._rewrite_cell(path, row, 1, label)
    return str(path)


def _user_files(*names):
    def make(w):
        out = w["root"] / "eval"
        out.mkdir()
        for name in names:
            (out / name).write_text("the user's\n")
        return ["--output-dir", str(out)]

    return make


EVALUATE_REFUSED = {
    # case 1: the test CSV is results.csv in the output folder
    "test CSV is the results file": (
        lambda w: ["--test", _copy_csv(w, "results.csv"), "--output-dir", str(w["data"])],
        r"results\.csv: refusing to overwrite the input .*results\.csv; choose another "
        r"--output-dir",
    ),
    "user's results.csv": (
        _user_files("results.csv"),
        r"eval/results\.csv: already exists and was not written by sgd-influence",
    ),
    "user's settings.yaml": (
        _user_files("settings.yaml"),
        r"eval/settings\.yaml: already exists and was not written",
    ),
    "user's summary.md": (
        _user_files("summary.md", "notes.txt"),
        r"eval/summary\.md: already exists and was not written",
    ),
    "output into an image folder": (
        lambda w: ["--output-dir", str(w["data"] / "train")],
        r"--output-dir .*train: lies in .*train, a folder of the dataset's images",
    ),
    # case 7: labels
    "training label 10": (
        lambda w: first._label("10")(w),
        r"train\.csv row 4, column 'y:label': label 10 is out of range .*\(0\.\.9\)",
    ),
    "training label 1e400": (
        lambda w: first._label("1e400")(w),
        r"train\.csv row 4, column 'y:label': '1e400' is not a finite number",
    ),
    "test label 99": (
        lambda w: ["--test", _copy_csv(w, "test.csv", 5, "99")],
        r"test\.csv row 6, column 'y:label': label 99 is out of range",
    ),
    # case 12: options that failed with a traceback, some after the whole computation
    "ratios empty": (lambda w: ["--ratios", ""], r"--ratios is empty"),
    "ratios nan": (lambda w: ["--ratios", "0,nan"], r"--ratios 0,nan: nan is not a share"),
    "ratios 1": (lambda w: ["--ratios", "1"], r"--ratios 1: 1 is not a share in \[0, 1\)"),
    "seeds -1": (lambda w: ["--seeds", "-1"], r"--seeds -1: -1 is not a whole number in 0\.\."),
    "seeds 0.5": (lambda w: ["--seeds", "0.5"], r"--seeds '0\.5': 0\.5 is not a whole number"),
    "seeds empty": (lambda w: ["--seeds", ","], r"--seeds is empty"),
    "output-dir is a file": (
        lambda w: ["--output-dir", w["train"]],
        r"--output-dir .*train\.csv: is a file, not a folder",
    ),
    "output-dir empty": (lambda w: ["--output-dir", ""], r"--output-dir is empty"),
}


@pytest.mark.parametrize("case", sorted(EVALUATE_REFUSED))
def test_cases_1_7_12_evaluate_refuses_before_computing_and_changes_nothing(world, case, capsys):
    edit, pattern = EVALUATE_REFUSED[case]
    argv = _eval_argv(world, world["root"] / "eval") + edit(world)
    before = _tree(world["root"])
    assert cli.main(argv) == 2
    _one_line_error(capsys, pattern)
    assert _tree(world["root"]) == before


def test_case1_evaluate_replaces_only_its_own_results(world, capsys):
    out = world["root"] / "eval"
    assert cli.main(_eval_argv(world, out)) == 0
    names = sorted(os.listdir(out))
    assert names == sorted([ownership.LEDGER, "figure2.png", "results.csv", "settings.yaml",
                            "summary.md"])  # fmt: skip
    first_rows = _csv_rows(out / "results.csv")
    # Its own files are replaced by the next run; a file the user edited is not.
    assert cli.main(_eval_argv(world, out, "--seeds", "1")) == 0
    assert _csv_rows(out / "results.csv") != first_rows
    with open(out / "summary.md", "a") as f:
        f.write("my notes\n")
    before = _tree(world["root"])
    assert cli.main(_eval_argv(world, out, "--seeds", "2")) == 2
    _one_line_error(capsys, r"summary\.md: already exists and was not written by sgd-influence")
    assert _tree(world["root"]) == before


# ----------------------------------------------------------------------------------------
# Case 1: the paper-protocol script's report folder follows the same rule
# ----------------------------------------------------------------------------------------


def _protocol():
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "samples", "fashion_mnist"))
    import paper_protocol

    return paper_protocol


def _protocol_work(tmp_path):
    """A work folder with one finished toy task's rows (no models: the report skips what it
    cannot find)."""
    protocol = _protocol()
    task = tmp_path / "work" / "task_0.1_0"
    task.mkdir(parents=True)
    rows = [
        ("none", 0, 0, 0.80, 0.50, "nan"),
        ("final", 0.1, 10, 0.82, 0.48, 0.6),
        ("all", 0.1, 10, 0.81, 0.49, 0.5),
        ("random", 0.1, 10, 0.79, 0.51, 0.1),
    ]
    protocol.save_rows(
        str(task / "rows.csv"),
        [
            dict(zip(protocol.ROW_KEYS, (0.1, 0, m, r, n, acc, loss, p, 1.0)))
            for m, r, n, acc, loss, p in rows
        ],
    )
    return str(tmp_path / "work")


def test_case1_paper_protocol_replaces_only_its_own_report(tmp_path, capfd):
    protocol = _protocol()
    work = _protocol_work(tmp_path)
    out = tmp_path / "out"
    argv = ["--work", work, "--out", str(out), "--report-only", "--ratios", "0.1"]
    assert protocol.main(argv) == 0
    assert sorted(os.listdir(out)) == sorted(
        [ownership.LEDGER, "estimates", *protocol.REPORT_FILES]
    )
    assert (out / "estimates" / ownership.FOLDER_MARKER).is_file()
    assert protocol.main(argv) == 0  # its own report is replaced
    capfd.readouterr()
    # The user's notes in the report folder, or a file as --out: refused, nothing changes,
    # and a full run refuses before any task starts (no work folder is made).
    (out / "summary.md").write_text("my notes\n")
    for extra, pattern in (
        (["--report-only"], r"summary\.md: already exists and was not written"),
        ([], r"summary\.md: already exists and was not written"),
        (["--report-only", "--out", work + "/task_0.1_0/rows.csv"], r"is a file, not a folder"),
    ):
        fresh = str(tmp_path / "never")
        args = ["--work", work if extra else fresh, "--out", str(out), "--ratios", "0.1"] + extra
        before = _tree(tmp_path)
        assert protocol.main(args) == 2
        err = capfd.readouterr().err.strip()
        assert err.startswith("paper_protocol: error: ") and "\n" not in err, err
        assert re.search(pattern, err), err
        assert _tree(tmp_path) == before and not os.path.exists(fresh)


# ----------------------------------------------------------------------------------------
# Case 2 (and 17: install-plugin ""): the console's own plugin and files we did not install
# ----------------------------------------------------------------------------------------

IMAGE_PLUGINS = os.path.join("_Post_Process", "_XAI", "_Image")


def test_case2_no_script_or_menu_entry_can_collide_with_the_consoles_own_plugin():
    import yaml

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    manifest = yaml.safe_load(open(os.path.join(root, "manifest.yaml")))
    scripts = [os.path.basename(p) for p in cli.plugin_sources()]
    menus = [e["menu"].split(" > ")[-1] for e in manifest["plugins"]]
    assert sorted(os.path.basename(e["script"]) for e in manifest["plugins"]) == sorted(scripts)
    for script, menu in zip(sorted(scripts), sorted(menus)):
        assert menu + ".py" == script  # the console names the menu entry after the file
    taken = {cli.CONSOLE_PLUGIN.casefold(), cli.CONSOLE_PLUGIN[: -len(".py")].casefold()}
    for name in scripts + menus:
        assert name.casefold() not in taken, name
    assert len({s.casefold() for s in scripts}) == len(scripts)


def test_case2_install_plugin_leaves_the_consoles_plugin_and_refuses_what_it_did_not_install(
    tmp_path, capsys, monkeypatch
):
    target = tmp_path / "plugins"
    image = target / IMAGE_PLUGINS
    image.mkdir(parents=True)
    console = image / cli.CONSOLE_PLUGIN
    console.write_text("# the console's own SGD-influence plugin\n")
    assert cli.main(["install-plugin", str(target)]) == 0
    assert console.read_text() == "# the console's own SGD-influence plugin\n"
    ours = sorted(  # the image scripts; the table script goes to _Table
        os.path.basename(p) for p in cli.plugin_sources() if os.path.dirname(p).endswith("_Image")
    )
    assert sorted(p for p in os.listdir(image) if p.endswith(".py")) == sorted(
        ours + [cli.CONSOLE_PLUGIN]
    )
    assert cli.main(["install-plugin", str(target)]) == 0  # what it installed, it replaces
    capsys.readouterr()
    # An installed script the user changed is no longer ours; nor is a file of the same name
    # in another case, nor any file it did not install.
    script = image / ours[-1]
    with open(script, "a") as f:
        f.write("# my change\n")
    cases = [(target, rf"{ours[-1]}: already exists and was not installed by sgd-influence")]
    for name, pattern in (
        (ours[0].lower(), r"differs from this plugin's .* only in case"),
        (ours[0], rf"{ours[0]}: already exists and was not installed by sgd-influence"),
    ):
        other = tmp_path / name.replace(".py", "") / "plugins"
        (other / IMAGE_PLUGINS).mkdir(parents=True)
        (other / IMAGE_PLUGINS / name).write_text("the user's\n")
        cases.append((other, pattern))
    for where, pattern in cases:
        before = _tree(tmp_path)
        assert cli.main(["install-plugin", str(where)]) == 2
        _one_line_error(capsys, pattern)
        assert _tree(tmp_path) == before
    # install-plugin "" used to install into the current folder.
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    assert cli.main(["install-plugin", ""]) == 2
    _one_line_error(capsys, r"NNC_PLUGINS_DIR is empty")
    assert _tree(tmp_path) == before


# ----------------------------------------------------------------------------------------
# Cases 4, 5, 9: every row of the outputs belongs to its training row
# ----------------------------------------------------------------------------------------


def check_rows_belong(out_csv, train_csv, thumb_size=None):
    """Every promise of an influence CSV, opened the way the console opens it (paths relative
    to the CSV's folder as the user names it): each row's image is its training row's file (or
    that file's thumbnail), and its label, original cell and score belong to the same row;
    rows sorted most harmful first; every training row once.
    """
    import numpy as np
    from PIL import Image

    from sgd_influence_plugin import core
    from sgd_influence_plugin.dataset import read_csv_table

    folder = os.path.dirname(str(out_csv))
    header, train_rows = read_csv_table(str(train_csv))
    data_folder = os.path.dirname(os.path.abspath(str(train_csv)))
    rows = _csv_rows(out_csv)
    trials = _csv_rows(os.path.join(folder, "influence_trials.csv"))
    raw = np.array([[float(t[k]) for k in t if k.startswith("trial_")] for t in trials])
    combined, _ = core.combine_trials(raw.T)
    assert sorted(int(r["datasource_index"]) for r in rows) == list(range(len(train_rows)))
    scores = [float(r["influence"]) for r in rows]
    assert scores == sorted(scores)
    for r in rows:
        j = int(r["datasource_index"])
        image, label = train_rows[j][0], train_rows[j][1]
        assert r["original"] == image and r["y:label"] == label.strip()
        assert float(r["influence"]) == pytest.approx(combined[j], rel=1e-12, abs=0)
        source = os.path.join(data_folder, image)
        shown = os.path.join(folder, r["x:image"])
        assert os.path.isfile(shown), (r, shown)
        if r["x:image"].startswith("influence_thumbnails/"):
            with Image.open(source) as im:
                want = im.copy()
            want.thumbnail((thumb_size, thumb_size), Image.LANCZOS)
            with Image.open(shown) as got:
                assert np.array_equal(np.asarray(got), np.asarray(want)), r
        else:
            assert open(shown, "rb").read() == open(source, "rb").read(), r
    return rows


def _linked_output(root):
    """``root/out`` is a symbolic link to ``root/deep/a/b/real_out``: ``../data`` from the
    link's own path is not ``../data`` from where the files really are."""
    real = root / "deep" / "a" / "b" / "real_out"
    real.mkdir(parents=True)
    os.symlink(real, root / "out")
    return root / "out"


def test_case4_paths_open_from_a_linked_output_folder_in_place_and_cleansed(world, capsys):
    out = _linked_output(world["root"])
    assert cli.main(_run_argv(world, out / "influence.csv")) == 0
    check_rows_belong(out / "influence.csv", world["train"])
    # cleanse into the linked folder: a CSV that retrains, holding the kept rows' own files.
    from sgd_influence_plugin.dataset import load_dataset, read_csv_table

    cleansed = out / "cleansed.csv"
    argv = ["cleanse", "--influence", str(out / "influence.csv"), "--train", world["train"]]
    assert cli.main(argv + ["--remove", "5", "--output", str(cleansed)]) == 0
    _, train_rows = read_csv_table(world["train"])
    removed = {int(r["datasource_index"]) for r in _csv_rows(out / "influence.csv")[:5]}
    kept = [train_rows[j] for j in range(len(train_rows)) if j not in removed]
    _, rows = read_csv_table(str(cleansed))
    assert len(rows) == len(kept)
    for (image, label), (want_image, want_label) in zip(rows, kept):
        assert label == want_label
        got = open(os.path.join(out, image), "rb").read()
        assert got == open(os.path.join(world["data"], want_image), "rb").read()
    load_dataset(str(cleansed), {"x": (1, 7, 7), "y": (1,)})


def test_case4_thumbnails_and_images_in_place_under_a_linked_output_folder(
    results, data28, tmp_path
):
    out = _linked_output(tmp_path)
    model = os.path.join(results("mlp"), "results.nnp")
    base = ["run", "--model", model, "--train", data28["train"], "--val", data28["val"]]
    for size, thumbs in (("16", True), ("64", False)):
        argv = base + ["--output", str(out / "influence.csv"), "--trials", "1", "--quiet"]
        assert cli.main(argv + ["--thumb-size", size]) == 0
        rows = check_rows_belong(out / "influence.csv", data28["train"], int(size))
        assert all(r["x:image"].startswith("influence_thumbnails/") == thumbs for r in rows)


def _npy_dataset(w, mixed):
    """The training set as .npy arrays (each image / 255, as the loader reads the PNG), or
    only its first row (``mixed``)."""
    import numpy as np
    from PIL import Image

    from sgd_influence_plugin.dataset import read_csv_table

    header, rows = read_csv_table(w["train"])
    (w["data"] / "npy").mkdir()
    out = []
    for i, (image, label) in enumerate(rows):
        if mixed and i:
            out.append([image, label])
            continue
        with Image.open(w["data"] / image) as im:
            np.save(w["data"] / "npy" / f"{i:06d}.npy", np.asarray(im, np.float32)[None] / 255)
        out.append([f"npy/{i:06d}.npy", label])
    path = w["data"] / ("mixed.csv" if mixed else "npy.csv")
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header] + out)
    return str(path)


@pytest.mark.parametrize("mixed", [False, True], ids=["npy", "first row npy"])
def test_case5_npy_data_gets_the_right_columns(world, capsys, mixed):
    train = _npy_dataset(world, mixed)
    out = world["root"] / "out" / "influence.csv"
    argv = _run_argv(world, out, "--train", train)
    argv[argv.index("--train") + 1] = train
    assert cli.main(argv) == 0
    check_rows_belong(out, train)
    summary = (out.parent / "influence_summary.txt").read_text()
    classes = summary.split("harmful share per class", 1)[1].split("\n\n", 1)[0]
    assert len(classes.splitlines()) - 1 == len({r["y:label"] for r in _csv_rows(out)}) <= 10
    assert "npy/" not in classes
    # cleanse accepts the tool's own CSV.
    argv = ["cleanse", "--influence", str(out), "--train", train, "--remove", "3"]
    assert cli.main(argv + ["--output", str(out.parent / "c.csv")]) == 0


def test_case9_one_summary_line_per_label_value_however_written(world):
    from sgd_influence_plugin.dataset import read_csv_table

    _, rows = read_csv_table(world["train"])
    label = max({r[1] for r in rows}, key=lambda x: sum(r[1] == x for r in rows))
    where = [i for i, r in enumerate(rows) if r[1] == label]
    assert len(where) >= 3
    for i, spelling in zip(where, (f"{label}.0", f"+{label}", f" {label}")):
        first._rewrite_cell(world["train"], i, 1, spelling)
    out = world["root"] / "out" / "influence.csv"
    assert cli.main(_run_argv(world, out, "--report")) == 0
    summary = (out.parent / "influence_summary.txt").read_text()
    block = summary.split("harmful share per class", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip() for line in block.splitlines()[1:]]
    assert [line.split(":")[0] for line in lines].count(label) == 1, block
    assert not any(line.startswith((f"{label}.0:", f"+{label}:")) for line in lines), block
    assert re.search(rf"^{label}: \d+ / {len(where)} ", "\n".join(lines), re.M), block


# ----------------------------------------------------------------------------------------
# Cases 6, 8, 10, 11, 14, 16, 17: refused with one line before computing, nothing changes
# ----------------------------------------------------------------------------------------


def _unknown_function(w):
    text = (w["result"] / "net.nntxt").read_text()
    assert 'type: "Affine"' in text
    bad = w["root"] / "foo.nntxt"
    bad.write_text(text.replace('type: "Affine"', 'type: "FooBarFunc"'))
    params = str(w["result"] / "parameters.h5")
    return ["--model", None, "--config", str(bad), "--params", params]


def _long_name(w):
    return ["--output", str(w["root"] / "out" / ("a" * 300 + ".csv"))]


def _long_path(w):
    deep = os.path.join(str(w["root"]), *(["d" * 200] * 21))
    return ["--output", os.path.join(deep, "influence.csv")]


RUN_REFUSED = {
    # case 6: absurd rates, refused before computing (auto: once the curvature has chosen it)
    "case 6 lr 1e-46": (
        lambda w: ["--lr", "1e-46"],
        r"learning rate 1e-46: too small to change float32 parameters",
    ),
    "case 6 weight decay 1e300 at lr 0.1": (
        lambda w: ["--lr", "0.1", "--weight-decay", "1e300"],
        r"learning rate 0\.1 with weight decay 1e\+300: each step would multiply every weight",
    ),
    "case 6 weight decay 1e300 at lr auto": (
        lambda w: ["--weight-decay", "1e300"],
        r"learning rate [\d.e+-]+ \(--lr auto chose it: .*\): at most 1e-12, too small .*"
        r"give a smaller --weight-decay",
    ),
    "case 6 weight decay 1e30 at lr auto": (
        lambda w: ["--weight-decay", "1e30"],
        r"\(--lr auto chose it: .*\): at most 1e-12, .*give a smaller --weight-decay",
    ),
    "case 6 weight decay that collapses the model in an epoch": (
        lambda w: ["--lr", "0.1", "--weight-decay", "6"],
        r"weight decay 6: the decay alone would shrink every weight to 0\.0256 of its size in "
        r"the 4 steps",
    ),
    # case 8: half precision was recorded and ignored
    "case 8 context cpu:half": (
        lambda w: ["--context", "cpu:half"],
        r"--context cpu:half: use cpu, or cudnn\[:DEVICE\] .*half precision is not supported",
    ),
    "case 8 context cudnn:gpu": (lambda w: ["--context", "cudnn:gpu"], r"--context cudnn:gpu: "),
    # case 10: OverflowError in validation.py
    "case 10 label 1e400": (
        first._label("1e400"),
        r"train\.csv row 4, column 'y:label': '1e400' is not a finite number",
    ),
    "case 10 label 1e39": (
        first._label("1e39"),
        r"row 4, column 'y:label': '1e39' is beyond the range of the network's 32-bit numbers",
    ),
    # case 11: ValueError: Function "FooBarFunc" is not supported
    "case 11 unknown function type": (
        _unknown_function,
        r"foo\.nntxt \+ .*: function '.*Affine' of network '\w+' has type 'FooBarFunc', "
        r"which nnabla "
        r"1\.39\.0 does not have",
    ),
    # case 14: refused only after computing, blaming the staging folder and free space
    "case 14 a file name of 304 bytes": (
        _long_name,
        r"--output a{28}\.\.\.a{24}\.csv: a name of 304 bytes, but this file system takes at "
        r"most 255; give a shorter --output",
    ),
    "case 14 a 4 KB path": (
        _long_path,
        r"--output: the path is \d+ bytes long, .*at most 4096; give a shorter --output",
    ),
    # case 16: --trials blamed --seed, or free space
    "case 16 trials 1e12": (
        lambda w: ["--trials", "1000000000000"],
        r"^sgd-influence: error: --trials 1000000000000: give at most 1000 trials",
    ),
    "case 16 trials 1e6": (
        lambda w: ["--trials", "1000000"],
        r"--trials 1000000: give at most 1000 trials",
    ),
    # case 17: messages that pointed the wrong way
    "case 17 label names /dev/null": (
        lambda w: ["--label-names", "/dev/null"],
        r"/dev/null: is not a regular file",
    ),
    "case 17 params without config": (
        lambda w: ["--model", None, "--params", str(w["result"] / "parameters.h5")],
        r"--params .*parameters\.h5 needs --config",
    ),
}


@pytest.mark.parametrize("case", sorted(RUN_REFUSED))
def test_run_refuses_with_one_line_and_changes_nothing(world, case, capsys):
    edit, pattern = RUN_REFUSED[case]
    argv = first._argv_for(world, edit)
    before = _tree(world["root"])
    assert cli.main(argv) == 2
    _one_line_error(capsys, pattern)
    assert _tree(world["root"]) == before
    assert os.listdir(world["tmp"]) == []  # no cache left behind


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["-p", "x.h5"], r"^--params x\.h5 needs --config"),  # case 17: said "both --model and"
        (["-l", "1e-46"], r"learning rate 1e-46: too small"),  # case 6: "completed successfully"
        (["--context", "cpu:half"], r"--context cpu:half: "),  # case 8
    ],
)
def test_cases_6_8_17_the_plugin_refuses_too(world, monkeypatch, caplog, argv, pattern):
    monkeypatch.chdir(world["result"])
    before = _tree(world["root"])
    extra = ["-t", world["train"], "-v", world["val"]]
    assert first._load_plugin().main(argv + extra) == 2
    said = first._plugin_error(caplog, pattern)
    assert not any("completed successfully" in m or "both" in m for m in said)
    assert _tree(world["root"]) == before


def test_case6_scores_that_tell_no_sample_from_another_are_refused(world):
    """The check after the computation: all-equal scores (e.g. all 0) are an error, not a
    result (the rate checks above stop the known causes before computing)."""
    import numpy as np

    from sgd_influence_plugin import influence
    from sgd_influence_plugin.errors import ComputationError

    run = influence.ResolvedSettings(lr=1e-3, weight_decay=0.0, batch_size=16)
    with pytest.raises(ComputationError, match=r"all 50 influence scores are 0: .*nothing was"):
        influence.check_spread(np.zeros(50), run)
    influence.check_spread(np.linspace(-1, 1, 50), run)


# ----------------------------------------------------------------------------------------
# Case 15: row numbers count blank lines
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, pattern",
    [
        ("12", r"train\.csv row 23, column 'y:label': label 12 is out of range"),
        ("abc", r"train\.csv row 23, column 'y:label': 'abc' is neither a number"),
    ],
)
def test_case15_blank_lines_keep_the_row_numbers(world, capsys, value, pattern):
    first._rewrite_cell(world["train"], 20, 1, value)  # the 21st data row
    lines = open(world["train"]).read().splitlines()
    lines[10:10] = ["", ""]  # two blank lines before it: the user sees it on row 23
    (world["data"] / "train.csv").write_text("\n".join(lines) + "\n")
    assert lines[23].endswith("," + value)  # line 24 of the file, row 23 after the header
    before = _tree(world["root"])
    assert cli.main(first._argv_for(world, lambda w: [])) == 2
    _one_line_error(capsys, pattern)
    assert _tree(world["root"]) == before


# ----------------------------------------------------------------------------------------
# Case 17: check on a 2-row CSV; the advice of a diverging run; a shared --cache-dir
# ----------------------------------------------------------------------------------------


def test_case17_check_on_two_rows_names_the_minimum(world, capsys):
    two = world["data"] / "two.csv"
    two.write_text("\n".join(open(world["train"]).read().splitlines()[:3]) + "\n")
    argv = ["check", "--model", world["model"], "--train", str(two), "--val", world["val"]]
    argv += ["--output", str(world["root"] / "out" / "check.csv"), "--quiet"]
    before = _tree(world["root"])
    assert cli.main(argv) == 2
    _one_line_error(capsys, r"two\.csv has only 2 row\(s\); the check .* at least 3 rows")
    assert _tree(world["root"]) == before


def test_case17_a_diverging_automatic_rate_does_not_advise_lr_auto(world):
    from sgd_influence_plugin import influence
    from sgd_influence_plugin.dataset import load_dataset
    from sgd_influence_plugin.errors import UnstableReplayError
    from sgd_influence_plugin.nnabla_adapter import load_model
    from sgd_influence_plugin.settings import InfluenceSettings

    model = load_model(world["model"])
    train = load_dataset(world["train"], model.info.input_shapes).arrays
    val = load_dataset(world["val"], model.info.input_shapes).arrays
    settings = InfluenceSettings(trials=1, retries=0)
    for source, advice in (("auto", r"--lr auto is already in use: give a smaller --lr number"),
                           ("given", r"Give a smaller --lr \(or --lr auto\)")):  # fmt: skip
        run = influence.ResolvedSettings(lr=1e6, weight_decay=0.0, batch_size=16, lr_source=source)
        with pytest.raises(UnstableReplayError, match=advice):
            influence.run_trial(
                model, train, val, settings, run, str(world["tmp"] / "c"), 0, None, 2.3
            )


def test_case17_a_cache_dir_in_use_by_another_run_is_refused(world, capsys):
    from sgd_influence_plugin import io_utils

    out = world["root"] / "out" / "influence.csv"
    cache = world["root"] / "cache"
    assert cli.main(_run_argv(world, out, "--cache-dir", str(cache))) == 0
    with open(cache / places.CACHE_LOCK, "a+") as held:  # another run holds it
        assert io_utils.try_lock(held)
        before = _tree(world["root"])
        assert cli.main(_run_argv(world, out, "--cache-dir", str(cache), "--seed", "1")) == 2
        _one_line_error(capsys, r"--cache-dir .*cache: is in use by another sgd-influence run")
        assert _tree(world["root"]) == before
    assert cli.main(_run_argv(world, out, "--cache-dir", str(cache), "--seed", "1")) == 0


# ----------------------------------------------------------------------------------------
# Case 13: Ctrl-C around forked workers
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


needs_fork = pytest.mark.skipif(
    not hasattr(os, "register_at_fork") or not parallel.fork_available(), reason="no fork here"
)


def _pid(item, progress):
    return os.getpid()


@needs_fork
def test_case13_workers_start_with_ctrl_c_held(forks):
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


@needs_fork
def test_case13_no_worker_starts_after_a_stop_request(forks):
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


@needs_fork
def test_case13_a_second_ctrl_c_while_workers_are_reaped_leaves_none(monkeypatch):
    """The first Ctrl-C stops the run; a second one arrives while a worker is still being
    reaped (it ignores SIGTERM, so it is killed after the grace time). Before, the second
    Ctrl-C broke off the reaping and left the worker running (and an atexit traceback)."""
    import multiprocessing
    import signal
    import threading

    monkeypatch.setattr(parallel, "TERMINATE_GRACE", 2.0)
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


def test_case13_cli_two_ctrl_c_from_the_terminal_one_line_and_fast(world):
    """Ctrl-C twice, sent to the whole process group as a terminal does, while the trials run
    in workers: exit 130, the one line, no traceback, within a few seconds."""
    import signal

    out = world["root"] / "out" / "influence.csv"
    env = dict(os.environ, TMPDIR=str(world["tmp"]))
    argv = _run_argv(world, out, "--epochs", "5000", "--trials", "3", "--jobs", "2")
    proc = subprocess.Popen(
        [first.CLI] + argv, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.time() + 120
    while not any(p.name.startswith("sgd_influence_cache_") for p in world["tmp"].iterdir()):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.02)
    time.sleep(0.3)  # the workers are training
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == "sgd-influence: " + interrupts.MESSAGE, err
    assert time.monotonic() - t0 < 4.0
    assert list(world["tmp"].iterdir()) == []
    assert not (world["root"] / "out").exists()
