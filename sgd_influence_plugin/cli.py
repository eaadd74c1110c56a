"""The ``sgd-influence`` command: run, cleanse, evaluate, check, install-plugin.

Errors the user can fix exit with status 2 and one line on stderr, before anything is
computed; Ctrl-C or SIGTERM exits 130 with one line and leaves no partial output.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import List, Optional

from . import interrupts, option_parsers
from .errors import OutputError, SGDInfluenceError
from .settings import InfluenceSettings

SIGN_NOTE = (
    "Influence = estimated change of the mean validation loss if the sample were "
    "removed from training (by default minus the same for an average sample of its class, "
    "see --target); negative = harmful. The CSV is sorted ascending: the most "
    "harmful samples come first."
)


#: What each subcommand does: ``(help, description)``; its options come from
#: :data:`.option_parsers.COMMANDS`.
SUBCOMMANDS = {
    "run": (
        "compute SGD-influence and write the sorted influence CSV",
        "Compute the SGD-influence of every training sample (Hara et al. 2019) with the "
        "storage-efficient replay of Suzuki et al. 2021, and write an influence CSV with "
        "thumbnails. " + SIGN_NOTE,
    ),
    "cleanse": (
        "write the training CSV with the recommendation applied",
        "Write a console dataset CSV with the influence CSV's recommendation applied (rows "
        "marked relabel get suggested_label, rows marked remove are dropped), or, with "
        "--remove/--remove-ratio, without the top-N (or top share of) harmful rows instead. "
        "Other columns are kept; file paths are rewritten relative to the new CSV's folder. "
        "The training CSV is not modified.",
    ),
    "evaluate": (
        "the data-cleansing experiment (Hara et al. 2019, Figure 2)",
        "Remove the top-n harmful (or n random) training samples, retrain, and measure test "
        "accuracy, for several n and seeds; writes a results CSV and a plot.",
    ),
    "check": (
        "measure how well the scores match exact leave-one-out on your model",
        "Compute one trial of the influence, then re-run the replayed epoch exactly without "
        "each of M samples (the most harmful, the most helpful and random ones) and report "
        "the Pearson and Spearman correlation between the estimates and the actual change of "
        "the mean validation loss, a scatter plot and a verdict (good: Spearman >= 0.7, weak: "
        ">= 0.3, else poor). ReLU kinks lower the correlation of exact leave-one-out "
        "differences, so a weak verdict on a ReLU network does not by itself make the ranking "
        "useless.",
    ),
    "install-plugin": (
        "copy the console plugin into Neural Network Console",
        "Copy the console entry script(s) into NNC's plugins folder (e.g. "
        "C:\\...\\neural_network_console\\libs\\plugins) and the package beside each script, so "
        "the console's Python imports this package from there (it also needs what the package "
        "imports: numpy, h5py, PyYAML, Pillow and tqdm, which nnabla itself requires, and "
        "matplotlib for the check's plot and the report). Only what install-plugin itself "
        "installed there earlier is replaced (the package as a whole); any other file or "
        "folder of those names, in any case, is refused.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``sgd-influence`` argument parser."""
    parser = option_parsers.OneLineParser(prog="sgd-influence", description=SIGN_NOTE)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (summary, description) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=summary, description=description)
        option_parsers.add_command_options(p, name)
        p.set_defaults(func=_COMMANDS[name])
    return parser


def _say(quiet: bool):
    """The run's messages on stderr (nothing when ``quiet``), options spelled as here."""
    if quiet:
        return lambda m: None
    return lambda m: print(option_parsers.respelled(m, "cli"), file=sys.stderr)


def _settings_from(args) -> InfluenceSettings:
    """The settings from a subcommand's options (those it has)."""
    return InfluenceSettings(**option_parsers.settings_given(args))


def cmd_run(args) -> int:
    """``sgd-influence run``."""
    from .progress import TqdmProgress
    from .runner import RunRequest, run

    settings = _settings_from(args)
    req = RunRequest(
        output=args.output,
        model=args.model,
        config=args.config,
        params=args.params,
        train=args.train,
        val=args.val,
        settings=settings,
        cache_dir=args.cache_dir,
        report=args.report,
        thumb_size=args.thumb_size,
        label_names=args.label_names,
        remove_ratio=args.remove_ratio,
        recommend=not args.no_recommend,
        cluster=args.cluster,
    )
    say = _say(args.quiet)
    paths, result = run(req, log=say, progress=TqdmProgress(not args.quiet))
    say(f"influence CSV: {paths.csv}")
    say(f"cleansed CSV (retrain on it): {paths.cleansed}")
    if paths.report:
        say(f"report: {paths.report}")
    say(f"summary: {paths.summary}")
    return 0


