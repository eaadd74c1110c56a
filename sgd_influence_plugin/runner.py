"""``sgd-influence run``: one run from files to files; the console plugin, the CLI and the
tests call :func:`run`.

The run is issue 33's pipeline, one stage a function, each handing the next a small record:

1. :func:`load`: the request's inputs read and checked before anything is computed
   (:func:`.inputs.load_inputs`, shared with ``check``: options and settings, model files,
   datasets, output places, decoded data, validation loss) -> :class:`Loaded`;
2. :func:`split_for_check`: which validation rows order the recommendation's candidates and
   which check them (the influence uses every row) -> :class:`CheckSplit`;
3. :func:`score`: the settings resolved and the influence computed, trials on the executor
   (:func:`.influence.compute_influence`; :mod:`.phases`) -> :class:`Scored`;
4. :func:`decide`: keep / remove per row (:mod:`.recommend`) -> :class:`Decided`;
5. :func:`record`: what ``STEM_settings.yaml`` records (:mod:`.run_facts`); 6. :func:`write`:
   the output set, all or nothing (:mod:`.output`). Stages 3-6 hold the cache folder.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from . import coworker, interrupts, options, places, pooled_check, validation
from . import recommend as recommend_mod
from .cache_folder import cache_folder
from .core import per_sample_losses
from .executor import open_executor
from .influence import InfluenceResult, compute_influence
from .inputs import Inputs, load_inputs
from .labels import check_label_names, read_label_names
from .output import OutputPaths, RunContent, write_influence_output
from .recommend import CheckSplit, model_probabilities
from .recommendation import Recommendation, unavailable
from .resolved import resolve
from .run_facts import run_facts
from .settings import InfluenceSettings
from .table_columns import model_label_cells
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


@dataclass
class Loaded:
    """Stage 1's record (:func:`load`).

    Attributes:
        inputs: what :func:`.inputs.load_inputs` read and checked (model, dataset CSVs,
            decoded datasets, validation loss at the trained parameters, reading time).
        label_names: the class names of ``request.label_names``, checked against the
            training labels; None without.

    """

    inputs: Inputs
    label_names: Optional[List[str]] = None


@dataclass
class Scored:
    """Stage 3's record (:func:`score`).

    Attributes:
        result: the influence and what it took (:class:`.influence.InfluenceResult`).
        early: :func:`.recommend.early_work`'s result (without a recommendation: ``{"prob":
            the model's class probabilities}``), computed beside the influence by a helper
            process, or None (stage 4 then computes it).

    """

    result: InfluenceResult
    early: Optional[Dict] = None


@dataclass
class Decided:
    """Stage 4's record (:func:`decide`): the recommendation and its wall time in seconds."""

    recommendation: Recommendation
    seconds: float


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
    settings = request.settings.validate(flags.for_settings())  # --jobs before workers
    with open_executor(request.cluster, settings.context, settings.jobs, log) as executor:
        return _run(request, log, progress, flags, executor)


def _run(request: RunRequest, log, progress, flags: FlagNames, executor):
    """The pipeline (see the module docstring): ``(paths written, the influence)``."""
    loaded = load(request, flags, log, progress)
    split = split_for_check(request, loaded)
    if split.why_not and request.recommend:
        log(split.why_not)
    with cache_folder(request.cache_dir, flags.cache_dir or "cache folder"):
        scored = score(request, loaded, split, executor, log, progress)
        decided = decide(loaded, split, scored, request.settings, executor, log, progress)
        facts = record(request, loaded, split, scored, decided)
        paths = write(request, loaded, scored, decided, facts, flags, progress)
    return paths, scored.result


