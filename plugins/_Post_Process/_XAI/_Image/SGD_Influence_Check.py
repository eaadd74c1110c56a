# Copyright 2026 The sgd-influence-plugin authors. Apache License 2.0.
"""Neural Network Console post-process plugin: check the SGD-influence scores on this model.

Run from a training-result folder (the console does this on right-click > plugin). The
dialog and the run live in the package (``sgd_influence_plugin/console_dialog.py``); this
script only finds the package and calls it.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Installed by 'sgd-influence install-plugin': the package sits beside this script. In a
# checkout, it sits four folders up (the repository root).
for candidate in (HERE, os.path.abspath(os.path.join(HERE, "..", "..", "..", ".."))):
    if os.path.isdir(os.path.join(candidate, "sgd_influence_plugin")):
        sys.path.insert(0, candidate)
        break

from sgd_influence_plugin import launch  # noqa: E402 - after finding the package

launch.early_stop_handling()  # a Ctrl-C while the rest imports: one line, exit 130
from sgd_influence_plugin import console_dialog  # noqa: E402

KIND = "check"


def build_parser():
    """The dialog (the console builds it from this parser's help)."""
    return console_dialog.build_parser(KIND)


def main(argv=None):
    """Parse the dialog's arguments, run the check, report through nnabla's logger."""
    return console_dialog.main(argv, KIND)


if __name__ == "__main__":
    status = main()
    from sgd_influence_plugin.interrupts import exit_process

    exit_process(status)  # after an interrupt, no exit work that a late Ctrl-C could break
