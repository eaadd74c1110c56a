"""The console plugin and the CLI, run as subprocesses in real result folders."""

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from sgd_influence_plugin import cleanse, cli, influence_csv, ownership
from sgd_influence_plugin.dataset import read_csv_table
from sgd_influence_plugin.errors import OutputError
from sgd_influence_plugin.settings import CACHE_MODES
from support.output_checks import check_report, check_summary, ranked_from_csv, used

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(
    ROOT, "plugins", "_Post_Process", "_XAI", "_Image", "SGD_Influence_Cleansing.py"
)
CLI = os.path.join(os.path.dirname(sys.executable), "sgd-influence")


def _cli_run(results, data28, output, *extra):
    """The argv of ``sgd-influence run`` on the MLP result and the 28x28 data."""
    return [
        CLI,
        "run",
        "--model",
        os.path.join(results("mlp"), "results.nnp"),
        "--train",
        data28["train"],
        "--val",
        data28["val"],
        "--output",
        str(output),
        *extra,
    ]


def _load_plugin_module(script=SCRIPT):
    import importlib.util

    spec = importlib.util.spec_from_file_location("sgd_influence_console", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _result_copy(results, name, tmp_path):
    dst = tmp_path / "result"
    shutil.copytree(results(name), dst)
    return dst


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _check_influence_csv(out_csv, train_csv):
    rows = _rows(out_csv)
    header = open(out_csv).readline().strip().split(",")
    assert header == [
        "x:image",
        "y:label",
        "influence",
        "loss",
        "suggested_label",
        "confidence",
        "neighbour_agreement",
        "action",
        "datasource_index",
        "original",
    ]
    assert {r["action"] for r in rows} <= {"keep", "relabel", "remove"}
    _, train_rows = read_csv_table(train_csv)
    assert len(rows) == len(train_rows)
    scores = [float(r["influence"]) for r in rows]
    assert scores == sorted(scores) and scores[0] < 0 < scores[-1]
    assert sorted(int(r["datasource_index"]) for r in rows) == list(range(len(train_rows)))
    folder = os.path.dirname(out_csv)
    for r in rows[:5] + rows[-5:]:
        j = int(r["datasource_index"])
        assert r["original"] == train_rows[j][0]  # points back to the right row
        assert r["y:label"] == train_rows[j][1]
        # 28x28 images fit the 64 px box: x:image is the training image itself, relative
        # to the output folder (nothing copied)
        assert not os.path.isabs(r["x:image"])
        assert os.path.samefile(
            os.path.join(folder, r["x:image"]),
            os.path.join(os.path.dirname(train_csv), train_rows[j][0]),
        )
    assert not os.path.exists(os.path.join(folder, "influence_thumbnails"))
    return rows


def test_plugin_with_no_arguments_in_a_result_folder(results, data28, tmp_path):
    folder = _result_copy(results, "cnn_bn", tmp_path)
    proc = subprocess.run([sys.executable, SCRIPT], cwd=folder, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "completed successfully" in proc.stderr
    out_dir = folder / "sgd_influence"
    rows = _check_influence_csv(str(out_dir / "influence.csv"), data28["train"])
    facts = yaml.safe_load(open(out_dir / "influence_settings.yaml"))
    assert facts["requested"]["cache"] == "final" and facts["n_train"] == 256
    summary = open(out_dir / "influence_summary.txt").read()
    check_summary(summary, ranked_from_csv(rows))
    # 64 validation rows: the recommendation is checked two ways, pooled over all 64 rows; on
    # these labels it changes nothing, and the cleansed CSV (the dialog's default applies the
    # recommendation) is the data as given, which nnabla reads.
    assert "pooled over all 64 validation rows" in summary and "why: change nothing" in summary
    assert facts["recommendation"]["counts"] == {"keep": 256, "relabel": 0, "remove": 0}
    assert {r["action"] for r in rows} == {"keep"}
    from nnabla.utils.data_source_implements import CsvDataSource

    cleansed = str(out_dir / "influence_cleansed.csv")
    src = CsvDataSource(cleansed, shuffle=False, normalize=True)
    assert src.size == 256
    x, y = src._get_data(0)
    assert np.asarray(x).shape == (1, 28, 28)
    _, train_rows = read_csv_table(data28["train"])
    kept = read_csv_table(cleansed)[1]
    for (img, lab), (timg, tlab) in zip(kept, train_rows):
        assert lab == tlab
        assert os.path.samefile(os.path.join(out_dir, img), os.path.join(data28["folder"], timg))


def test_plugin_with_nntxt_and_h5(results, data28, tmp_path):
    folder = _result_copy(results, "mlp", tmp_path)
    os.remove(folder / "results.nnp")
    proc = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "-c",
            "net.nntxt",
            "-p",
            "parameters.h5",
            "-o",
            "out/infl.csv",
            "-r",
            "0.05",
            "-l",
            "0.03",
            "-b",
            "20",
            "-e",
            "2",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _check_influence_csv(str(folder / "out" / "infl.csv"), data28["train"])
    # The dialog's remove ratio overrides the recommendation: 5% (13 rows) fewer, the most
    # harmful gone, labels as given, and nnabla can read it.
    from nnabla.utils.data_source_implements import CsvDataSource

    out_dir = folder / "out"
    cleansed = str(out_dir / "infl_cleansed.csv")
    assert CsvDataSource(cleansed, shuffle=False, normalize=True).size == 256 - 13
    kept = {r[0] for r in read_csv_table(cleansed)[1]}
    removed = {os.path.normpath(os.path.join(data28["folder"], r["original"])) for r in rows[:13]}
    kept_abs = {os.path.normpath(os.path.join(out_dir, k)) for k in kept}
    assert not removed & kept_abs and len(kept_abs) == 243
    # The dialog's learning rate, batch size and epochs reach the run: ceil(256 / 20) = 13
    # steps replayed at 0.03 (the definition says 0.1 and 32).
    facts = yaml.safe_load(open(folder / "out" / "infl_settings.yaml"))
    assert used(facts, "lr") == pytest.approx(0.03) and used(facts, "batch_size") == 20
    assert facts["requested"]["epochs"] == 2 and facts["used"]["trials"] == 1  # the default
    assert facts["timings_seconds"]["replay_steps"] == 13


@pytest.mark.parametrize(
    "args,message",
    [
        (["-t", "missing.csv"], "missing.csv: file not found"),
        (["-m", "nothing.nnp"], "nothing.nnp: file not found"),
        (["-a", "some"], "--cache 'some': choose one of final, all"),
        (["-o", "TRAIN"], "refusing to overwrite the input"),
    ],
)
def test_plugin_bad_input_exits_nonzero_and_writes_nothing(
    results, data28, tmp_path, args, message
):
    folder = _result_copy(results, "mlp", tmp_path)
    args = [data28["train"] if a == "TRAIN" else a for a in args]
    before = sorted(os.listdir(folder))
    train_before = open(data28["train"]).read()
    proc = subprocess.run(
        [sys.executable, SCRIPT] + args, cwd=folder, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert sorted(os.listdir(folder)) == before
    assert open(data28["train"]).read() == train_before


def _accepts(name, value):
    """Whether the package accepts ``value`` for the plugin option ``name`` (one line of the
    error otherwise, or None)."""
    from sgd_influence_plugin.errors import ContextError, SettingsError
    from sgd_influence_plugin.nnabla_adapter import make_context
    from sgd_influence_plugin.settings import InfluenceSettings

    try:
        if name == "cache":
            InfluenceSettings(cache=value).validate()
        elif name == "replay_step":
            InfluenceSettings(replay_step=value).validate()
        elif name == "context":
            make_context(value)
        else:
            raise AssertionError(f"no check for option {name}")
    except SettingsError as e:
        return str(e)
    except ContextError as e:  # a known kind without its extension is still a valid choice
        return None if "needs the nnabla GPU extension" in str(e) else str(e)
    return None


def test_manifest_matches_the_plugin_argparse():
    """Names, flags, types, defaults and choices of every dialog option, against the script's
    parser and what the package accepts."""
    manifest = yaml.safe_load(open(os.path.join(ROOT, "manifest.yaml")))
    scripts = [os.path.join(ROOT, e["script"]) for e in manifest["plugins"]]
    assert sorted(map(os.path.normpath, scripts)) == cli.plugin_sources()  # each script once
    for entry in manifest["plugins"]:
        _check_manifest_entry(entry)


def _check_manifest_entry(entry):
    assert os.path.exists(os.path.join(ROOT, entry["script"]))
    parser = _load_plugin_module(os.path.join(ROOT, entry["script"])).build_parser()
    assert "Hara" in parser.description and "Suzuki" in parser.description
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert [a["name"] for a in entry["arguments"]] == list(actions)  # same options, same order
    python_types = {"int": int, "float": float}
    for arg in entry["arguments"]:
        action, kind, default = actions[arg["name"]], arg["type"], arg["default"]
        assert action.option_strings == arg["flags"]
        assert action.default == default and type(action.default) is type(default)
        assert f"({kind})" in action.help
        shown = "" if default == "" else str(default)
        assert action.help.endswith(f"default={shown}")
        if kind == "bool":
            assert action.const is True and action.nargs == 0 and default is False  # store_true
        elif kind in python_types:
            assert action.type is python_types[kind]
            value = parser.parse_args([arg["flags"][0], str(default)])
            assert getattr(value, arg["name"]) == default
        else:  # paths and options are strings
            assert action.type is None and isinstance(default, str)
        if kind.startswith("option:"):
            choices = kind[len("option:") :].split(",")
            assert default in choices and action.choices in (None, choices)
            for choice in choices:
                parsed = parser.parse_args([arg["flags"][0], choice])
                assert getattr(parsed, arg["name"]) == choice
                assert _accepts(arg["name"], choice) is None, choice
            assert _accepts(arg["name"], "not-a-choice") is not None
    options = {a["name"]: a["type"] for a in entry["arguments"]}
    assert options["cache"] == "option:" + ",".join(CACHE_MODES)


def test_install_plugin_and_run_help_from_there(tmp_path):
    target = tmp_path / "nnc" / "libs" / "plugins"
    target.mkdir(parents=True)
    assert cli.main(["install-plugin", str(target)]) == 0
    script = target / "_Post_Process" / "_XAI" / "_Image" / "SGD_Influence_Cleansing.py"
    assert script.exists()
    pkg = script.parent / "sgd_influence_plugin"
    assert (pkg / "runner.py").exists() and not (pkg / "__pycache__").exists()
    proc = subprocess.run(
        [sys.executable, str(script), "-h"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "(model) default=results.nnp" in proc.stdout
    # The console's Python has no pip install of this package: the copy beside the script is
    # what the script imports (-S: no site-packages, so no editable install either).
    probe = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import sgd_influence_plugin as p; "
            "print(p.__file__)",
            str(script.parent),
        ],
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0 and probe.stdout.strip().startswith(str(pkg))
    # Installing again replaces the package as a whole, but only while it holds nothing
    # but what the tool installed (issue 34): a file of the user's in it stops the install.
    (pkg / "stray.txt").write_text("x")
    assert cli.main(["install-plugin", str(target)]) == 2
    assert (pkg / "stray.txt").read_text() == "x"
    (pkg / "stray.txt").unlink()
    assert cli.main(["install-plugin", str(target)]) == 0


def test_cli_run_cleanse_and_cache_dir(results, data28, tmp_path):
    folder = results("mlp")
    out = tmp_path / "o" / "influence.csv"
    proc = subprocess.run(
        [
            CLI,
            "run",
            "--config",
            os.path.join(folder, "net.nntxt"),
            "--params",
            os.path.join(folder, "parameters.h5"),
            "--train",
            data28["train"],
            "--val",
            data28["val"],
            "--output",
            str(out),
            "--cache",
            "all",
            "--trials",
            "1",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--report",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _check_influence_csv(str(out), data28["train"])
    assert sorted(os.listdir(tmp_path / "cache")) == [
        ".sgd_influence_cache",
        ".sgd_influence_lock",  # held while a run uses the folder (issue 18, case 17)
        "lr.npy",
        "order.npy",
        "parameters.h5",
        "settings.yaml",
        "steps",
    ]
    assert len(os.listdir(tmp_path / "cache" / "steps")) == 8
    report = open(tmp_path / "o" / "influence_report.html", encoding="utf-8").read()
    check_report(report, ranked_from_csv(rows), str(tmp_path / "o"))
    # cleanse into another folder: top-10 harmful gone, paths rebased, nnabla reads it.
    cleansed = tmp_path / "elsewhere" / "clean.csv"
    assert (
        cli.main(
            [
                "cleanse",
                "--influence",
                str(out),
                "--train",
                data28["train"],
                "--remove",
                "10",
                "--output",
                str(cleansed),
            ]
        )
        == 0
    )
    header, kept = read_csv_table(str(cleansed))
    assert header == ["x:image", "y:label"] and len(kept) == 246
    gone = {os.path.normpath(os.path.join(data28["folder"], r["original"])) for r in rows[:10]}
    kept_abs = {os.path.normpath(os.path.join(cleansed.parent, r[0])) for r in kept}
    assert not gone & kept_abs
    from nnabla.utils.data_source_implements import CsvDataSource

    assert CsvDataSource(str(cleansed), shuffle=False, normalize=True).size == 246
    # ratio, and refusing to overwrite the training CSV
    assert (
        cli.main(
            [
                "cleanse",
                "--influence",
                str(out),
                "--train",
                data28["train"],
                "--remove-ratio",
                "0.5",
                "--output",
                str(cleansed),
            ]
        )
        == 0
    )
    assert len(read_csv_table(str(cleansed))[1]) == 128
    train_before = open(data28["train"]).read()
    assert (
        cli.main(
            [
                "cleanse",
                "--influence",
                str(out),
                "--train",
                data28["train"],
                "--remove",
                "1",
                "--output",
                data28["train"],
            ]
        )
        == 2
    )
    assert open(data28["train"]).read() == train_before


def test_cleanse_rejects_an_influence_csv_of_another_dataset(data28, data7, tmp_path):
    path = tmp_path / "infl.csv"
    path.write_text(
        "x:image,y:label,influence,datasource_index,original\nt.png,1,-1.0,0,train/000000.png\n"
    )
    with pytest.raises(Exception, match="lists 1 samples but .* has 256 rows"):
        cleanse.cleanse(str(path), data28["train"], str(tmp_path / "c.csv"), remove=1)


def test_existing_output_is_replaced_whole_and_interrupts_leave_it(
    results, data28, tmp_path, monkeypatch
):
    from sgd_influence_plugin.runner import RunRequest, run

    folder = results("mlp")
    out = tmp_path / "influence.csv"
    req = RunRequest(
        output=str(out),
        model=os.path.join(folder, "results.nnp"),
        train=data28["train"],
        val=data28["val"],
        thumb_size=16,  # 28x28 images: reduced 16x16 thumbnails are written
    )
    run(req)
    thumbs = tmp_path / "influence_thumbnails"
    with Image.open(thumbs / "000000.png") as im:
        assert im.size == (16, 16)
    ownership.check_replaceable(str(thumbs), folder=True)  # ours (holds the marker)
    (thumbs / "stray.png").write_bytes(b"x")
    first = out.read_text()
    with pytest.raises(OutputError, match="stray.png"):  # not the tool's: refused (issue 34)
        run(req)
    (thumbs / "stray.png").unlink()
    run(req)
    assert out.read_text() == first  # deterministic for a fixed seed

    calls = {"n": 0}
    real = influence_csv.make_thumbnail

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 100:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(influence_csv, "make_thumbnail", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(req)
    assert out.read_text() == first
    assert sorted(os.listdir(tmp_path)) == [
        ".sgd_influence_written.json",
        "influence.csv",
        "influence_cleansed.csv",
        "influence_settings.yaml",
        "influence_summary.txt",
        "influence_thumbnails",
        "influence_trials.csv",
    ]
    assert len(os.listdir(thumbs)) == 257  # 256 PNGs + marker
    # A thumbnails folder without its marker is not ours.
    marker = (thumbs / ownership.THUMBNAILS_MARKER).read_bytes()
    os.remove(thumbs / ownership.THUMBNAILS_MARKER)
    with pytest.raises(OutputError, match="has no .sgd_influence_thumbnails marker"):
        ownership.check_replaceable(str(thumbs), folder=True)
    # With its marker, a run at the default 64 px box (the images fit: no thumbnails)
    # removes the old folder rather than leave thumbnails the new CSV does not name.
    (thumbs / ownership.THUMBNAILS_MARKER).write_bytes(marker)
    monkeypatch.undo()
    run(RunRequest(output=str(out), model=req.model, train=req.train, val=req.val))
    assert not thumbs.exists()
    _check_influence_csv(str(out), data28["train"])


def test_cli_refuses_to_overwrite_inputs_and_reports_one_line(results, data28, tmp_path):
    proc = subprocess.run(
        _cli_run(results, data28, data28["val"], "--quiet"), capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert (
        proc.stderr.startswith("sgd-influence: error: ") and "refusing to overwrite" in proc.stderr
    )


@pytest.mark.parametrize("sub", ["run", "cleanse", "evaluate", "check", "install-plugin"])
def test_every_subcommand_has_complete_help(sub, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([sub, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    parser = cli.build_parser()
    subparser = parser._subparsers._group_actions[0].choices[sub]
    for action in subparser._actions:
        for flag in action.option_strings:
            assert flag in text
        if action.dest != "help":
            assert action.help  # every option is explained


def test_thumbnails_keep_aspect_and_only_large_images_get_one(tmp_path, data28):
    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(tmp_path / "big.png")
    influence_csv.make_thumbnail(str(tmp_path / "big.png"), str(tmp_path / "b.png"))
    with Image.open(tmp_path / "b.png") as im:
        assert im.size == (64, 32)
    from sgd_influence_plugin.dataset import load_dataset

    train = load_dataset(data28["train"], {"x": (1, 28, 28), "y": (1,)})
    assert influence_csv.fits_box(train, "x:image", 28) and influence_csv.fits_box(
        train, "x:image", 64
    )
    assert not influence_csv.fits_box(train, "x:image", 27)


def test_sigterm_leaves_no_cache_and_no_output(results, data28, tmp_path):
    import signal
    import time

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "o" / "influence.csv"
    env = dict(os.environ, TMPDIR=str(tmp))
    proc = subprocess.Popen(
        _cli_run(results, data28, out, "--trials", "300", "--jobs", "1", "--quiet"),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not any(p.name.startswith("sgd_influence_cache_") for p in tmp.iterdir()):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)  # inside the training phase now
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert list(tmp.iterdir()) == []
    assert not out.exists()
