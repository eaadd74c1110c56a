# Copyright 2026 The sgd-influence-plugin authors. Apache License 2.0.
"""Neural Network Console post-process plugin: check the SGD-influence scores on this model.

Run from a training-result folder (the console does this on right-click > plugin). It only
parses the dialog's arguments, builds the settings and calls the package.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Installed by 'sgd-influence install-plugin': the package sits beside this script. In a
# checkout, it sits four folders up (the repository root).
for candidate in (HERE, os.path.abspath(os.path.join(HERE, "..", "..", "..", ".."))):
    if os.path.isdir(os.path.join(candidate, "sgd_influence_plugin")):
        sys.path.insert(0, candidate)
        break

DESCRIPTION = """SGD-influence check: do the influence scores hold on this model and data?

Computes one trial of the SGD-influence, then runs the replayed epoch again exactly without
each of M training samples (a third most harmful, a third most helpful, the rest random) and
compares the estimates with the actual change of the validation loss: Pearson and Spearman
correlation, a scatter plot and a verdict (good: Spearman >= 0.7, weak: >= 0.3, else poor).
ReLU kinks make exact leave-one-out differences noisy, so a weak verdict on a ReLU network
does not by itself make the ranking useless. Files are named after the output CSV
(check.csv: check_plot.png, check_settings.yaml); files the plugin did not write are never
replaced.

Hara, Nitanda, Maehara, "Data Cleansing for Models Trained with SGD", NeurIPS 2019.
Suzuki, Kobayashi, Narihira, "Data Cleansing for Deep Neural Networks with Storage-efficient
Approximation of Influence Functions", 2021.
"""


def build_parser():
    """The dialog: every help text carries the console's type hint and the default."""
    # The meanings are the package's (one text per option for every interface); the console
    # runs this script to build the dialog, with the package found as above.
    from sgd_influence_plugin.fidelity import DEFAULT_SAMPLES, MIN_SAMPLES
    from sgd_influence_plugin.options import HELP

    p = argparse.ArgumentParser(
        description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "-m",
        "--model",
        default="results.nnp",
        help=HELP["model"] + "; ignored when --config is given (model) default=results.nnp",
    )
    p.add_argument(
        "-c",
        "--config",
        default="",
        help=HELP["config"] + " (nntxt) default=",
    )
    p.add_argument("-p", "--params", default="", help=HELP["params"] + " (file) default=")
    p.add_argument(
        "-t",
        "--train",
        default="",
        help=HELP["train"] + "; empty = the one in the network definition (csv) default=",
    )
    p.add_argument(
        "-v",
        "--val",
        default="",
        help=HELP["val"] + "; empty = the one in the network definition (csv) default=",
    )
    p.add_argument(
        "-o",
        "--output",
        default="sgd_influence/check.csv",
        help="check CSV to write, one row per checked sample (csv) default=sgd_influence/check.csv",
    )
    p.add_argument(
        "-n",
        "--samples",
        type=int,
        default=DEFAULT_SAMPLES,
        help=HELP["check.samples"] + f"; at least {MIN_SAMPLES} (int) default={DEFAULT_SAMPLES}",
    )
    p.add_argument(
        "-e",
        "--epochs",
        type=int,
        default=1,
        help=HELP["epochs"] + " (int) default=1",
    )
    p.add_argument(
        "-s",
        "--seed",
        type=int,
        default=0,
        help=HELP["check.seed"] + " (int) default=0",
    )
    p.add_argument(
        "-b",
        "--batch_size",
        type=int,
        default=0,
        help=HELP["batch_size"] + "; 0 = the training dataset's (int) default=0",
    )
    p.add_argument(
        "-l",
        "--lr",
        default="auto",
        help=HELP["lr"] + " (text) default=auto",
    )
    p.add_argument(
        "-a",
        "--cache",
        default="final",
        help=HELP["cache"] + " (option:final,all) default=final",
    )
    p.add_argument(
        "--context", default="cpu", help=HELP["context"] + " (option:cpu,cudnn) default=cpu"
    )
    return p


def main(argv=None):
    """Parse the dialog's arguments, run the check, report through nnabla's logger."""
    args = build_parser().parse_args(argv)
    from nnabla import logger

    from sgd_influence_plugin import interrupts
    from sgd_influence_plugin.check import CheckRequest, run_check, verdict_line
    from sgd_influence_plugin.cli import report_errors
    from sgd_influence_plugin.progress import LogProgress
    from sgd_influence_plugin.settings import InfluenceSettings
    from sgd_influence_plugin.validation import PLUGIN_FLAGS

    def say(message):
        logger.log(99, message)

    # --model has a default, so it counts as given together with --config only when changed.
    model_default = build_parser().get_default("model")
    model = args.model if not args.config or args.model != model_default else None

    def call():
        request = CheckRequest(
            output=args.output,
            model=model,
            config=args.config or None,
            params=args.params or None,
            train=args.train or None,
            val=args.val or None,
            settings=InfluenceSettings(
                lr=args.lr,
                batch_size=args.batch_size or None,
                epochs=args.epochs,
                seed=args.seed,
                cache=args.cache,
                context=args.context,
            ),
            samples=args.samples,
        )
        paths, result = run_check(request, log=say, progress=LogProgress(say), flags=PLUGIN_FLAGS)
        say(f"check CSV: {paths['csv']}; plot: {paths.get('plot', 'left out (no matplotlib)')}")
        say(verdict_line(result))
        say("SGD influence check completed successfully.")
        return 0

    with interrupts.stop_requests():  # Ctrl-C / SIGTERM stop cleanly at the next step
        return report_errors(call, logger.critical)


if __name__ == "__main__":
    status = main()
    from sgd_influence_plugin.interrupts import exit_process

    exit_process(status)  # after an interrupt, no exit work that a late Ctrl-C could break
