"""Every option of the tool, declared once; the parsers and dialogs are generated from here.

:class:`Arguments` has a field per option (in the spirit of kronfluence's ``arguments.py``):
its name, type and default are the field's, and :func:`option` adds the help and how each
interface shows it. Its first part, :class:`ScoreArguments`, is what decides the scores:
:class:`~.settings.InfluenceSettings` is that dataclass with its checks, and its fields are
what ``STEM_settings.yaml`` records under ``requested``.

From this table :mod:`.option_parsers` generates, following its lists of which command and
which dialog takes which option,

- the ``sgd-influence`` subcommands' options: spelled ``--batch-size``, with
  ``(default: ...)`` after the help;
- the console dialogs' options: spelled ``--batch_size``, with the console's type hint and
  ``default=...`` after the help;
- how each interface spells an option in messages (``validation.FlagNames``).

The console entry scripts import this module (through :mod:`.console_dialog`) while they
build their dialog, before anything heavy: it imports the standard library only.

To add an option: add a field to :class:`Arguments` (or to :class:`ScoreArguments` if it
changes the scores), name it in the ``COMMANDS`` and ``DIALOGS`` entries of
:mod:`.option_parsers` that take it, and add it to ``docs/options.md``.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

#: Fewest samples the check reports a correlation for.
MIN_SAMPLES = 3


class _Same:
    def __repr__(self) -> str:
        return "SAME"


#: A dialog's default that is the option's own.
SAME: Any = _Same()


@dataclass(frozen=True)
class Dialog:
    """How the console dialogs show an option.

    Attributes:
        short: the one-letter flag beside the long one (``-b``), if any.
        hint: the console's type hint: ``int``, ``bool``, ``text``, ``file``, ``csv``,
            ``model``, ``nntxt``, or ``option:A,B``; empty = from the option (``int``,
            ``bool``, ``option:`` its choices, the default first, or ``text``). It also
            decides the dialog's parsing: ``int`` an int, ``bool`` a switch, else text.
        default: the dialog's value when the option's default is None, which a dialog
            cannot show: ``0`` or ``""`` for "not given" (read back as None by
            ``option_parsers.from_dialog``), or a default of the dialog's own (the model and
            output files in the result folder).
        text: the dialog's help; ``{help}`` is the option's.

    """

    short: Optional[str] = None
    hint: str = ""
    default: Any = SAME
    text: str = "{help}"


@dataclass(frozen=True)
class Option:
    """One option, as :func:`table` reads it from a field of :class:`Arguments`.

    Attributes:
        name: the field's name: argparse's ``dest``, the settings' or request's field.
        default: the default of the command line and of the Python API.
        kind: ``int``, ``float``, ``str`` or ``bool`` (a switch), from the field's type.
        help: what the option means, for every interface.
        choices: the values accepted, if only a few.
        metavar: the command line's name for the value.
        flag: the command line's spelling: ``--`` and the name with dashes; a name without
            dashes is a positional; None: no command line option.
        absent: what the command line does when the option is not given and its default is
            None (shown as ``(default: ...)``); None: nothing is shown.
        detail: command-line text between the help and ``(default: ...)``.
        dialog: how the console dialogs show it.

    """

    name: str
    default: Any
    kind: type
    help: str
    choices: Optional[Tuple[str, ...]] = None
    metavar: Optional[str] = None
    flag: Optional[str] = None
    absent: Optional[str] = None
    detail: str = ""
    dialog: Optional[Dialog] = None

    def vary(self, **changes) -> "Option":
        """The option as one command has it (``option_parsers.VARIANTS``)."""
        return dataclasses.replace(self, **changes)

    @property
    def dialog_flag(self) -> str:
        """The dialogs' long spelling: ``--`` and the name, underscores kept."""
        return "--" + self.name

    @property
    def dialog_hint(self) -> str:
        """The console's type hint (see :class:`Dialog`)."""
        if self.dialog is None:
            raise ValueError(f"{self.name}: no dialog shows it")
        if self.dialog.hint:
            return self.dialog.hint
        if self.choices:
            first = [self.default] + [c for c in self.choices if c != self.default]
            return "option:" + ",".join(first)
        return {int: "int", bool: "bool"}.get(self.kind, "text")

    @property
    def dialog_default(self) -> Any:
        """The dialogs' default (see :class:`Dialog`)."""
        if self.dialog is None:
            raise ValueError(f"{self.name}: no dialog shows it")
        return self.default if self.dialog.default is SAME else self.dialog.default


def option(default: Any = None, *, help: str, **how) -> Any:
    """A field of :class:`Arguments`: its default, its help and the rest of :class:`Option`
    (``choices``, ``metavar``, ``flag``, ``absent``, ``detail``, ``dialog``).
    """
    return field(default=default, metadata={"help": help, **how})


