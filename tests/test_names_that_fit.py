"""An ``--output`` name the file system takes is written; one it does not is refused before
computing (issue 34, case 4).

The hidden temporary names a writer makes (staging folders, the files written atomically in
them) are short, so they fit wherever the output's own names fit: a 230-244 byte name no
longer fails after the run with a message naming an internal ``.tmp`` file.
"""

from __future__ import annotations

import os
import re

import pytest

from sgd_influence_plugin import cli, places


@pytest.mark.parametrize("size", [230, 238, 244])
def test_a_long_name_that_fits_is_written(world_small, capsys, size):
    """Names of 230-244 bytes: every file of the set fits in 255 bytes, so the run writes them."""
    if places._limits(str(world_small["root"]))[0] != 255:
        pytest.skip("this file system does not take names of 255 bytes")
    w = world_small
    out = w["root"] / "long" / ("a" * (size - 4) + ".csv")
    assert cli.main(w["run"] + ["--output", str(out)]) == 0, capsys.readouterr().err
    assert out.exists()
    assert not [n for n in os.listdir(out.parent) if n.startswith(".sgd_influence_staging_")]


def test_a_name_too_long_for_a_companion_is_refused_with_its_length(world_small, capsys):
    """A name whose companion (``STEM_thumbnails``) would pass 255 bytes: refused up front,
    naming the option and the length, never an internal temporary file."""
    if places._limits(str(world_small["root"]))[0] != 255:
        pytest.skip("this file system does not take names of 255 bytes")
    w = world_small
    out = w["root"] / "long" / ("b" * 246 + ".csv")
    capsys.readouterr()
    assert cli.main(w["run"] + ["--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and ".tmp" not in err, err
    assert re.search(r"--output .*: a name of \d+ bytes", err), err
    assert not out.parent.exists()
