"""The console's run dialog (``SGD_Influence_Cleansing.py`` for images and
``SGD_Influence_Table.py`` for tables): its options, as the console reads them from the
script's argparse help, and the call into the package. The entry scripts only find the
package and call :func:`main`.
"""

import argparse

from .errors import SettingsError
from .options import HELP
from .settings import DEFAULT_TRIALS, InfluenceSettings

_IMAGE = """SGD-influence: find the training samples that hurt your model.

Starting from the trained parameters, runs the last epoch of plain SGD again, keeping only the
final parameters, the sample order and the learning rates; then replays that epoch backwards to
estimate, for every training sample, how the validation loss would change if the sample were
removed. Negative influence = harmful. The output CSV is sorted so the most harmful come first,
with thumbnails. The run also recommends, for every row, keep or remove (and shows the model's
class), and keeps a change only if it lowered the loss on validation rows the influence did
not see; on clean data that is usually "change nothing". The cleansed training CSV beside the
output applies the recommendation: retrain on it. A remove ratio overrides the recommendation.
Every file is named after the output CSV (influence.csv: influence_thumbnails/,
influence_cleansed.csv, ...); files the plugin did not write are never replaced.
{papers}"""

_TABLE = """SGD-influence for tables: find the training rows that hurt your model.

For results trained on number columns (x__0:Age, x__1:Fare, ...) or on per-sample CSV files
(audio, matrices): classification (Softmax, Sigmoid + BinaryCrossEntropy) or regression
(SquaredError, HuberLoss, AbsoluteError). Starting from the trained parameters, runs the
last epoch of plain SGD again and replays it backwards to estimate, for every training row,
how the validation loss would change if the row were removed. Negative influence = harmful.
The output CSV keeps the dataset's own columns (label and features under their own names)
and is sorted so the most harmful rows come first. For a classifier the run shows the
model's class and recommends keep or remove for every row, checked on validation rows the
influence did not see, and writes a cleansed training CSV that applies it; a remove ratio
(any result, a regression too) leaves out the most harmful share instead. Files the plugin
did not write are never replaced.
{papers}"""

_PAPERS = """

Hara, Nitanda, Maehara, "Data Cleansing for Models Trained with SGD", NeurIPS 2019.
Suzuki, Kobayashi, Narihira, "Data Cleansing for Deep Neural Networks with Storage-efficient
Approximation of Influence Functions", 2021.
"""
#: The dialog's text for each kind of entry script (``_Image``, ``_Table``).
DESCRIPTIONS = {
    "image": _IMAGE.format(papers=_PAPERS),
    "table": _TABLE.format(papers=_PAPERS),
}


def build_parser(kind: str = "image"):
    """The dialog of entry script ``kind`` (a key of :data:`DESCRIPTIONS`): every help text
    carries the console's type hint and the default. Both kinds take the same options.
    """
    p = argparse.ArgumentParser(
        description=DESCRIPTIONS[kind], formatter_class=argparse.RawTextHelpFormatter
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
        default="sgd_influence/influence.csv",
        help="influence CSV to write (csv) default=sgd_influence/influence.csv",
    )
    p.add_argument(
        "-e",
        "--epochs",
        type=int,
        default=1,
        help=HELP["epochs"] + " (int) default=1",
    )
    p.add_argument(
        "-n",
        "--trials",
        type=int,
        default=DEFAULT_TRIALS,
        help=HELP["trials"] + f" (int) default={DEFAULT_TRIALS}",
    )
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=0,
        help=HELP["jobs"] + "; 0 = the usable cores (int) default=0",
    )
    p.add_argument(
        "--replay_step",
        default="fd",
        help=HELP["replay_step"] + " (option:fd,exact) default=fd",
    )
    p.add_argument("-s", "--seed", type=int, default=0, help=HELP["seed"] + " (int) default=0")
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
        "-r",
        "--remove_ratio",
        default="",
        help="empty = the cleansed CSV applies the recommendation; a share 0..1 = "
        + HELP["remove_ratio"]
        + " (text) default=",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help=HELP["report"] + " (bool) default=False",
    )
    p.add_argument(
        "--context", default="cpu", help=HELP["context"] + " (option:cpu,cudnn) default=cpu"
    )
    p.add_argument(
        "--label_names",
        default="",
        help=HELP["label_names"] + "; empty = the label numbers (file) default=",
    )
    return p


def _ratio(text):
    """The dialog's remove ratio: None when empty (apply the recommendation)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise SettingsError(
            f"--remove_ratio {text!r}: give a share between 0 and 1, or leave it empty to apply "
            "the recommendation"
        ) from None


def main(argv=None, kind: str = "image"):
    """Parse the dialog's arguments, run, report through nnabla's logger; exit status."""
    args = build_parser(kind).parse_args(argv)
    from nnabla import logger

    from . import interrupts
    from .cli import report_errors
    from .progress import LogProgress
    from .runner import RunRequest, run
    from .validation import PLUGIN_FLAGS

    def say(message):
        logger.log(99, message)

    # --model has a default, so it counts as given together with --config only when changed.
    model_default = build_parser(kind).get_default("model")
    model = args.model if not args.config or args.model != model_default else None

    def call():
        request = RunRequest(
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
                trials=args.trials,
                jobs=args.jobs or None,
                replay_step=args.replay_step,
                seed=args.seed,
                cache=args.cache,
                context=args.context,
            ),
            report=args.report,
            remove_ratio=_ratio(args.remove_ratio),
            label_names=args.label_names or None,
        )
        paths, _ = run(request, log=say, progress=LogProgress(say), flags=PLUGIN_FLAGS)
        say(f"influence CSV: {paths.csv}")
        say(f"cleansed training CSV: {paths.cleansed}")
        say("SGD influence completed successfully.")
        return 0

    with interrupts.stop_requests():  # Ctrl-C / SIGTERM stop cleanly at the next step
        return report_errors(call, logger.critical)
