"""``sgd-influence install-plugin`` beside the console's own SGD-influence plugin: no script or
menu entry of ours can collide with it, it is left alone, and only what install-plugin itself
installed is replaced (issue 18, cases 2 and 17). What it installs is in test_layout.py.
"""

from __future__ import annotations

import os

from sgd_influence_plugin import cli
from support.user_files import one_line_error, tree

IMAGE_PLUGINS = os.path.join("_Post_Process", "_XAI", "_Image")


def test_no_script_or_menu_entry_can_collide_with_the_consoles_own_plugin():
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


def test_install_plugin_leaves_the_consoles_plugin_and_refuses_what_it_did_not_install(
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
        before = tree(tmp_path)
        assert cli.main(["install-plugin", str(where)]) == 2
        one_line_error(capsys, pattern)
        assert tree(tmp_path) == before
    # install-plugin "" used to install into the current folder.
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    assert cli.main(["install-plugin", ""]) == 2
    one_line_error(capsys, r"NNC_PLUGINS_DIR is empty")
    assert tree(tmp_path) == before