def load(request: RunRequest, flags: FlagNames, log, progress) -> Loaded:
    """Stage 1: every input read and checked before anything is computed
    (:func:`.inputs.load_inputs`; the loaded data by :func:`.validation.check_loaded`), the
    output places (:func:`.places.check_output_places`) and the class names.

    Raises:
        SGDInfluenceError: the first problem found, naming the interface's option.

    """
    names: List[Optional[List[str]]] = [None]

    def check_places(files, image_dirs) -> None:
        places.check_output_places(request, flags, files, image_dirs)

    def check_loaded(model, train, val) -> None:
        validation.check_loaded(request, model.info, train, val, model.n_params, flags)
        if request.label_names:
            names[0] = _label_names(request.label_names, model.info, train)

    inputs = load_inputs(
        request, flags, check_places, check_loaded, [request.label_names], log, progress
    )
    for note in inputs.model.info.notes:
        log("replay network: " + note)
    log(
        f"{inputs.train.size} training and {inputs.val.size} validation samples; "
        f"{inputs.model.n_params} trained parameters"
    )
    return Loaded(inputs, names[0])


def _label_names(path: str, info, train) -> List[str]:
    """The class names of ``path`` (:func:`.labels.read_label_names`), each training label
    named (:func:`.labels.check_label_names`).
    """
    names = read_label_names(path)
    labels = model_label_cells(train, info)
    check_label_names(names, labels, path, train.path, train.numbers, info.label_classes)
    return names


def split_for_check(request: RunRequest, loaded: Loaded) -> CheckSplit:
    """Stage 2: which validation rows choose the recommendation's candidates and which check
    them, or why there is no recommendation (:func:`.recommend.split_for_check`).
    """
    inputs = loaded.inputs
    return recommend_mod.split_for_check(
        request.recommend, inputs.model.info, inputs.train, inputs.val, request.settings.seed
    )


def score(
    request: RunRequest, loaded: Loaded, split: CheckSplit, executor, log, progress
) -> Scored:
    """Stage 3: the influence (:func:`.influence.compute_influence`: the settings resolved,
    the rate settled, the trials' phases on ``executor``, combined and checked), with what
    the recommendation needs computed beside it where a second core allows
    (:func:`_early_helper`).
    """
    inputs = loaded.inputs
    model, train = inputs.model, inputs.train.arrays
    with _early_helper(model, train, split, request.settings, executor) as early:
        result = compute_influence(
            model,
            train,
            inputs.val.arrays,
            request.settings,
            request.cache_dir,
            progress=interrupts.checked_progress(progress),
            log=log,
            val_loss_start=inputs.val_loss,
            executor=executor,
            losses=(lambda: early()[0]) if early else None,
            candidate_rows=split.replayed,
            warnings=inputs.warnings,
        )
        return Scored(result, early()[1] if early else None)


def decide(
    loaded: Loaded, split: CheckSplit, scored: Scored, settings: InfluenceSettings, executor,
    log, progress,
) -> Decided:  # fmt: skip
    """Stage 4: keep / remove per row (:func:`.recommend.recommend`: suspects, candidates
    from half A's scores, checked on half B; below 200 validation rows checked two ways,
    :func:`.pooled_check.recommend_two_way`), or a recommendation that changes nothing and
    says why (:func:`.recommendation.unavailable`).
    """
    t_rec = time.perf_counter()
    model, train = loaded.inputs.model, loaded.inputs.train
    result = scored.result
    if split.heldout is None:  # the model's class still shown, computed beside if it was
        early = scored.early or {}
        prob = early["prob"] if "prob" in early else model_probabilities(model, train.arrays)
        rec = unavailable(train.size, split.why_not, prob)
    else:
        curv = result.resolved.curvature
        lam = curv.lambda_max if curv is not None else math.nan
        given = (result.resolved.batch_size, result.resolved.weight_decay, lam, settings.seed)
        checked = interrupts.checked_progress(progress)
        if split.second is not None:  # a small validation set: checked two ways
            rec = pooled_check.recommend_two_way(
                model, train.arrays, split.heldout, (split.first, split.second), split.label,
                (result.trial_scores, result.candidate_scores, result.half_b_scores), *given,
                checked, log, executor, early=scored.early,
            )  # fmt: skip
        else:  # the candidates from half A's scores only: the check's half B is unseen
            rec = recommend_mod.recommend(
                model, train.arrays, split.heldout, split.label, result.candidate_scores,
                *given, checked, log, executor, early=scored.early,
                reference=split.candidates_val,
            )  # fmt: skip
    return Decided(rec, time.perf_counter() - t_rec)


