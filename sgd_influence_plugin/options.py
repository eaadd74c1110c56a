"""What each option means, written once for every interface that has it.

The ``sgd-influence`` subcommands (:mod:`.cli`, :mod:`.evaluate`) and the console dialogs
(``plugins/_Post_Process/_XAI/_Image/SGD_Influence*.py``) take these sentences and add their
own spelling, type hint and default: the command line appends ``(default: ...)``, a dialog
``(int) default=...``. Options only one parser has keep their help where they are defined.

The entry scripts import this module while they build their dialog, before anything else of
the package, so it imports nothing.
"""

#: Option (its ``dest``) -> what it means. ``check.<name>`` where ``check`` means another thing.
HELP = {
    "model": "results.nnp of a training result (network and parameters)",
    "config": "net.nntxt of a training result, used with --params instead of the nnp",
    "params": "parameters .h5 for --config",
    "train": "training dataset CSV",
    "val": "validation dataset CSV, the one the influence is measured on",
    "epochs": "SGD epochs of the training phase; the last is replayed",
    "trials": "independent trials combined (sample orders from seeds seed, seed + 1, ...), each "
    "scaled to a common size",
    "jobs": "worker processes for the independent units: trials (a lone trial's replay uses "
    "two), check epochs, retrainings (no effect on the results)",
    "replay_step": "fd = two first-order passes at theta +/- eps*u per replay step, about 2.5x "
    "faster than exact, a smoothed Hessian on ReLU networks; exact = one double-backward pass",
    "seed": "seed of the first trial's sample order",
    "batch_size": "mini-batch size of the replayed epoch",
    "lr": "learning rate of the replayed epoch: auto = the largest stable rate for the measured "
    "curvature (at most the solver's), solver = the network definition's lr/alpha, or a number",
    "weight_decay": "L2 coefficient of the replayed epoch",
    "cache": "final = keep only the final parameters (Suzuki et al.), all = also the "
    "parameters before every step (Hara et al.)",
    "context": "cpu, or cudnn[:DEVICE] with nnabla-ext-cuda installed",
    "target": "what a score estimates: class-centred = the change of the mean validation loss "
    "if the row were left out of the replayed epoch, minus the mean of that change over the "
    "rows of its class (a score about the row, not its label); plain = the change itself",
    "report": "also write the offline HTML report, STEM_report.html (STEM = the output CSV's "
    "name without .csv)",
    "label_names": "text file with one class name per line, line 1 for label 0; the summary and "
    "the report show the names",
    "remove_ratio": "override the recommendation: the cleansed CSV leaves out this share of the "
    "most harmful rows instead",
    "recommend": "do not decide keep/remove per row; the influence then uses every "
    "validation row instead of half",
    "quiet": "no progress bars or messages",
    "cluster": "address of a Dask scheduler (tcp://HOST:PORT) whose workers run the independent "
    "units (trials, check epochs, retrainings, re-runs); same results as here (docs/cluster.md)",
    "check.samples": "training samples re-run without: a third most harmful, a third most "
    "helpful, the rest random",
    "check.seed": "seed of the sample order and of the random samples",
    "check.quiet": "no progress bars or messages; the one-line verdict is still printed",
}
