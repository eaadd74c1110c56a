"""One run from files to files; the console plugin, the CLI and the tests call :func:`run`.

The inputs are read and checked by :func:`.inputs.load_inputs` (shared with ``check``), the
scores computed by :func:`.influence.compute_influence`, the files written by :mod:`.output`.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from . import __version__, coworker, interrupts, options, places, validation
from . import recommend as recommend_mod
from .core import per_sample_losses
from .errors import OutputError
from .executor import open_executor
from .influence import InfluenceResult, compute_influence, resolve
from .inputs import load_inputs
from .io_utils import makedirs_tracked, try_lock
from .labels import check_label_names, read_label_names
from .output import OutputPaths, RunContent, write_influence_output
from .probabilities import as_probabilities
from .settings import InfluenceSettings
from .table_columns import find_columns
from .tiny_inputs import too_few_to_recommend
from .validation import CLI_FLAGS, FlagNames


@dataclass
class RunRequest:
    """Files and options of one run.

    Attributes:
        output: path of the influence CSV to write.
        model: ``results.nnp``; or ``config`` (``net.nntxt``) with ``params`` (``.h5``).
        train / val: dataset CSVs; None = the ones the network definition names (the
            optimizer's dataset and the validation monitor's), resolved from the cwd.
        settings: the influence settings.
        cache_dir: keep the cache here; None = temporary, removed at the end.
        report: also write ``<stem>_report.html``.
        remove_ratio: override the recommendation: ``<stem>_cleansed.csv`` is the training
            CSV without this share of the most harmful rows (None = apply the recommendation).
        recommend: decide keep / relabel / remove for every row (see :mod:`.recommend`): the
            candidates are then chosen by the influence from a seeded half of the validation
            rows and checked on the other half (:mod:`.crossfit`); the influence written uses
            every validation row either way. False = recommend nothing (one replay, cheaper).
        thumb_size: thumbnail box in pixels (16..512).
        label_names: text file with one class name per line, line 1 for label 0 (see
            :mod:`.labels`); the summary and the report show the names. None = numbers only.
        cluster: address of a Dask scheduler (``tcp://HOST:PORT``) to run the trials and the
            check epochs on (see :mod:`.cluster`); None = ``settings.jobs`` worker processes on
            this machine (:mod:`.executor`).

    """

    output: str
    model: Optional[str] = None
    config: Optional[str] = None
    params: Optional[str] = None
    train: Optional[str] = None
    val: Optional[str] = None
    settings: InfluenceSettings = field(default_factory=InfluenceSettings)
    cache_dir: Optional[str] = None
    report: bool = False
    remove_ratio: Optional[float] = None
    recommend: bool = True
    thumb_size: int = options.default("thumb_size")
    label_names: Optional[str] = None
    cluster: Optional[str] = None


def _lock_cache_dir(path: str, flag: str):
    """Lock the cache folder for this run (an open file; closing it releases the lock).

    Two runs writing one cache folder overwrite each other's parameters (and HDF5 refuses a
    file another process has open), so a second run is refused.

    Raises:
        OutputError: another run holds the lock.

    """
    f = open(os.path.join(path, places.CACHE_LOCK), "a+")
    if not try_lock(f):
        f.close()
        raise OutputError(places.cache_in_use(path, flag))
    return f


def _prepare_cache_dir(path: str) -> Optional[str]:
    """Create the cache folder (if new) with its marker; the shallowest folder this call
    created (to remove on failure), or None.
    """
    created = makedirs_tracked(path)
    marker = os.path.join(path, places.CACHE_MARKER)
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("Cache of sgd-influence; the tool may write and replace files here.\n")
    return created[0] if created else None


def run(
    request: RunRequest,
    log: Callable[[str], None] = lambda m: None,
    progress=None,
    flags: FlagNames = CLI_FLAGS,
) -> tuple[OutputPaths, InfluenceResult]:
    """Load, validate every input, compute, and write the outputs (see :mod:`.output`).

    Every check of :mod:`.validation` runs before the computation starts (see
    :func:`.inputs.load_inputs`); what is computed is
    checked (finite scores) before anything is written. A stop requested by Ctrl-C or SIGTERM
    (see :mod:`.interrupts`) takes effect at the next step and leaves nothing behind.

    Args:
        request: files and options.
        log: callback for user-facing messages.
        progress: optional ``(stage, done, total)`` callback.
        flags: the calling interface's option names, for messages.

    Raises:
        SGDInfluenceError: any bad input, before anything is written; ComputationError when
            the validation loss at the trained parameters is not finite; UnstableReplayError
            when a trial stays unstable after its retries (nothing is written).
        KeyboardInterrupt: on Ctrl-C / SIGTERM; nothing partial is left.
        ClusterError: ``request.cluster`` cannot be used (checked first) or lost the work.

    """
    settings = request.settings
    with open_executor(request.cluster, settings.context, settings.jobs, log) as executor:
        return _run(request, log, progress, flags, executor)


def _run(request: RunRequest, log, progress, flags: FlagNames, executor):
    settings = request.settings
    names: Optional[List[str]] = None

    def check_places(files, image_dirs) -> None:
        places.check_output_places(request, flags, files, image_dirs)

    def check_loaded(model, train, val) -> None:
        nonlocal names
        validation.check_loaded(request, model.info, train, val, model.n_params, flags)
        if request.label_names:
            names = read_label_names(request.label_names)
            label_col = find_columns(
                train, list(model.info.input_shapes), model.info.target_column
            ).label
            labels = [train.cell(i, label_col) for i in range(train.size)] if label_col else None
            check_label_names(names, labels, request.label_names, train.path, train.numbers)

    loaded = load_inputs(
        request, flags, check_places, check_loaded, [request.label_names], log, progress
    )
    model, info, train, val = loaded.model, loaded.model.info, loaded.train, loaded.val
    for note in info.notes:
        log("replay network: " + note)
    log(
        f"{train.size} training and {val.size} validation samples; "
        f"{model.n_params} trained parameters"
    )
    # the influence uses every validation row; half A orders the candidates, half B checks
    candidates_val, heldout, why_not, first = _split_for_check(request, info, train, val, settings)
    if why_not and request.recommend:
        log(why_not)
    made_cache: Optional[str] = None
    lock = None
    try:
        if request.cache_dir is not None:
            made_cache = _prepare_cache_dir(request.cache_dir)
            lock = _lock_cache_dir(request.cache_dir, flags.cache_dir or "cache folder")
        target = info.target_column or next(iter(info.label_classes), None)
        label = target if heldout is not None else None
        with _early_helper(
            model, train.arrays, heldout, candidates_val, label, settings, executor
        ) as early:
            result = compute_influence(
                model,
                train.arrays,
                val.arrays,
                settings,
                request.cache_dir,
                progress=interrupts.checked_progress(progress),
                log=log,
                val_loss_start=loaded.val_loss,
                executor=executor,
                losses=(lambda: early()[0]) if early else None,
                candidate_rows=first,
            )
            early_rec = early()[1] if early else None
        t_rec = time.perf_counter()
        curv = result.resolved.curvature
        if heldout is None:
            classifier = len(info.label_classes) == 1 and info.runtime_network
            prob = as_probabilities(model.predict(train.arrays)) if classifier else None
            rec = recommend_mod.unavailable(train.size, why_not, prob)
        else:
            rec = recommend_mod.recommend(
                model,
                train.arrays,
                heldout,
                target,
                result.candidate_scores,  # from half A only: the check's half B is unseen
                result.resolved.batch_size,
                result.resolved.weight_decay,
                curv.lambda_max if curv is not None else math.nan,
                settings.seed,
                progress=interrupts.checked_progress(progress),
                log=log,
                executor=executor,
                early=early_rec,
                reference=candidates_val,
            )
        t_rec = time.perf_counter() - t_rec
        facts = run_facts(result, settings, info, model.n_params, loaded.train_csv, loaded.val_csv)
        facts["n_train"], facts["n_val"] = train.size, val.size
        facts["task"] = info.task
        facts["validation_rows"] = {
            "influence": val.size,
            "candidates": 0 if first is None else len(first),
            "heldout_for_check": rec.n_heldout,
        }
        if first is not None:  # what ordered the candidates (crossfit.py)
            facts["influence"] += (
                "; from every validation row. The candidates were ordered by a second replay "
                "from the validation_rows.candidates rows alone (the trials CSV's "
                "candidate_order_m columns), then checked on the heldout_for_check rows"
            )
        facts["timings_seconds"]["reading"] = round(loaded.read_seconds, 4)
        facts["timings_seconds"]["recommendation"] = round(t_rec, 4)
        facts["label_names"] = os.path.abspath(request.label_names) if request.label_names else None
        content = RunContent(
            result.scores,
            train,
            list(info.input_shapes),
            facts,
            losses=result.losses,
            trial_scores=result.trial_scores,
            candidate_scores=result.candidate_scores,
            recommendation=rec,
            label_names=names,
            target=info.target_column,
            remove_ratio=request.remove_ratio,
        )
        paths = write_influence_output(
            request.output,
            content,
            request.report,
            request.thumb_size,
            flag=flags.output,
            progress=None if progress is None else interrupts.checked_progress(progress),
        )
    except BaseException as e:
        if lock is not None:
            lock.close()
            lock = None
        if made_cache:
            shutil.rmtree(made_cache, ignore_errors=True)
        if isinstance(e, OSError):
            # Writing the cache failed (the outputs convert their own errors): a full disk,
            # a file-size limit, or a folder made read-only while running.
            raise _cache_failed(e, request.cache_dir, flags.cache_dir or "cache folder") from e
        raise
    finally:
        if lock is not None:
            lock.close()
    return paths, result


def _cache_failed(e: OSError, cache_dir: Optional[str], where: str) -> OutputError:
    """One line for an OSError while writing the cache (HDF5's text may span lines)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free some space or choose another {where}"
    elif e.errno == errno.EFBIG:
        fix = f"a file passed this system's size limit (ulimit -f); raise it, or another {where}"
    else:
        fix = f"check that folder's permissions, or choose another {where}"
    why = os.strerror(e.errno) if e.errno else " ".join(str(e.strerror or e).split())
    return OutputError(
        f"{e.filename or cache_dir or 'the temporary folder'}: cannot write the cache ({why}); "
        f"nothing was written. {fix[0].upper() + fix[1:]}"
    )


@contextlib.contextmanager
def _early_helper(model, train, heldout, reference, label, settings, executor):
    """With a second core for a unit (:meth:`.executor.Executor.cores_per_unit`: a local
    executor with two jobs or more; not a cluster's): a forked helper that computes, while
    the influence runs, what does not depend on it (each training row's loss; the
    recommendation's probabilities and its check epoch on the data as given,
    :func:`.recommend.early_work`). Yields a callable returning ``(losses, early work or
    None)`` (waiting for the helper), or None (also where nothing can fork: Windows): then
    the influence and the recommendation compute them themselves, with the same results.
    """
    if executor.cores_per_unit(1) < 2:
        yield None
        return
    resolved = resolve(model, settings)  # the replayed epoch's batch size and weight decay

    def work():
        losses = per_sample_losses(model, train, settings.val_batch_size)
        if heldout is None:
            return losses, None
        early = recommend_mod.early_work(
            model, train, heldout, label, resolved.batch_size, resolved.weight_decay,
            settings.seed, reference=reference,
        )  # fmt: skip
        return losses, early

    with coworker.helper(work) as helper:
        if helper is None:
            yield None
            return
        helper.submit()
        answer = []

        def get():
            if not answer:
                answer.append(helper.result())
            return answer[0]

        yield get


def _split_for_check(request: RunRequest, info, train, val, settings):
    """``(validation arrays the candidates are chosen with (half A) or every row, held-out
    arrays for the check (half B) or None, why not, half A's rows or None)``: the influence
    itself uses every validation row either way. The recommendation needs a classifier
    (one class label column and an executor network) and enough validation rows for two
    halves. A regression gets none: removing its worst-fitted rows passed the check's
    settling epoch on a real console result and then made the retrained model worse
    (docs/recommendation.md).
    """
    need = 2 * recommend_mod.MIN_HELDOUT
    classifier = len(info.label_classes) == 1 and info.runtime_network
    if not request.recommend:
        why = "no recommendation: turned off"
    elif not classifier:
        why = (
            "no recommendation: it needs a classifier (one class label and an executor "
            "network that outputs class scores); remove_ratio leaves out a share of the most "
            "harmful rows instead"
        )
    elif too_few_to_recommend(train.size):
        why = too_few_to_recommend(train.size)
    elif val.size < need:
        why = (
            f"no recommendation: {val.size} validation rows; at least {need} are needed (half "
            "to choose the changes, half held out to check them). Add "
            f"{need - val.size} labelled rows to the validation CSV (for example from the "
            "training CSV), or look at the most harmful rows and cleanse a share of them with "
            "remove_ratio"
        )
    else:
        first, held = recommend_mod.split_validation(val.size, settings.seed)
        pick = lambda idx: {k: v[idx] for k, v in val.arrays.items()}  # noqa: E731
        return pick(first), pick(held), "", first
    return val.arrays, None, why, None


def run_facts(result: InfluenceResult, settings, info, n_params, train_csv, val_csv) -> dict:
    """What ``settings.yaml`` records: what was asked (``requested``), what was used
    (``used``), how the learning rate was chosen, each trial, timings and versions.
    """
    rates = sorted({o.lr for o in result.trials})
    # The rate the trials ran at: a retried trial runs at a quarter of the chosen rate, and
    # the summary and settings say so (issue 34, case 12); a list when the trials differ.
    used_lr = rates[0] if len(rates) == 1 else [o.lr for o in result.trials]
    chosen = {} if rates == [result.resolved.lr] else {"lr_chosen": result.resolved.lr}
    return {
        "requested": settings.to_dict(),
        "used": {
            "lr": used_lr,
            **chosen,
            "weight_decay": result.resolved.weight_decay,
            "batch_size": result.resolved.batch_size,
            "epochs": settings.epochs,
            "trials": settings.trials,
            "cache": settings.cache,
            "context": settings.context,
            "seeds": [o.seed for o in result.trials],
        },
        "lr_selection": result.resolved.lr_selection(),
        "trials": [
            {
                "seed": o.seed,
                "lr": o.lr,
                "attempts": o.attempts,
                "u_growth": float(f"{o.u_growth:.4g}"),
                "scale_rms": float(f"{s:.6g}"),
                "validation_loss": round(o.val_loss, 6),
            }
            for o, s in zip(result.trials, result.trial_scales)
        ],
        "model": info.source,
        "label_classes": {str(k): int(v) for k, v in info.label_classes.items()},
        "train_csv": os.path.abspath(train_csv),
        "val_csv": os.path.abspath(val_csv),
        "n_params": n_params,
        "validation_loss": round(result.val_loss, 6),
        "cache_bytes": result.cache_bytes,
        "timings_seconds": {k: round(float(v), 4) for k, v in result.timings.items()},
        "network_changes": list(info.notes),
        "warnings": list(result.warnings),
        "versions": {
            "sgd_influence_plugin": __version__,
            "nnabla": _nnabla_version(),
            "python": platform.python_version(),
        },
        "sign": "influence < 0: removing the sample lowers the validation loss (harmful); "
        "with target class-centred, more than removing an average sample of its class",
        "influence": "trials combined: each trial divided by its RMS, averaged, times the "
        "median RMS; units of the mean validation loss",
    }


def _nnabla_version() -> str:
    import nnabla

    return nnabla.__version__