_EMPTY_DATASET = "; empty = the one in the network definition"


@dataclass
class ScoreArguments:
    """What decides the scores, in the order ``settings.yaml`` records them (base of
    :class:`~.settings.InfluenceSettings`, which checks them).
    """

    # auto: see curvature.py; solver: lr, or alpha for Adam-type solvers.
    lr: Union[str, float] = option(
        "auto",
        help="learning rate of the replayed epoch: auto = the largest stable rate for the "
        "measured curvature (at most the console's base rate), solver = the console's final "
        "rate (its lr/alpha where it has no schedule), or a number",
        dialog=Dialog("-l"),
    )
    weight_decay: Optional[float] = option(
        help="L2 coefficient of the replayed epoch", absent="the solver's weight_decay"
    )
    batch_size: Optional[int] = option(
        help="mini-batch size of the replayed epoch",
        absent="the training dataset's",
        dialog=Dialog("-b", default=0, text="{help}; 0 = the training dataset's"),
    )
    epochs: int = option(
        1, help="SGD epochs of the training phase; the last is replayed", dialog=Dialog("-e")
    )
    trials: int = option(
        1,  # see docs/measurements.md
        help="independent trials combined (sample orders from seeds seed, seed + 1, ...), each "
        "scaled to a common size",
        dialog=Dialog("-n"),
    )
    # An unstable trial: non-finite scores, or the query vector growing more than
    # trials.GROWTH_LIMIT times.
    retries: int = option(
        2,
        help="times an unstable trial is run again at a quarter of its rate before the run "
        "stops with an error",
    )
    seed: int = option(0, help="seed of the first trial's sample order", dialog=Dialog("-s"))
    cache: str = option(
        "final",
        help="final = keep only the final parameters (Suzuki et al.), all = also the "
        "parameters before every step (Hara et al.)",
        choices=("final", "all"),
        dialog=Dialog("-a"),
    )
    context: str = option(
        "cpu",
        help="cpu, or cudnn[:DEVICE] with nnabla-ext-cuda installed",
        dialog=Dialog(hint="option:cpu,cudnn"),
    )
    val_batch_size: int = option(
        256, help="batch size of the validation gradient (no effect on the result)", flag=None
    )
    # fd costs about 2x a training step per replay step instead of 4-6x (replay.replay); on the
    # sample and in the leave-one-out tests both give the same precision and fidelity to 0.01.
    replay_step: str = option(
        "fd",
        help="fd = two first-order passes at theta +/- eps*u per replay step, about 2.5x "
        "faster than exact, a smoothed Hessian on ReLU networks; exact = one double-backward "
        "pass",
        choices=("exact", "fd"),
        dialog=Dialog(),
    )
    # A GPU context runs the units one after another, in the command's process.
    jobs: Optional[int] = option(
        help="worker processes for the independent units: trials (a lone trial's replay uses "
        "two), check epochs, retrainings (no effect on the results)",
        metavar="N",
        absent="the usable cores, at most the trials",
        dialog=Dialog("-j", default=0, text="{help}; 0 = the usable cores"),
    )
    # See target.py; negative = harmful either way.
    target: str = option(
        "class-centred",
        help="what a score estimates: class-centred = the change of the mean validation loss "
        "if the row were left out of the replayed epoch, minus the mean of that change over "
        "the rows of its class (a score about the row, not its label); plain = the change "
        "itself",
        choices=("class-centred", "plain"),
    )


