"""The data-cleansing experiment of Hara et al. (2019), Figure 2.

For each removal count n (a list of shares of N) and each seed: rank the training samples by
SGD-influence (computed with that seed's sample order), remove either the n most harmful or n
random samples, retrain, and measure test accuracy. Retraining is either

- ``last``: the last epoch only, from the parameters before it, with the same sample order and
  the removed samples' weights set to 0 (Hara et al.'s "retrain last"; exactly the
  counterfactual the influence estimates), or
- ``scratch``: the whole network definition trained again by ``nnabla_cli train`` on the
  cleansed CSV (rows shuffled by the seed), as the console would, from an initialisation
  drawn with the seed (:func:`initial_parameters`).

With a label-noise ground truth (``train_noise.csv`` from the sample project) it also reports
precision@n and recall@n of the flipped labels among the removed samples.

Every option, input and output place is checked before anything is computed
(:mod:`.evaluate_inputs`); the four result files follow the ownership rule of
:mod:`.ownership` (only files the tool wrote are replaced) and are committed together
(:mod:`.evaluate_report`).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import zipfile
from dataclasses import replace
from typing import Dict, List, Optional

import numpy as np

from . import core, option_parsers
from .cells import data_path
from .dataset import Dataset
from .errors import SettingsError
from .evaluate_inputs import (
    EvaluateRequest,
    check_evaluate,
    load_inputs,
    parse_floats,
    parse_seeds,
)
from .evaluate_report import write_outputs
from .executor import local_executor, open_executor, unit_graphs
from .influence import compute_influence
from .nnabla_adapter import load_model
from .nnabla_adapter.training import initial_parameters, train_from_scratch
from .one_hot import settled_as
from .probabilities import as_probabilities
from .recommend import is_classifier
from .resolved import resolve
from .settings import InfluenceSettings
from .target import class_labels
from .validation import CLI_FLAGS


def accuracy(model, data: Dataset) -> float:
    """Share of rows whose arg-max prediction equals the class label column (the one column
    of ``info.label_classes``); NaN for a model without classes (a regression, probability
    or multi-label vector targets), where no arg-max is a class to compare (the first
    target value used to be read as a class: 0.075 for one-hot targets of three classes).
    """
    labels = class_labels(model.info, data.arrays) if is_classifier(model.info) else None
    if labels is None:
        return float("nan")
    prob = as_probabilities(model.predict(data.arrays))
    return float(np.mean(prob.argmax(axis=1) == labels))


def evaluate(req: EvaluateRequest, log=lambda m: None, executor=None) -> List[Dict]:
    """Run the experiment ``req`` describes; write ``results.csv``, ``figure2.png``,
    ``summary.md`` and ``settings.yaml`` into ``req.out_dir``.

    Everything is checked before anything is computed (:func:`.evaluate_inputs.check_evaluate`,
    then every label of the three datasets against the network's classes).

    The influence trials and each seed's retrainings (:func:`retrain_unit`) are units of
    ``executor`` (:mod:`.executor`; None = ``settings.jobs`` worker processes here); the rows
    are the same wherever they run.

    Returns:
        One dict per (seed, n, method): seed, ratio, n_removed, method ('none', 'harmful',
        'random'), test_accuracy, precision_at_n / recall_at_n (with noise), seconds.

    Raises:
        SGDInfluenceError: a bad option, input or output place (nothing is computed), or a
            computation that cannot be trusted (nothing is written).

    """
    start_all = time.perf_counter()
    check_evaluate(req)
    settings = req.settings
    data = load_inputs(req.model_files, req.csvs, req.ratios, settings, req.noise_csv)
    model, train = data.model, data.train
    run = resolve(model, settings)
    theta0 = model.get_params()
    executor = executor or local_executor(settings.context, settings.jobs)
    config_text = _scratch_definition(req.retrain, req.model_files, train, req.val_csv, executor)
    shared = (model, train, data.test, theta0, req.val_csv)
    rows: List[Dict] = []
    try:
        for seed in req.seeds:
            seed_rows, run = _one_seed(
                data, seed, req.retrain, config_text, settings, executor, shared, log
            )
            rows.extend(seed_rows)
    finally:
        model.set_params(theta0)
    facts = _facts(data, run, req)
    facts["total_seconds"] = round(time.perf_counter() - start_all, 1)
    write_outputs(req.out_dir, rows, train.size, data.flipped, facts)
    return rows


def _facts(data, run, req: EvaluateRequest) -> Dict:
    """What ``settings.yaml`` records of an experiment: its options, the replay's rate, batch
    size and weight decay, the datasets' sizes and where the inputs are.
    """
    return {
        "retrain": req.retrain,
        "seeds": list(req.seeds),
        "ratios": list(req.ratios),
        "settings": req.settings.to_dict(),
        "lr": run.lr,
        "batch_size": run.batch_size,
        "weight_decay": run.weight_decay,
        "n_train": data.train.size,
        "n_val": data.val.size,
        "n_test": data.test.size,
        "model": data.model.info.source,
        "train_csv": os.path.abspath(req.train_csv),
        "val_csv": os.path.abspath(req.val_csv),
        "noise": os.path.abspath(req.noise_csv) if req.noise_csv else None,
    }


def _one_seed(data, seed: int, retrain: str, config_text, settings, executor, shared, log):
    """One seed of the experiment: the influence with the seed's order, then every removal
    count's retrainings (the most harmful rows, and as many random ones) as units of
    ``executor``; ``(its rows, the replay's run)``.
    """
    n = data.train.size
    t0 = time.perf_counter()
    res = compute_influence(
        data.model, data.train.arrays, data.val.arrays, replace(settings, seed=seed),
        executor=executor,
    )  # fmt: skip
    # Retraining the last epoch repeats the first trial's epoch: its order, its rate.
    run = replace(res.resolved, lr=res.trials[0].lr)
    log(f"seed {seed}: influence in {time.perf_counter() - t0:.1f}s")
    harmful_rank = np.argsort(res.scores, kind="stable")
    random_rank = np.random.RandomState(10_000 + seed).permutation(n)
    orders = core.epoch_orders(n, settings.epochs, seed)
    jobs = [
        ("none" if count == 0 else method, count, rank[:count])
        for count in data.counts
        for method, rank in (("harmful", harmful_rank), ("random", random_rank))
        if count or method == "harmful"
    ]
    items = [(retrain, removed, seed, orders, run, config_text) for *_, removed in jobs]
    outs = executor.map(retrain_unit, items, shared=shared, name="retrain")
    rows = []
    for (label, count, removed), (acc, loss, seconds) in zip(jobs, outs):
        rows.append(_row(seed, label, count, removed, n, data.flipped, acc, loss, seconds))
        log(f"seed {seed} {label:7s} n={count:5d}: test accuracy {acc:.4f}, loss {loss:.4f}")
    return rows, run


def _row(seed, label, count, removed, n, flipped, acc, loss, seconds) -> Dict:
    """One row of ``results.csv``: a retraining's test accuracy and loss, and with a
    ground truth the precision and recall of the flipped labels among the removed rows.
    """
    row = {
        "seed": seed,
        "ratio": count / n,
        "n_removed": count,
        "method": label,
        "test_accuracy": acc,
        "test_loss": loss,
        "seconds": round(seconds, 2),
    }
    if flipped is not None:
        hits = int(flipped[removed].sum()) if count else 0
        row["precision_at_n"] = hits / count if count else float("nan")
        row["recall_at_n"] = hits / max(1, int(flipped.sum()))
    return row


def _scratch_definition(retrain: str, model_files, train: Dataset, val_csv: str, executor):
    """The network definition ``scratch`` retrains (None for ``last``), once the executor's
    workers were found to read what ``nnabla_cli`` opens there.
    """
    if retrain != "scratch":
        return None
    config_text = _definition_text(model_files)
    executor.check_paths(_scratch_inputs(train, val_csv), "retraining with nnabla_cli")
    return config_text


def _definition_text(model_files) -> str:
    if model_files.get("model"):
        with zipfile.ZipFile(model_files["model"]) as zf:
            name = next(x for x in zf.namelist() if x.endswith(".nntxt"))
            return zf.read(name).decode("utf-8")
    with open(model_files["config"], encoding="utf-8") as f:
        return f.read()


def accuracy_and_loss(model, test: Dataset):
    """(accuracy, mean loss) on the test set at the model's current parameters."""
    return accuracy(model, test), core.mean_loss(model, test.arrays)


def _retrain_last(model, train, test, theta0, orders, run, removed, graphs):
    weights = np.ones(train.size, dtype=np.float32)
    weights[removed] = 0
    model.set_params(theta0)
    T = core.n_steps(train.size, run.batch_size)
    lrs = np.full(T, run.lr, dtype=np.float32)
    for k, order in enumerate(orders):
        last = k == len(orders) - 1
        core.sgd_epoch(
            model,
            train.arrays,
            order,
            lrs,
            run.batch_size,
            run.weight_decay,
            sample_weight=weights if last else None,
            graphs=graphs,
        )
    metrics = accuracy_and_loss(model, test)
    model.set_params(theta0)
    return metrics


def _scratch_inputs(train: Dataset, val_csv: str) -> List[str]:
    """What ``nnabla_cli`` opens when it retrains on a worker: the validation CSV and the
    files of the first training row (the others sit beside them).
    """
    cells = [data_path(train.folder, c) for c in train.rows[0]]
    return [val_csv] + [c for c in cells if os.path.splitext(c)[1] and os.path.isfile(c)]


def retrain_unit(item, progress, model, train: Dataset, test: Dataset, theta0, val_csv: str):
    """One retraining of :func:`evaluate` as a unit of an executor (:mod:`.executor`).

    Args:
        item: ``(retrain, removed, seed, orders, run, config_text)``: ``last`` repeats the
            last of ``orders`` at ``run``'s rate without ``removed``; ``scratch`` trains the
            definition ``config_text`` with ``nnabla_cli`` from the seed's initialisation, in
            a temporary folder of the worker (the CSVs' files must be readable there).
        model / train / test / theta0 / val_csv: shared by the units.

    Returns:
        ``(test accuracy, test loss, seconds)``.

    """
    retrain, removed, seed, orders, run, config_text = item
    t0 = time.perf_counter()
    if retrain == "last":
        acc, loss = _retrain_last(
            model, train, test, theta0, orders, run, removed, unit_graphs(model)
        )
    else:
        keep = np.setdiff1d(np.arange(train.size), removed)
        item = (config_text, train.path, val_csv, keep, seed, model.context_name)
        _, acc, loss, _ = scratch_unit(item, progress, test, train.header, train.rows, model.info)
    return acc, loss, time.perf_counter() - t0


def scratch_unit(item, progress, test: Optional[Dataset], header, rows, like=None):
    """:func:`train_from_scratch` as a unit of an executor (:mod:`.executor`), in a temporary
    folder of the worker, from the seed's :func:`initial_parameters`.

    Args:
        item: ``(config_text, train_csv, val_csv, keep, seed, context)``; the files the CSVs
            name must be readable on the worker at the same paths.
        test: measure the trained network on it (None: no measurement).
        header / rows: the training CSV's header and rows (shared by the units).
        like: the ``ModelInfo`` of the network trained again, whose one-hot labels the
            datasets settled (:func:`.one_hot.settled_as`): the retrained network's classes.

    Returns:
        ``(results.nnp as bytes, test accuracy, test loss, seconds)`` (NaN without ``test``).

    """
    config_text, train_csv, val_csv, keep, seed, context = item
    t0 = time.perf_counter()
    acc = loss = float("nan")
    with tempfile.TemporaryDirectory(prefix="sgd_influence_retrain_") as work:
        init = initial_parameters(config_text, seed, os.path.join(work, "init.h5"))
        nnp = train_from_scratch(
            config_text, train_csv, val_csv, header, rows, keep, seed, os.path.join(work, "train"),
            init,
        )  # fmt: skip
        if test is not None:
            retrained = load_model(model=nnp, context=context)
            if like is not None:  # one-hot labels are classes when the datasets say so
                settled_as(retrained.info, like)
            acc, loss = accuracy_and_loss(retrained, test)
        with open(nnp, "rb") as f:
            data = f.read()
    return data, acc, loss, time.perf_counter() - t0


def run_from_args(args) -> int:
    """``sgd-influence evaluate`` (its options: :data:`.option_parsers.COMMANDS`)."""
    if not args.model and not args.config:
        raise SettingsError("give --model results.nnp, or --config net.nntxt with --params")
    settings = InfluenceSettings(**option_parsers.settings_given(args))
    settings.validate(CLI_FLAGS.for_settings())  # --jobs -1 before the workers start
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    train_csv, val_csv = args.train, args.val
    if not (train_csv and val_csv):  # as run and check: the datasets the definition names
        from .inputs import dataset_path
        from .nnabla_adapter import describe, read_result

        proto, values, source = read_result(args.model, args.config, args.params)
        info, _ = describe(proto, values, source)
        train_csv = dataset_path(train_csv, info.train_dataset, "training", "--train")
        val_csv = dataset_path(val_csv, info.val_dataset, "validation", "--val")
    with open_executor(args.cluster, settings.context, settings.jobs, say) as executor:
        req = EvaluateRequest(
            {"model": args.model, "config": args.config, "params": args.params},
            train_csv,
            val_csv,
            args.test,
            args.output_dir,
            parse_floats(args.ratios, "ratios"),
            parse_seeds(args.seeds),
            args.retrain,
            settings,
            args.noise,
        )
        evaluate(req, log=say, executor=executor)
    say(f"results: {os.path.join(args.output_dir, 'summary.md')}")
    return 0
