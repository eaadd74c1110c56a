"""The test suite's own layout: no test module imports another test module or ``conftest``
(shared helpers live in ``support/``, shared fixtures in ``conftest.py``), and no script puts
``tests/`` on the import path to reach them."""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
SCRIPT_FOLDERS = ("support", "samples", "experiments", "benchmarks", "scripts")


def _python_files(*folders):
    for folder in folders:
        for parent, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in sorted(names):
                if name.endswith(".py"):
                    yield os.path.join(parent, name)


def _imported(path):
    """Top-level names of every module ``path`` imports, at any depth of its code."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


def test_no_test_imports_another_test_or_conftest():
    test_modules = {
        name[: -len(".py")]
        for name in os.listdir(TESTS)
        if name.endswith(".py") and (name.startswith("test_") or name == "conftest.py")
    }
    assert "conftest" in test_modules and "test_suite_layout" in test_modules
    found = {
        os.path.relpath(path, ROOT): sorted(_imported(path) & test_modules)
        for path in _python_files("tests", *SCRIPT_FOLDERS)
    }
    assert {k: v for k, v in found.items() if v} == {}


def test_no_script_puts_the_tests_folder_on_the_path():
    quoted = {q + "tests" + q for q in "\"'"}  # built here, so this file does not match itself
    for path in _python_files("tests", *SCRIPT_FOLDERS):
        for line in open(path).read().splitlines():
            if "sys.path" in line:
                assert not any(q in line for q in quoted), (os.path.relpath(path, ROOT), line)
