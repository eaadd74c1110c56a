"""Which command and which dialog takes which option, and the parsers generated from the
option table (:mod:`.options`): the ``sgd-influence`` subcommands' options, the console
dialogs' options, the values a dialog gives, and how each interface spells an option in
messages.

Where a command means something else by an option (``check``'s ``--seed``), :data:`VARIANTS`
holds that command's version, changing only what differs.

The console entry scripts use it (through :mod:`.console_dialog`) to build their dialog
before anything heavy is imported: it imports the standard library only.
"""

import argparse
import re
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from .options import OPTIONS, SETTINGS, Dialog, Option

_O = OPTIONS


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``PROG: error: MESSAGE (see PROG
    --help)``) and exit 2, without the usage block argparse prints before them: every
    refusal of this tool is one line. Subparsers are of this class too.
    """

    def error(self, message: str):
        """Print the one line to stderr and exit 2 (argparse's own exit code)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: ``command.name`` -> the option ``name`` as that command has it (only what differs).
VARIANTS: Dict[str, Option] = {
    "check.output": _O["output"].vary(
        help="check CSV to write (a new .csv file, or one sgd-influence wrote): one row per "
        "checked sample; beside it go STEM_plot.png and STEM_settings.yaml, where STEM is its "
        "name without .csv",
        dialog=Dialog(
            "-o",
            hint="csv",
            default="sgd_influence/check.csv",
            text="check CSV to write, one row per checked sample",
        ),
    ),
    "check.seed": _O["seed"].vary(help="seed of the sample order and of the random samples"),
    "check.quiet": _O["quiet"].vary(
        help="no progress bars or messages; the one-line verdict is still printed"
    ),
    "cleanse.output": _O["output"].vary(
        help="cleansed CSV to write (a new .csv file, or one sgd-influence wrote)"
    ),
    "cleanse.train": _O["train"].vary(help="the training CSV it was computed for"),
    "cleanse.remove_ratio": _O["remove_ratio"].vary(
        detail=", 0 <= R < 1, rounded to whole rows, or N",
        absent="apply the influence CSV's action column",
    ),
    "evaluate.train": _O["train"].vary(absent="the network definition's training dataset"),
    "evaluate.val": _O["val"].vary(absent="the network definition's validation dataset"),
    "evaluate.jobs": _O["jobs"].vary(absent="the usable cores"),
}


def get(key: str) -> Option:
    """The option of ``key``: a name, or ``command.name`` for a command's variant."""
    return VARIANTS[key] if key in VARIANTS else OPTIONS[key]


#: Title of the argument group that holds the options a command cannot run without.
REQUIRED = "required arguments"
#: Title of the group of the model's options.
MODEL = "model (required: --model, or --config with --params)"
#: Title marking a mutually exclusive group (at most one of its options).
EXCLUSIVE = "at most one of"
_MODEL_KEYS = ("model", "config", "params")

#: Each subcommand's options: ``(group title, keys)`` in the order they are added; title None
#: = the parser's own options.
COMMANDS: Dict[str, Tuple[Tuple[Optional[str], Tuple[str, ...]], ...]] = {
    "run": (
        (REQUIRED, ("output",)),
        (MODEL, _MODEL_KEYS),
        (None, ("train", "val", "batch_size", "lr", "weight_decay", "epochs", "trials",
                "retries", "seed", "replay_step", "jobs", "cache", "target", "cache_dir",
                "context", "report", "thumb_size", "label_names", "remove_ratio",
                "no_recommend", "cluster", "quiet")),
    ),
    "cleanse": (
        (REQUIRED, ("influence", "cleanse.train", "cleanse.output")),
        (EXCLUSIVE, ("remove", "cleanse.remove_ratio")),
    ),
    "evaluate": (
        (REQUIRED, ("test", "output_dir")),
        (MODEL, _MODEL_KEYS),
        (None, ("evaluate.train", "evaluate.val", "ratios", "seeds", "retrain", "noise",
                "epochs", "trials", "lr", "batch_size", "weight_decay", "replay_step",
                "evaluate.jobs", "cache", "context", "cluster", "quiet")),
    ),
    "check": (
        (REQUIRED, ("check.output",)),
        (MODEL, _MODEL_KEYS),
        (None, ("train", "val", "samples", "batch_size", "lr", "weight_decay", "epochs",
                "check.seed", "cache", "context", "cluster", "check.quiet")),
    ),
    "install-plugin": ((None, ("plugins_dir",)),),
}  # fmt: skip

_INPUTS = _MODEL_KEYS + ("train", "val")
_RUN = _INPUTS + ("output", "epochs", "trials", "jobs", "replay_step", "seed", "batch_size",
                  "lr", "cache", "remove_ratio", "report", "context", "label_names")  # fmt: skip
#: Each console dialog (entry script kind) and the options it shows, in order.
DIALOGS: Dict[str, Tuple[str, ...]] = {
    "image": _RUN,
    "table": _RUN,
    "check": _INPUTS + ("check.output", "samples", "epochs", "check.seed", "batch_size", "lr",
                        "cache", "context"),
}  # fmt: skip


def command_help(opt: Option, required: bool = False) -> str:
    """The command line's help of ``opt``: what it means, then its default (none for a
    ``required`` option, which the help groups under :data:`.options.REQUIRED`).
    """
    text = opt.help + opt.detail
    if not opt.flag.startswith("-"):
        return text + " (required)"
    if required:
        return text
    if opt.kind is bool:
        return text + " (default: off)"
    if opt.default is not None:
        return text + " (default: %(default)s)"
    return text + (f" (default: {opt.absent})" if opt.absent else "")


def add_arguments(
    parser, keys: Sequence[Union[str, Option]], required: bool = False, **changes
) -> None:
    """Add the command-line options ``keys`` to ``parser`` (an argparse parser or group), each
    as the table declares it.

    Args:
        keys: option names, :data:`VARIANTS` keys, or :class:`~.options.Option` rows of a
            script's own table (``options.table(ItsArguments).values()``).
        required: the options must be given (no default is shown).
        changes: ``name=dict(...)``: :class:`~.options.Option` fields to change for this
            parser only (a script's own default, say), e.g. ``ratios=dict(default="0.1")``.

    """
    for key in keys:
        opt = key if isinstance(key, Option) else get(key)
        if opt.name in changes:
            opt = opt.vary(**changes[opt.name])
        if opt.flag is None:
            raise ValueError(f"{opt.name}: not a command-line option")
        how: Dict[str, Any] = dict(help=command_help(opt, required))
        if opt.flag.startswith("-"):
            how["dest"] = opt.name
        if opt.metavar:
            how["metavar"] = opt.metavar
        if opt.kind is bool:
            how["action"] = "store_true"
        else:
            if opt.kind in (int, float):
                how["type"] = opt.kind
            if opt.default is not None:
                how["default"] = opt.default
            if opt.choices:
                how["choices"] = opt.choices
            if required:
                how["required"] = True
        parser.add_argument(opt.flag, **how)


def add_command_options(parser, command: str) -> None:
    """Add subcommand ``command``'s options (:data:`COMMANDS`) to its argparse parser."""
    for title, keys in COMMANDS[command]:
        if title is None:
            target = parser
        elif title == EXCLUSIVE:
            target = parser.add_mutually_exclusive_group()
        else:
            target = parser.add_argument_group(title)
        add_arguments(target, keys, required=title == REQUIRED)


def add_dialog_options(parser, kind: str) -> None:
    """Add dialog ``kind``'s options (:data:`DIALOGS`) to its argparse parser: every help ends
    with the console's type hint and the default, as the console reads them.
    """
    for key in DIALOGS[kind]:
        opt = get(key)
        hint, value = opt.dialog_hint, opt.dialog_default
        flags = ((opt.dialog.short,) if opt.dialog.short else ()) + (opt.dialog_flag,)
        help_text = f"{opt.dialog.text.format(help=opt.help)} ({hint}) default={value}"
        if hint == "bool":
            parser.add_argument(*flags, action="store_true", help=help_text)
        else:
            kind_of = int if hint == "int" else None
            parser.add_argument(*flags, default=value, type=kind_of, help=help_text)


def from_dialog(args: argparse.Namespace, names: Sequence[str]) -> Dict[str, Any]:
    """The values of dialog options ``names`` from a parsed dialog: where the option's default
    is None, the dialog's "not given" (``0`` or ``""``, see :class:`~.options.Dialog`) is None.
    """
    out = {}
    for name in names:
        value = getattr(args, name)
        out[name] = None if OPTIONS[name].default is None and value in (0, "") else value
    return out


def dialog_settings(args: argparse.Namespace, kind: str) -> Dict[str, Any]:
    """The :class:`~.options.ScoreArguments` fields dialog ``kind`` shows, from its parsed
    ``args`` (see :func:`from_dialog`).
    """
    shown = [get(k).name for k in DIALOGS[kind]]
    return from_dialog(args, [n for n in shown if n in SETTINGS])


def settings_given(args: Any) -> Dict[str, Any]:
    """The :class:`ScoreArguments` fields that ``args`` (a parsed command line) has."""
    return {k: getattr(args, k) for k in SETTINGS if hasattr(args, k)}


def spellings(interface: str) -> Dict[str, Optional[str]]:
    """Option name -> how ``interface`` spells it in messages: ``"cli"`` (``--batch-size``)
    or ``"dialog"`` (``--batch_size``); None where it has no such option.
    """
    if interface == "cli":
        shown = {get(k).name for groups in COMMANDS.values() for _, keys in groups for k in keys}
        return {n: o.flag if n in shown else None for n, o in OPTIONS.items()}
    if interface == "dialog":
        shown = {get(k).name for keys in DIALOGS.values() for k in keys}
        return {n: o.dialog_flag if n in shown else None for n, o in OPTIONS.items()}
    raise ValueError(f"unknown interface {interface!r}")


#: An option as a message may name it: ``--`` and a name of letters, digits, '-' or '_'.
_NAMED_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")


def respelled(message: str, interface: str) -> str:
    """``message`` with every option it names spelled as ``interface`` spells it
    (:func:`spellings`: ``--replay_step`` becomes ``--replay-step`` for ``"cli"`` and back for
    ``"dialog"``); flags of no option, or of one the interface lacks, stay as written.
    """
    names = spellings(interface)

    def spell(match) -> str:
        return names.get(match.group(0)[2:].replace("-", "_")) or match.group(0)

    return _NAMED_FLAG.sub(spell, message)
