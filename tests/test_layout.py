"""What ships: the installed plugin tree holds the product and nothing else."""

import os
import subprocess
import sys

from sgd_influence_plugin import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_DIR = os.path.join("_Post_Process", "_XAI", "_Image")
TABLE_DIR = os.path.join("_Post_Process", "_XAI", "_Table")

#: Every file `install-plugin` may write, relative to NNC's plugins folder. Written out by hand
#: on purpose: a new module must be added here knowingly, and a sample, test or benchmark
#: helper (``support/``) must never appear.
PRODUCT_MODULES = (
    "__init__.py",
    "influence.py",
    "label_values.py",
    "cache_folder.py",
    "resolved.py",
    "cells.py",
    "check.py",
    "child_processes.py",
    "cleanse.py",
    "cleansed_csv.py",
    "cli.py",
    "cluster.py",
    "cluster_address.py",
    "cluster_executor.py",
    "cluster_worker.py",
    "console_dialog.py",
    "core.py",
    "coworker.py",
    "crossfit.py",
    "curvature.py",
    "dataset.py",
    "errors.py",
    "evaluate.py",
    "evaluate_inputs.py",
    "evaluate_report.py",
    "executor.py",
    "file_cells.py",
    "fidelity.py",
    "figures.py",
    "heldout_check.py",
    "influence_csv.py",
    "inputs.py",
    "interrupts.py",
    "io_utils.py",
    "labels.py",
    "launch.py",
    "ledger_lock.py",
    "made_folders.py",
    "memory.py",
    "neighbours.py",
    "one_hot.py",
    "nnabla_adapter/__init__.py",
    "nnabla_adapter/definition.py",
    "nnabla_adapter/files.py",
    "nnabla_adapter/heads.py",
    "nnabla_adapter/indices.py",
    "nnabla_adapter/losses.py",
    "nnabla_adapter/model.py",
    "nnabla_adapter/optimizers.py",
    "nnabla_adapter/recurrent.py",
    "nnabla_adapter/replay_network.py",
    "nnabla_adapter/batch_axis.py",
    "nnabla_adapter/schedule.py",
    "nnabla_adapter/solver.py",
    "nnabla_adapter/training.py",
    "nnabla_adapter/rows.py",
    "option_parsers.py",
    "options.py",
    "output.py",
    "output_set.py",
    "ownership.py",
    "parallel.py",
    "phases.py",
    "pooled_check.py",
    "places.py",
    "progress.py",
    "recommend.py",
    "recommendation.py",
    "probabilities.py",
    "relabels.py",
    "replay.py",
    "replay_steps.py",
    "report.py",
    "run_facts.py",
    "runner.py",
    "settings.py",
    "shared_inputs.py",
    "staged_commit.py",
    "summary.py",
    "tiny_inputs.py",
    "trials.py",
    "trials_csv.py",
    "suspects.py",
    "table_columns.py",
    "target.py",
    "validation.py",
    "word_indices.py",
)
ALLOWED = {
    os.path.join(PLUGIN_DIR, "SGD_Influence_Cleansing.py"),
    os.path.join(PLUGIN_DIR, "SGD_Influence_Check.py"),
    # what install-plugin installed there, so that it replaces only that (ownership.py)
    os.path.join(PLUGIN_DIR, ".sgd_influence_written.json"),
    os.path.join(PLUGIN_DIR, "sgd_influence_plugin", ".sgd_influence_folder"),
    os.path.join(TABLE_DIR, "SGD_Influence_Table.py"),
    os.path.join(TABLE_DIR, ".sgd_influence_written.json"),
    os.path.join(TABLE_DIR, "sgd_influence_plugin", ".sgd_influence_folder"),
} | {
    os.path.join(folder, "sgd_influence_plugin", *m.split("/"))
    for folder in (PLUGIN_DIR, TABLE_DIR)
    for m in PRODUCT_MODULES
}


def _tree(folder):
    paths = (os.path.join(d, f) for d, _, files in os.walk(folder) for f in files)
    return {os.path.relpath(p, folder) for p in paths}


def test_install_plugin_copies_only_the_product(tmp_path):
    target = tmp_path / "plugins"
    target.mkdir()
    assert cli.main(["install-plugin", str(target)]) == 0
    installed = _tree(str(target))
    assert installed == ALLOWED, (
        f"unexpected: {sorted(installed - ALLOWED)}, missing: {sorted(ALLOWED - installed)}"
    )
    for helper in ("netdef.py", "fashion_mnist.py"):
        assert not any(os.path.basename(p) == helper for p in installed)


