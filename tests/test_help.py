"""Help texts and the option tables of docs/options.md say the same as the parsers."""

import importlib.util
import os
import re

import pytest

from sgd_influence_plugin import cli
from sgd_influence_plugin.errors import SettingsError
from sgd_influence_plugin.runner import RunRequest, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS_DOC = os.path.join(ROOT, "docs", "options.md")
PLUGINS = os.path.join(ROOT, "plugins", "_Post_Process", "_XAI", "_Image")
SCRIPT = os.path.join(PLUGINS, "SGD_Influence_Cleansing.py")
SUBCOMMANDS = ("run", "cleanse", "evaluate", "check", "install-plugin")


def _subparser(name):
    return cli.build_parser()._subparsers._group_actions[0].choices[name]


def _plugin_parser(script=SCRIPT):
    spec = importlib.util.spec_from_file_location("sgd_influence_console", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_parser()


def _doc_table(heading):
    """Rows of the first table after ``heading``: [(names in column 1, default cell)]."""
    lines = open(OPTIONS_DOC, encoding="utf-8").read().splitlines()
    start = lines.index(heading)
    rows, seen_table = [], False
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            seen_table = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0] in ("option", "---"):
                continue
            names = [t.split()[0] for t in re.findall(r"`([^`]+)`", cells[0])]
            rows.append((names, cells[1]))
        elif seen_table:
            break
    assert rows, f"no table after {heading!r}"
    return rows


def _literal(cell):
    """The value of a default cell written as one literal (`x` or `x` (...)), else None."""
    m = re.match(r"^`([^`]*)`(\s|$)", cell)
    return m.group(1) if m else None


def _check_table(parser, heading):
    rows = _doc_table(heading)
    actions = [a for a in parser._actions if a.dest != "help"]
    documented = {name for names, _ in rows for name in names}
    expected = {s for a in actions for s in (a.option_strings or [a.metavar or a.dest])}
    assert documented == expected, (
        f"{heading}: missing {sorted(expected - documented)}, extra {sorted(documented - expected)}"
    )
    by_flag = {name: cell for names, cell in rows for name in names}
    for a in actions:
        cell = by_flag[(a.option_strings or [a.metavar])[-1]]
        assert cell, f"{heading}: no default given for {a.option_strings}"
        if a.required or not a.option_strings:
            assert cell.startswith("required"), (a.option_strings, cell)
        literal = _literal(cell)
        if literal is not None:
            assert literal == str(a.default), (a.option_strings, cell, a.default)
        if a.nargs == 0 and a.default is False:
            assert cell == "off", (a.option_strings, cell)


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_options_doc_lists_every_cli_option_with_its_default(sub):
    _check_table(_subparser(sub), f"## `sgd-influence {sub}`")


def test_options_doc_lists_every_plugin_option_with_its_default():
    _check_table(
        _plugin_parser(), "## The console plugin (`SGD_Influence_Cleansing.py`, the dialog)"
    )
    _check_table(
        _plugin_parser(os.path.join(PLUGINS, "SGD_Influence_Check.py")),
        "## The check plugin (`SGD_Influence_Check.py`, the dialog)",
    )


def test_readme_names_every_subcommand_and_links_the_options():
    """The README's command summary leaves no subcommand out, and points to the tables."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    for sub in SUBCOMMANDS:
        assert f"sgd-influence {sub}" in readme, sub
    assert "docs/options.md" in readme
    # A newcomer's ten minutes: details belong in docs/ (method, measurements, history).
    assert len(readme.splitlines()) <= 300, "README.md: move details to docs/"


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help_shows_defaults_and_groups_required_options(sub):
    parser = _subparser(sub)
    for group in parser._action_groups:
        for a in group._group_actions:
            if a.dest == "help" or group.title == "required arguments":
                continue
            if a.required or not a.option_strings:
                # required options are listed under their own heading (positionals: "required")
                assert group.title == "required arguments" or "(required)" in a.help, a.dest
            elif not group.title.startswith("model (required"):
                assert "(default: " in a.help, f"{sub} {a.option_strings}: no default in help"
    text = parser.format_help()
    assert "%(default)" not in text
    if sub in ("run", "cleanse", "check"):
        assert re.search(r"required arguments:\n  --(output|influence)", text)


def test_run_help_shows_the_numbers_it_uses():
    text = " ".join(_subparser("run").format_help().split())
    for flag, default in (("--seed", "0"), ("--thumb-size", "64"), ("--context", "cpu")):
        part = text[text.index(flag + " ", text.index("arguments:")) :]
        assert f"(default: {default})" in part[:400], flag


@pytest.mark.parametrize("size", [0, -3])
def test_thumbnail_size_must_be_positive(size, tmp_path):
    with pytest.raises(SettingsError, match=rf"--thumb-size {size}: thumbnails must be 16 to 512"):
        run(RunRequest(output=str(tmp_path / "i.csv"), model="m.nnp", thumb_size=size))
    assert list(tmp_path.iterdir()) == []