@dataclass
class Arguments(ScoreArguments):
    """Every option: the scores' (:class:`ScoreArguments`), then the commands' files and
    switches.
    """

    output: Optional[str] = option(
        help="influence CSV to write (a new .csv file, or one sgd-influence wrote); beside it "
        "go STEM_cleansed.csv, STEM_settings.yaml, STEM_summary.txt, STEM_trials.csv and, "
        "for large images, STEM_thumbnails/ (STEM = the CSV's name without .csv)",
        dialog=Dialog(
            "-o", hint="csv", default="sgd_influence/influence.csv", text="influence CSV to write"
        ),
    )
    model: Optional[str] = option(
        help="results.nnp of a training result (network and parameters)",
        dialog=Dialog(
            "-m", hint="model", default="results.nnp", text="{help}; ignored when --config is given"
        ),
    )
    config: Optional[str] = option(
        help="net.nntxt of a training result, used with --params instead of the nnp",
        dialog=Dialog("-c", hint="nntxt", default=""),
    )
    params: Optional[str] = option(
        help="parameters .h5 for --config", dialog=Dialog("-p", hint="file", default="")
    )
    train: Optional[str] = option(
        help="training dataset CSV",
        absent="the optimizer's dataset in the network definition",
        dialog=Dialog("-t", hint="csv", default="", text="{help}" + _EMPTY_DATASET),
    )
    val: Optional[str] = option(
        help="validation dataset CSV, the one the influence is measured on",
        absent="the validation monitor's dataset in the network definition",
        dialog=Dialog("-v", hint="csv", default="", text="{help}" + _EMPTY_DATASET),
    )
    cache_dir: Optional[str] = option(
        help="keep the cache in this folder, new or empty or one sgd-influence made",
        absent="a temporary folder, removed at the end",
    )
    report: bool = option(
        False,
        help="also write the offline HTML report, STEM_report.html (STEM = the output CSV's "
        "name without .csv)",
        dialog=Dialog(),
    )
    thumb_size: int = option(
        64,
        help="images larger than a PX x PX box (16..512) are shown as reduced thumbnails "
        "in STEM_thumbnails/; images that fit are shown as they are",
        metavar="PX",
    )
    label_names: Optional[str] = option(
        help="text file with one class name per line, line 1 for label 0; the summary and "
        "the report show the names",
        metavar="FILE",
        absent="the label numbers only",
        dialog=Dialog(hint="file", default="", text="{help}; empty = the label numbers"),
    )
    remove_ratio: Optional[float] = option(
        help="override the recommendation: the cleansed CSV leaves out this share of the "
        "most harmful rows instead",
        metavar="R",
        detail=", 0 <= R < 1",
        absent="apply the recommendation",
        dialog=Dialog(
            "-r",
            hint="text",
            default="",
            text="empty = the cleansed CSV applies the recommendation; a share 0..1 = {help}",
        ),
    )
    no_recommend: bool = option(
        False,
        help="do not decide keep/remove per row: the same influence (every validation row "
        "either way), without the second replay (half of the validation rows, which orders "
        "the candidates) and the check",
    )
    cluster: Optional[str] = option(
        help="address of a Dask scheduler (tcp://HOST:PORT) whose workers run the independent "
        "units (trials, check epochs, retrainings, re-runs); same results as here "
        "(docs/cluster.md)",
        metavar="ADDRESS",
        absent="none",
    )
    quiet: bool = option(False, help="no progress bars or messages")
    samples: int = option(
        30,  # a third most harmful, a third most helpful, the rest random
        help="training samples re-run without: a third most harmful, a third most helpful, "
        f"the rest random; at least {MIN_SAMPLES}",
        metavar="M",
        dialog=Dialog("-n"),
    )
    influence: Optional[str] = option(help="influence CSV from 'sgd-influence run'")
    remove: Optional[int] = option(
        help="override the recommendation: remove the N most harmful rows, or R",
        metavar="N",
        absent="apply the influence CSV's action column",
    )
    test: Optional[str] = option(help="test CSV for the accuracy and loss")
    output_dir: Optional[str] = option(help="folder for results.csv, figure2.png, summary.md")
    ratios: str = option("0,0.01,0.02,0.05,0.1,0.2", help="shares of N to remove, comma-separated")
    seeds: str = option("0,1,2", help="seeds, comma-separated")
    retrain: str = option(
        "last",
        help="last: retrain the last epoch only; scratch: nnabla_cli train the whole definition",
        choices=("last", "scratch"),
    )
    noise: Optional[str] = option(
        help="label-noise ground truth CSV (index,...,flipped) for precision@n and recall@n",
        absent="none",
    )
    plugins_dir: Optional[str] = option(
        help="NNC's libs/plugins folder", flag="plugins_dir", metavar="NNC_PLUGINS_DIR"
    )


def _kind(annotation) -> type:
    """``int``, ``float``, ``bool`` or ``str`` from a field's type (Optional[X] is X; a
    union of ``str`` with anything is text).
    """
    args = [a for a in getattr(annotation, "__args__", (annotation,)) if a is not type(None)]
    if len(args) == 1 and args[0] in (int, float, bool, str):
        return args[0]
    return str


def table(cls=Arguments) -> Dict[str, Option]:
    """The options declared as the fields of ``cls`` (a dataclass whose fields are made by
    :func:`option`: :class:`Arguments`, or a script's own), by name, in declaration order.
    """
    out = {}
    for f in dataclasses.fields(cls):
        how = dict(f.metadata)
        how.setdefault("flag", "--" + f.name.replace("_", "-"))
        out[f.name] = Option(f.name, f.default, _kind(f.type), **how)
    return out


#: Every option by name.
OPTIONS: Dict[str, Option] = table()
#: The fields of :class:`~.settings.InfluenceSettings`, in order.
SETTINGS: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ScoreArguments))


def default(name: str) -> Any:
    """The default of option ``name``."""
    return OPTIONS[name].default


def choices(name: str) -> Tuple[str, ...]:
    """The values option ``name`` accepts."""
    values = OPTIONS[name].choices
    if values is None:
        raise ValueError(f"{name}: takes any value")
    return values