def test_the_installed_copy_imports_on_its_own(tmp_path):
    """Every shipped module imports from the copy beside the script, none from the checkout."""
    target = tmp_path / "plugins"
    target.mkdir()
    assert cli.main(["install-plugin", str(target)]) == 0
    beside = str(target / PLUGIN_DIR)
    names = [
        m[: -len(".py")].replace("/", ".").replace(".__init__", "")
        for m in PRODUCT_MODULES
        if m != "__init__.py"
    ]
    code = (
        "import importlib, sys; sys.path.insert(0, sys.argv[1]);"
        "mods = [importlib.import_module('sgd_influence_plugin.' + n) for n in sys.argv[2:]];"
        "print('\\n'.join(m.__file__ for m in mods));"
        "print('support' in sys.modules)"
    )
    # No PYTHONPATH: the checkout must not be importable, so a stray import of the
    # non-installed helpers would fail here.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", code, beside, *names],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    *files, support_loaded = proc.stdout.split()
    assert len(files) == len(names)
    assert all(f.startswith(beside + os.sep) for f in files), files
    assert support_loaded == "False"


def test_documents_the_setup_script_points_to_are_in_the_repository():
    import re

    text = open(os.path.join(ROOT, "scripts", "bootstrap_env.sh")).read()
    docs = set(re.findall(r"[\w./-]+\.md\b", text))
    assert docs, "the script names no document to read"
    for doc in docs:
        assert os.path.isfile(os.path.join(ROOT, doc)), f"bootstrap_env.sh points to {doc}"


PACKAGE = "sgd_influence_plugin"


def _package_modules():
    root = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sgd_influence_plugin"
    )
    for parent, _, names in os.walk(root):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(parent, name)
                rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                yield rel.replace(".__init__", "").replace("__init__", ""), path


def _package_imports(path, module):
    """Package modules ``module`` imports anywhere: at module level, inside functions and
    under ``TYPE_CHECKING`` alike (a lazy import is still a dependency), relative or absolute.
    """
    import ast

    if os.path.basename(path) == "__init__.py":  # a package's own module: "." is itself
        package = module
    else:
        package = module.rsplit(".", 1)[0] if "." in module else ""
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = (
                package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
            )
            if node.module:
                out.add(".".join([*base, node.module]))
            else:
                out.update(".".join([*base, a.name]) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
            inner = node.module[len(PACKAGE) + 1 :]
            out.update([inner] if inner else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            out.update(
                a.name[len(PACKAGE) + 1 :] for a in node.names if a.name.startswith(PACKAGE + ".")
            )
    return {m for m in out if m}


#: Arrays and graphs only (docs/layout.md): ``core`` imports nothing of the project, the
#: replay's modules nothing but each other and ``core``.
CORE_MODULES = ("core", "replay_steps", "replay")


def test_modules_import_without_cycles():
    """No import cycle (counting imports inside functions and under TYPE_CHECKING), and the
    core imports nothing of the project."""
    modules = dict(_package_modules())
    graph = {m: {d for d in _package_imports(p, m) if d in modules} for m, p in modules.items()}
    assert graph["core"] == set()
    for m in CORE_MODULES:
        assert graph[m] <= set(CORE_MODULES), f"{m} imports {sorted(graph[m] - set(CORE_MODULES))}"

    def visit(m, stack):
        assert m not in stack, " -> ".join([*stack, m])
        for d in graph.get(m, ()):
            visit(d, [*stack, m])

    for m in graph:
        visit(m, [])


def test_modules_and_their_functions_stay_small():
    """Every module of the package at most 400 lines, and no function over 60 lines (docstring
    included) unless a comment on the line above its ``def`` says why (``# longer than 60
    lines: ...``): one concept per module, one step per function (issue 33)."""
    import ast

    for name, path in _package_modules():
        lines = open(path).read().splitlines()
        assert len(lines) <= 400, f"{name}: {len(lines)} lines; split it by concept"
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = node.end_lineno - node.lineno + 1
            why = lines[first - 2].strip().startswith("# longer than 60 lines:")
            assert length <= 60 or why, f"{name}: {node.name} is {length} lines"


def _floors():
    """docs/layout.md's floors: module -> floor number (1 = the bottom)."""
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "docs", "layout.md"), encoding="utf-8").read()
    section = text.split("## Floors", 1)[1].split("\n## ", 1)[0]
    floors = {}
    for line in section.splitlines():
        m = re.match(r"(\d+)\. \*\*", line)
        if m:
            for name in re.findall(r"`([\w.]+)`", line):
                floors[name] = int(m.group(1))
    return floors


def test_every_module_sits_on_a_floor_and_imports_only_downwards():
    """docs/layout.md's floors are true: every module of the package is on one, and no
    import (lazy ones included) reaches a floor above its own."""
    modules = dict(_package_modules())
    floors = _floors()
    modules.pop("", None)  # the package's __init__
    assert sorted(set(modules) - set(floors)) == [], "modules missing from docs/layout.md"
    assert sorted(set(floors) - set(modules)) == [], "docs/layout.md names no such module"
    for m, path in modules.items():
        for d in _package_imports(path, m):
            if d in floors:
                assert floors[d] <= floors[m], f"{m} (floor {floors[m]}) imports {d} ({floors[d]})"
