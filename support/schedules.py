"""Console definitions with a learning-rate schedule, and the rates ``nnabla_cli train`` really
gave each update, for the tests of :mod:`sgd_influence_plugin.nnabla_adapter.schedule`.

:func:`set_schedule` edits a definition written by :mod:`support.netdef` the way the console's
optimizer settings would (``lr_scheduler_type`` and its parameters, the older ``lr_decay``,
a linear warm-up, ``update_interval``). :func:`train_recording_rates` runs ``nnabla_cli
train``'s own entry point in a child process, with nnabla's optimizer factory wrapped so that
every ``set_learning_rate`` the trainer calls is written down: the rates it actually used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

#: Each schedule kind the console offers, as optimizer fields (``solver.`` prefixed ones on
#: the solver message); iteration counts fit 3 epochs of 3 mini-batches (9 iterations).
KINDS = {
    "Cosine": {"solver.lr_scheduler_type": "Cosine", "cosine_scheduler_param.max_iter": 9},
    "Polynomial": {
        "solver.lr_scheduler_type": "Polynomial",
        "polynomial_scheduler_param.max_iter": 10,
        "polynomial_scheduler_param.power": 2.0,
    },
    "Exponential": {
        "solver.lr_scheduler_type": "Exponential",
        "exponential_scheduler_param.gamma": 0.5,
        "exponential_scheduler_param.iter_interval": 2,
    },
    "Step": {
        "solver.lr_scheduler_type": "Step",
        "step_scheduler_param.gamma": 0.1,
        "step_scheduler_param.iter_steps": [3, 6],
    },
    "lr_decay": {"solver.lr_decay": 0.7, "solver.lr_decay_interval": 2},
    "Cosine with linear warm-up": {
        "solver.lr_scheduler_type": "Cosine",
        "cosine_scheduler_param.max_iter": 12,
        "solver.lr_warmup_scheduler_type": "Linear",
        "linear_warmup_scheduler_param.warmup_iter": 4,
    },
    "Step, update_interval 2": {
        "solver.lr_scheduler_type": "Step",
        "step_scheduler_param.gamma": 0.1,
        "step_scheduler_param.iter_steps": [4],
        "update_interval": 2,
    },
}


def set_schedule(nntxt: str, fields: dict) -> None:
    """Give the (only) optimizer of ``nntxt`` the schedule ``fields`` (a value of
    :data:`KINDS`), in place.
    """
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    proto = nnabla_pb2.NNablaProtoBuf()
    with open(nntxt) as f:
        text_format.Merge(f.read(), proto)
    (opt,) = proto.optimizer
    for name, value in fields.items():
        if name == "update_interval":
            opt.update_interval = value
            continue
        msg, field = opt.solver, name.split(".")[-1]
        if not name.startswith("solver."):
            msg = getattr(opt.solver, name.split(".")[0])
        if isinstance(value, list):
            getattr(msg, field).extend(value)
        else:
            setattr(msg, field, value)
    with open(nntxt, "w") as f:
        f.write(text_format.MessageToString(proto))


_RECORDER = r"""
import json, sys
from nnabla.utils import load
made = []
create = load._create_optimizer

class Recording:
    def __init__(self, solver):
        self.__dict__["_solver"], self.__dict__["rates"] = solver, []
    def set_learning_rate(self, lr):
        self.rates.append(float(lr))
        return self._solver.set_learning_rate(lr)
    def __getattr__(self, name):
        return getattr(self._solver, name)

def recording(*args, **kwargs):
    opt = create(*args, **kwargs)
    opt.solver = Recording(opt.solver)
    made.append(opt.solver)
    return opt

load._create_optimizer = recording
from nnabla.utils.cli.cli import main
out = sys.argv[3]
sys.argv = ["nnabla_cli", "train", "-c", sys.argv[1], "-o", sys.argv[2]]
try:
    main()
finally:
    with open(out, "w") as f:
        json.dump([r for s in made for r in s.rates], f)
"""


def train_recording_rates(folder: str, nntxt: str) -> list:
    """Train ``nntxt`` with ``nnabla_cli train``'s entry point into ``folder``; returns the
    rate of every update, in order, as the trainer set it (``solver.set_learning_rate``).
    """
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(folder, "rates.json")
    proc = subprocess.run(
        [sys.executable, "-c", _RECORDER, str(nntxt), str(folder), out],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not os.path.exists(os.path.join(folder, "results.nnp")):
        raise RuntimeError(f"nnabla_cli train failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    with open(out) as f:
        return json.load(f)
