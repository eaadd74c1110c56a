"""The console's dialogs (``SGD_Influence_Cleansing.py`` for images,
``SGD_Influence_Table.py`` for tables, ``SGD_Influence_Check.py``): their texts, their
options as the console reads them from the script's argparse help (generated from
:mod:`.options` by :mod:`.option_parsers`), and the calls into the package. The entry
scripts only find the package and call :func:`main`.

Building a dialog imports nothing heavy (:mod:`.option_parsers`, :mod:`.options` and
:mod:`.errors`, the standard library only); the run imports the rest.
"""

import argparse

from . import option_parsers
from .errors import SettingsError

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
model's class and recommends keep or remove for every row, checked on validation rows its
candidates were not chosen with, and writes a cleansed training CSV that applies it; a remove ratio
(any result, a regression too) leaves out the most harmful share instead. Files the plugin
did not write are never replaced.
{papers}"""

_PAPERS = """

Hara, Nitanda, Maehara, "Data Cleansing for Models Trained with SGD", NeurIPS 2019.
Suzuki, Kobayashi, Narihira, "Data Cleansing for Deep Neural Networks with Storage-efficient
Approximation of Influence Functions", 2021.
"""
_CHECK = """SGD-influence check: do the influence scores hold on this model and data?

Computes one trial of the SGD-influence, then runs the replayed epoch again exactly without
each of M training samples (a third most harmful, a third most helpful, the rest random) and
compares the estimates with the actual change of the validation loss: Pearson and Spearman
correlation, a scatter plot and a verdict (good: Spearman >= 0.7, weak: >= 0.3, else poor).
ReLU kinks make exact leave-one-out differences noisy, so a weak verdict on a ReLU network
does not by itself make the ranking useless. Files are named after the output CSV
(check.csv: check_plot.png, check_settings.yaml); files the plugin did not write are never
replaced.
{papers}"""
#: The dialog's text for each kind of entry script (``_Image``, ``_Table``, the check).
DESCRIPTIONS = {
    "image": _IMAGE.format(papers=_PAPERS),
    "table": _TABLE.format(papers=_PAPERS),
    "check": _CHECK.format(papers=_PAPERS),
}


def build_parser(kind: str = "image"):
    """The dialog of entry script ``kind`` (a key of :data:`.option_parsers.DIALOGS`): every help
    text carries the console's type hint and the default, as the console reads them.
    """
    p = option_parsers.OneLineParser(
        description=DESCRIPTIONS[kind], formatter_class=argparse.RawTextHelpFormatter
    )
    option_parsers.add_dialog_options(p, kind)
    return p


def _model(args):
    """The ``--model`` to use: its default counts as given beside ``--config`` only when
    changed.
    """
    default = option_parsers.get("model").dialog_default
    return args.model if not args.config or args.model != default else None


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
    """Parse the dialog's arguments, run (or check), report through nnabla's logger; exit
    status.
    """
    args = build_parser(kind).parse_args(argv)
    from nnabla import logger

    from . import interrupts
    from .cli import report_errors

    def say(message):
        logger.log(99, option_parsers.respelled(message, "dialog"))

    call = _check if kind == "check" else _run
    with interrupts.stop_requests():  # Ctrl-C / SIGTERM stop cleanly at the next step
        return report_errors(
            lambda: call(args, kind, say),
            lambda m: logger.critical(option_parsers.respelled(m, "dialog")),
        )


def _inputs(args) -> dict:
    return dict(
        output=args.output,
        model=_model(args),
        **option_parsers.from_dialog(args, ("config", "params", "train", "val")),
    )


def _settings(args, kind: str):
    """The settings the dialog shows; the others keep their defaults."""
    from .settings import InfluenceSettings

    return InfluenceSettings(**option_parsers.dialog_settings(args, kind))


def _run(args, kind: str, say) -> int:
    from .progress import LogProgress
    from .runner import RunRequest, run
    from .validation import PLUGIN_FLAGS

    request = RunRequest(
        **_inputs(args), settings=_settings(args, kind), report=args.report,
        remove_ratio=_ratio(args.remove_ratio),
        **option_parsers.from_dialog(args, ("label_names",)),
    )  # fmt: skip
    paths, _ = run(request, log=say, progress=LogProgress(say), flags=PLUGIN_FLAGS)
    say(f"influence CSV: {paths.csv}")
    say(f"cleansed training CSV: {paths.cleansed}")
    say("SGD influence completed successfully.")
    return 0


def _check(args, kind: str, say) -> int:
    from .check import CheckRequest, run_check, verdict_line
    from .progress import LogProgress
    from .validation import PLUGIN_FLAGS

    request = CheckRequest(**_inputs(args), settings=_settings(args, kind), samples=args.samples)
    paths, result = run_check(request, log=say, progress=LogProgress(say), flags=PLUGIN_FLAGS)
    say(f"check CSV: {paths['csv']}; plot: {paths.get('plot', 'left out (no matplotlib)')}")
    say(verdict_line(result))
    say("SGD influence check completed successfully.")
    return 0