def cmd_check(args) -> int:
    """``sgd-influence check``: prints the one-line verdict on stdout."""
    from .check import CheckRequest, run_check, verdict_line
    from .progress import TqdmProgress

    settings = _settings_from(args)
    req = CheckRequest(
        output=args.output,
        model=args.model,
        config=args.config,
        params=args.params,
        train=args.train,
        val=args.val,
        settings=settings,
        samples=args.samples,
        cluster=args.cluster,
    )
    say = _say(args.quiet)
    paths, result = run_check(req, log=say, progress=TqdmProgress(not args.quiet))
    say(f"check CSV: {paths['csv']}; plot: {paths.get('plot', 'left out (no matplotlib)')}")
    print(verdict_line(result))
    return 0


def cmd_cleanse(args) -> int:
    """``sgd-influence cleanse``."""
    from .cleanse import cleanse

    out = cleanse(
        args.influence, args.train, args.output, remove=args.remove, remove_ratio=args.remove_ratio
    )
    print(
        f"removed {len(out['removed'])} rows, relabelled {len(out['relabelled'])}, kept "
        f"{out['kept']}: {out['output']}",
        file=sys.stderr,
    )
    return 0


def plugin_sources() -> List[str]:
    """The console entry scripts shipped with the package (paths under ``plugins/``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.join(os.path.dirname(here), "plugins")
    out = []
    for folder, _, files in os.walk(root):
        out += [os.path.join(folder, f) for f in files if f.endswith(".py")]
    return sorted(out)


#: The console's own SGD-influence plugin, ``_XAI/_Image/SGD_influence.py``: no script of this
#: package may share its name, in any case (Windows, where the console runs, ignores case).
CONSOLE_PLUGIN = "SGD_influence.py"
#: The option that names the destination, for messages.
_INSTALL_FLAG = "NNC_PLUGINS_DIR"


def _check_install_place(folder: str, names: List[str], package: str) -> None:
    """Refuse to install into ``folder`` over anything ``install-plugin`` did not put there.

    Each script must be absent, or listed with its current content in the folder's ledger
    (see :mod:`.ownership`); the package folder absent, or holding the folder marker; and no
    entry of the folder may differ from one of those names only in case.
    """
    import tempfile

    from . import ownership
    from .io_utils import nearest_existing

    parent = nearest_existing(folder)
    try:
        if not os.path.isdir(parent):
            raise NotADirectoryError(20, "not a folder", parent)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".sgd_influence_probe_")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(
            f"{parent}: cannot install there ({e.strerror or e}); check the folder "
            "and its permissions (the console's folder may need administrator rights)"
        ) from e
    entries = os.listdir(folder) if os.path.isdir(folder) else []
    if entries:
        ownership.read_ledger(folder)
    for name in names + [package]:
        if name.casefold() == CONSOLE_PLUGIN.casefold():
            raise SGDInfluenceError(
                f"{name}: this package's script has the name of the console's own plugin; "
                "it must never be installed (report this as a bug)"
            )
        path = os.path.join(folder, name)
        for entry in entries:
            if entry != name and entry.casefold() == name.casefold():
                raise OutputError(
                    f"{os.path.join(folder, entry)}: differs from this plugin's {name} only in "
                    "case, and on Windows, where the console runs, they are the same file; it "
                    "is left alone. Move it away, or install into another folder"
                )
        if os.path.isdir(path) and not os.path.islink(path):
            ownership.check_folder_contents(path, _INSTALL_FLAG)
        if os.path.lexists(path) and not ownership.written_by_tool(path):
            what = "folder" if os.path.isdir(path) else "file"
            earlier = (
                f" (a copy from before this rule has no {ownership.FOLDER_MARKER} marker: "
                "delete it and install again)"
                if name == package and os.path.isdir(path)
                else ""
            )
            raise OutputError(
                f"{path}: already exists and was not installed by sgd-influence (or was "
                f"changed since){earlier}; it is left alone. Move that {what} away, or install "
                "into another folder"
            )


def _check_plugins_folder(target: str) -> None:
    """The console's plugins folder: given, an existing folder (a mistyped path would
    "succeed" in a new folder the console never reads).

    Raises:
        SettingsError: empty; OutputError: a file, or no such folder.

    """
    from .errors import SettingsError
    from .io_utils import what_is

    where = "the console's plugins folder (...\\neural_network_console\\libs\\plugins)"
    if not target or not target.strip():
        raise SettingsError(f"{_INSTALL_FLAG} is empty; give {where}")
    if os.path.lexists(target) and not os.path.isdir(target):
        raise OutputError(f"{target}: is {what_is(target)}, not a folder; give {where}")
    if not os.path.lexists(target):
        raise OutputError(f"{target}: no such folder; give {where}, which its installation has")


def cmd_install_plugin(args) -> int:
    """``sgd-influence install-plugin``: script(s) plus a copy of the package beside each.

    The rule of :mod:`.ownership`: only a script this command installed (listed in the
    folder's ledger, unchanged) and a package folder it made (holding the folder marker) are
    replaced; anything else of those names, in any case, is refused before anything is
    written. Each folder's files are staged and committed together.
    """
    from . import ownership, staged_commit
    from .io_utils import folder_mode

    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.join(os.path.dirname(here), "plugins")
    scripts = plugin_sources()
    if not scripts:
        raise SGDInfluenceError(
            f"no plugin scripts found under {root}; install from a checkout of the repository"
        )
    target = args.plugins_dir
    _check_plugins_folder(target)
    package = "sgd_influence_plugin"
    plan: dict = {}  # destination folder -> the scripts that go there
    for script in scripts:
        rel = os.path.relpath(script, root)
        plan.setdefault(os.path.join(target, os.path.dirname(rel)), []).append(script)
    for dest_dir, group in plan.items():
        _check_install_place(dest_dir, [os.path.basename(s) for s in group], package)
    for dest_dir, group in plan.items():
        with staged_commit.staging(dest_dir, _INSTALL_FLAG) as stage:
            moves = []
            for script in group:
                staged = os.path.join(stage, os.path.basename(script))
                shutil.copyfile(script, staged)
                moves.append((staged, os.path.join(dest_dir, os.path.basename(script))))
            staged_pkg = os.path.join(stage, package)
            shutil.copytree(here, staged_pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            os.chmod(staged_pkg, folder_mode())  # the user's usual folder permissions
            ownership.mark_folder(  # lists every file: one added or edited stops a reinstall
                staged_pkg,
                about="Installed by sgd-influence install-plugin, which replaces "
                "this folder as a whole.\n",
                listing=True,
            )
            moves.insert(0, (staged_pkg, os.path.join(dest_dir, package)))
            staged_commit.commit_staged(dest_dir, moves, [], _INSTALL_FLAG)
        for script in group:
            print(f"installed {os.path.join(dest_dir, os.path.basename(script))}", file=sys.stderr)
    return 0


def cmd_evaluate(args) -> int:
    """``sgd-influence evaluate``."""
    from .evaluate import run_from_args

    return run_from_args(args)


_COMMANDS = {
    "run": cmd_run,
    "cleanse": cmd_cleanse,
    "evaluate": cmd_evaluate,
    "check": cmd_check,
    "install-plugin": cmd_install_plugin,
}


def report_errors(call, say_error, say_interrupt=None) -> int:
    """Run ``call()`` and turn the project's errors and interrupts into an exit status.

    Args:
        call: returns the exit status on success.
        say_error: prints one line for the user.
        say_interrupt: prints the interrupt's line (default: ``say_error``).

    Returns:
        ``call()``'s status; 2 after an :class:`SGDInfluenceError` or a MemoryError (one line
        naming the stage, :func:`.memory.memory_error_line`); 130 after Ctrl-C or SIGTERM
        (also when nnabla's C++ code wrapped the interrupt in another error).

    """
    try:
        return call()
    except SGDInfluenceError as e:
        say_error(str(e))
        return 2
    except MemoryError as e:
        from .memory import memory_error_line

        say_error(memory_error_line(e))
        return 2
    except BaseException as e:  # noqa: BLE001 - only interrupts are handled here
        if interrupts.is_interrupt(e):
            (say_interrupt or say_error)(interrupts.MESSAGE)
            return 130
        raise


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``sgd-influence``; returns the exit status."""
    import logging

    # Configured before nnabla is imported, so its import-time INFO lines stay quiet (nnabla
    # calls logging.basicConfig, which does nothing once the root logger is set up).
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    # Ctrl-C and SIGTERM stop at the next step; temporary caches and staged outputs go.
    with interrupts.stop_requests():
        return report_errors(
            lambda: args.func(args),
            lambda m: _stderr(f"error: {option_parsers.respelled(m, 'cli')}"),
            _stderr,
        )


def _stderr(line: str) -> None:
    print(f"sgd-influence: {line}", file=sys.stderr)


if __name__ == "__main__":
    interrupts.exit_process(main())