def record(
    request: RunRequest, loaded: Loaded, split: CheckSplit, scored: Scored, decided: Decided
) -> dict:
    """Stage 5: what ``STEM_settings.yaml`` records (:func:`.run_facts.run_facts`), with the
    data's sizes, the validation rows' roles, the reading and recommendation times and the
    class names file.
    """
    inputs, result = loaded.inputs, scored.result
    info, train, val = inputs.model.info, inputs.train, inputs.val
    facts = run_facts(
        result, request.settings, info, inputs.model.n_params, inputs.train_csv, inputs.val_csv
    )
    facts["n_train"], facts["n_val"] = train.size, val.size
    facts["task"] = info.task
    facts["validation_rows"] = {
        "influence": val.size,
        "candidates": 0 if split.first is None else len(split.first),
        "heldout_for_check": decided.recommendation.n_heldout,
    }
    if split.second is not None:  # two-way: each half chose, and checked the other's
        facts["validation_rows"]["candidates"] += len(split.second)
        facts["influence"] += (
            "; from every validation row. Two more replays, from each half of the validation "
            "rows alone (the trials CSV's candidate_order_m and candidate_order_b_m), chose "
            "candidates each checked on the other half, pooled over heldout_for_check rows"
        )
    elif split.first is not None:  # what ordered the candidates (crossfit.py)
        facts["influence"] += (
            "; from every validation row. The candidates were ordered by a second replay "
            "from the validation_rows.candidates rows alone (the trials CSV's "
            "candidate_order_m columns), then checked on the heldout_for_check rows"
        )
    facts["timings_seconds"]["reading"] = round(inputs.read_seconds, 4)
    facts["timings_seconds"]["recommendation"] = round(decided.seconds, 4)
    facts["label_names"] = os.path.abspath(request.label_names) if request.label_names else None
    return facts


def write(
    request: RunRequest, loaded: Loaded, scored: Scored, decided: Decided, facts: dict,
    flags: FlagNames, progress,
) -> OutputPaths:  # fmt: skip
    """Stage 6: the output set (:func:`.output.write_influence_output`: the influence CSV and
    its companions, all or nothing).
    """
    info, result = loaded.inputs.model.info, scored.result
    content = RunContent(
        result.scores,
        loaded.inputs.train,
        list(info.input_shapes),
        facts,
        losses=result.losses,
        trial_scores=result.trial_scores,
        candidate_scores=result.candidate_scores,
        half_b_scores=result.half_b_scores,
        recommendation=decided.recommendation,
        label_names=loaded.label_names,
        target=info.target_column,
        remove_ratio=request.remove_ratio,
    )
    return write_influence_output(
        request.output,
        content,
        request.report,
        request.thumb_size,
        flag=flags.output,
        progress=None if progress is None else interrupts.checked_progress(progress),
    )


@contextlib.contextmanager
def _early_helper(model, train, split: CheckSplit, settings, executor):
    """With a second core for a unit (:meth:`.executor.Executor.cores_per_unit`: a local
    executor with two jobs or more; not a cluster's): a forked helper that computes, while
    the influence runs, what does not depend on it (each training row's loss; the
    recommendation's probabilities and its check epoch on the data as given,
    :func:`.recommend.early_work`, or without a recommendation ``{"prob": the model's class
    probabilities}``). Yields a callable returning ``(losses, early work)`` (waiting for the
    helper), or None (also where nothing can fork: Windows): then the influence and the
    recommendation compute them themselves, with the same results.
    """
    if executor.cores_per_unit(1) < 2:
        yield None
        return
    resolved = resolve(model, settings)  # the replayed epoch's batch size and weight decay
    more = () if split.second is None else (split.second_val, split.heldout)  # pooled_check

    def work():
        losses = per_sample_losses(model, train, settings.val_batch_size)
        if split.heldout is None:
            return losses, {"prob": model_probabilities(model, train)}
        early = recommend_mod.early_work(
            model, train, split.heldout, split.label, resolved.batch_size,
            resolved.weight_decay, settings.seed, reference=split.candidates_val,
            more_references=more,
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
