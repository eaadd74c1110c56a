"""The entry scripts run in a Python that has nnabla and nnabla's own requirements only, as
the console's bundled Python does: no matplotlib, no Dask, nothing of this package installed
(the scripts find it beside them). The environment is made here from the package cache that
``make env`` filled (offline), so nothing is downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support.results import IMAGE_SCRIPT, TABLE_SCRIPT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UV = os.path.join(ROOT, ".cache", "uv-tool", "bin", "uv")
CHECK_SCRIPT = os.path.join(os.path.dirname(IMAGE_SCRIPT), "SGD_Influence_Check.py")


@pytest.fixture(scope="module")
def nnabla_only(tmp_path_factory):
    """The python of a fresh environment with ``nnabla==1.39.0`` and what it requires."""
    if not os.path.isfile(UV):
        pytest.skip("no uv under .cache/uv-tool (run 'make env' first)")
    env = dict(os.environ, UV_CACHE_DIR=os.path.join(ROOT, ".cache", "uv"))
    env["UV_PYTHON_DOWNLOADS"] = "never"
    venv = str(tmp_path_factory.mktemp("console_python") / "venv")
    subprocess.run([UV, "venv", "-q", "-p", sys.executable, venv], check=True, env=env)
    python = os.path.join(venv, "bin", "python")
    subprocess.run(
        [UV, "pip", "install", "-q", "--offline", "-p", python, "-c",
         os.path.join(ROOT, "constraints.txt"), "nnabla==1.39.0"],
        check=True, env=env, timeout=300,
    )  # fmt: skip
    for missing in ("matplotlib", "distributed", "sgd_influence_plugin"):
        probe = subprocess.run(
            [python, "-c", f"import {missing}"], capture_output=True, cwd=venv, env=_clean_env()
        )
        assert probe.returncode != 0, f"{missing} is installed in the console-like Python"
    return python


def _clean_env():
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _run(python, script, cwd, *args):
    proc = subprocess.run(
        [python, script, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
        env=_clean_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_both_entry_scripts_and_the_check_run_with_nnabla_alone(nnabla_only, trained):
    data, result = trained("table")
    _run(nnabla_only, TABLE_SCRIPT, result, "-t", data["train"], "-v", data["val"], "--report")
    report = open(os.path.join(result, "sgd_influence", "influence_report.html")).read()
    assert "matplotlib is not installed" in report and "Pclass=" in report
    data, result = trained("colour")
    _run(nnabla_only, IMAGE_SCRIPT, result, "-t", data["train"], "-v", data["val"], "--report")
    assert os.path.isfile(os.path.join(result, "sgd_influence", "influence_report.html"))
    _run(nnabla_only, CHECK_SCRIPT, result, "-t", data["train"], "-v", data["val"], "-n", "4")
    check = os.path.join(result, "sgd_influence")
    assert os.path.isfile(os.path.join(check, "check.csv"))
    assert not os.path.exists(os.path.join(check, "check_plot.png"))
    assert "matplotlib is not installed" in open(os.path.join(check, "check_settings.yaml")).read()
