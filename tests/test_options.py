"""Each option is defined once (issue 33): the CLI, the console dialogs, the messages'
spellings and the settings all come from the table in ``sgd_influence_plugin/options.py``.
"""

import ast
import dataclasses
import importlib.util
import os

import pytest

from sgd_influence_plugin import cli, console_dialog, option_parsers, options, replay_steps, target
from sgd_influence_plugin.runner import RunRequest
from sgd_influence_plugin.settings import InfluenceSettings
from sgd_influence_plugin.validation import CLI_FLAGS, PLUGIN_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XAI = os.path.join(ROOT, "plugins", "_Post_Process", "_XAI")
SCRIPTS = {
    "image": os.path.join(XAI, "_Image", "SGD_Influence_Cleansing.py"),
    "table": os.path.join(XAI, "_Table", "SGD_Influence_Table.py"),
    "check": os.path.join(XAI, "_Image", "SGD_Influence_Check.py"),
}
#: Dialog options whose default is the dialog's own, on purpose: the console runs the plugin
#: in the result folder, so the model and the output have a place there; the command line
#: has no such folder and asks for them.
OWN_DEFAULTS = {"model": "results.nnp", "output": ("sgd_influence/influence.csv",
                                                   "sgd_influence/check.csv")}  # fmt: skip


def _dialog(kind):
    """The dialog parser of the entry script itself, as the console builds it."""
    spec = importlib.util.spec_from_file_location(f"sgd_influence_dialog_{kind}", SCRIPTS[kind])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_parser()


def _subparsers():
    return cli.build_parser()._subparsers._group_actions[0].choices


def _dests(parser):
    return [a.dest for a in parser._actions if a.dest != "help"]


@pytest.mark.parametrize("kind", sorted(SCRIPTS))
def test_the_dialogs_defaults_are_the_tables(kind):
    """What a dialog does when OK is pressed with nothing changed is what the table (and so
    the command line and the Python API) does by default.
    """
    parser = _dialog(kind)
    args = parser.parse_args([])
    settings = console_dialog._settings(args, kind)
    assert settings == InfluenceSettings(), (
        f"{kind} dialog: {settings} differs from the table's defaults {InfluenceSettings()}"
    )
    inputs = console_dialog._inputs(args)
    for name in ("config", "params", "train", "val"):
        assert inputs[name] == options.default(name) == getattr(RunRequest("x"), name), name
    assert inputs["model"] == OWN_DEFAULTS["model"]
    assert inputs["output"] in OWN_DEFAULTS["output"]
    if kind == "check":
        assert args.samples == options.default("samples")
    else:
        assert console_dialog._ratio(args.remove_ratio) == options.default("remove_ratio")
        assert args.report is options.default("report") is RunRequest("x").report
        values = option_parsers.from_dialog(args, ("label_names",))
        assert values["label_names"] == options.default("label_names")
    for action in parser._actions[1:]:  # the help text the console reads states the default
        shown = "" if action.default is None else action.default
        assert action.help.endswith(f" default={shown}"), action.dest


def test_the_command_lines_defaults_are_the_tables():
    subs = _subparsers()
    run = subs["run"].parse_args(["--output", "o.csv"])
    assert cli._settings_from(run) == InfluenceSettings()
    assert run.thumb_size == RunRequest("x").thumb_size == options.default("thumb_size")
    check = subs["check"].parse_args(["--output", "o.csv"])
    assert cli._settings_from(check) == InfluenceSettings()
    evaluate = subs["evaluate"].parse_args(["--test", "t.csv", "--output-dir", "d"])
    assert cli._settings_from(evaluate) == InfluenceSettings()


def _add_argument_calls(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        ):
            yield node.lineno


def test_no_parser_of_the_package_defines_an_option_itself():
    """``add_argument`` appears in the generator only: every option of the package's parsers
    and of the entry scripts' dialogs is read from the table.
    """
    roots = [os.path.join(ROOT, "sgd_influence_plugin"), os.path.join(ROOT, "plugins")]
    found = []
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                path = os.path.join(folder, name)
                if not name.endswith(".py") or path.endswith(os.path.join("", "option_parsers.py")):
                    continue
                found += [f"{os.path.relpath(path, ROOT)}:{n}" for n in _add_argument_calls(path)]
    assert not found, f"options defined outside the table (see options.py): {found}"


def test_every_parsers_options_are_the_tables():
    """Each action of each subcommand and dialog is a table option, spelled as the table
    says, and the messages spell it the same way.
    """
    for name, parser in _subparsers().items():
        for a in parser._actions[1:]:
            assert a.dest in options.OPTIONS, (name, a.dest)
            spelled = a.option_strings[-1] if a.option_strings else a.dest
            assert spelled == options.OPTIONS[a.dest].flag, (name, a.dest)
            if a.option_strings:
                assert getattr(CLI_FLAGS, a.dest) == spelled, (name, a.dest)
    for kind in SCRIPTS:
        for a in _dialog(kind)._actions[1:]:
            assert a.dest in options.OPTIONS, (kind, a.dest)
            assert getattr(PLUGIN_FLAGS, a.dest) == a.option_strings[-1] == "--" + a.dest


def test_the_settings_are_the_score_options():
    """``InfluenceSettings`` (``settings.yaml``'s ``requested``) declares no field of its own:
    its fields, in order, are the table's score options with their defaults.
    """
    assert not InfluenceSettings.__dict__.get("__annotations__")
    fields = [(f.name, f.default) for f in dataclasses.fields(InfluenceSettings)]
    assert fields == [(n, options.default(n)) for n in options.SETTINGS]
    assert list(InfluenceSettings().to_dict()) == list(options.SETTINGS)
    assert set(CLI_FLAGS.for_settings()) == set(options.SETTINGS)


def test_the_tables_choices_are_the_ones_implemented():
    assert options.choices("replay_step") == replay_steps.REPLAY_STEPS
    assert options.choices("target") == target.TARGETS


@dataclasses.dataclass
class _ScriptArguments:
    """A script's own options, declared as the package's are."""

    work: str = options.option("work", help="working folder")
    pool_limit: int = options.option(0, help="use only the first this many images")


def test_a_script_builds_its_parser_from_the_table_and_its_own_options():
    """The protocol script's way: its own options, and the tool's with a default of its own."""
    import argparse

    p = argparse.ArgumentParser()
    own = list(options.table(_ScriptArguments).values())
    option_parsers.add_arguments(p, own + ["seeds", "ratios"], ratios=dict(default="0.1,0.05"))
    args = p.parse_args(["--pool-limit", "7"])
    assert (args.work, args.pool_limit, args.seeds, args.ratios) == ("work", 7, "0,1,2", "0.1,0.05")
    text = " ".join(p.format_help().split())
    assert "(default: 0.1,0.05)" in text and "images (default: 0)" in text
