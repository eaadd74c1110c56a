"""The one-way check's null on a trained console result: random removals through the check.

For each seed: the validation rows' seeded halves (as a run splits them), and removals of
random training rows of the given sizes checked on the held-out half exactly as the
recommendation's candidates are (:func:`sgd_influence_plugin.heldout_check.check_candidates`:
one settling epoch each, paired per-row loss differences). Random sets carry no signal, so
their z (mean difference over its row standard error) should have sd 1; the settling epoch's
own noise, which the row standard error does not count, shows as sd above 1 and as
``rho = (var z - 1) / n`` on n held-out rows (the form of the widened bar measured with
:mod:`epoch_noise`). Prints one line per seed and a JSON summary.

Run: ``.venv/bin/python experiments/check_null.py RESULT.nnp TRAIN.csv VAL.csv
[--seeds 25] [--sizes 100,250,500] [--lr RATE]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sgd_influence_plugin.dataset import load_dataset  # noqa: E402
from sgd_influence_plugin.heldout_check import (  # noqa: E402
    check_candidates,
    check_rate,
    split_validation,  # noqa: E402
)
from sgd_influence_plugin.nnabla_adapter import load_model  # noqa: E402
from sgd_influence_plugin.suspects import Candidate  # noqa: E402


def main(argv=None) -> int:
    """Check random removals on every seed; print the z values and their spread."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model")
    p.add_argument("train")
    p.add_argument("val")
    p.add_argument("--seeds", type=int, default=25)
    p.add_argument("--sizes", default="100,250,500")
    p.add_argument("--lr", type=float, help="the check epoch's rate (default: the check's own)")
    a = p.parse_args(argv)
    model = load_model(model=a.model)
    train = load_dataset(a.train, model.info.input_shapes).arrays
    val = load_dataset(a.val, model.info.input_shapes).arrays
    label = next(iter(model.info.label_classes))
    n, sizes = len(train[label]), [int(s) for s in a.sizes.split(",")]
    lr, _ = check_rate(model.info.solver.type, model.info.solver.lr, math.nan)
    lr = a.lr or lr
    zs, held = [], 0
    for seed in range(a.seeds):
        _, b = split_validation(len(val[label]), seed)
        held = len(b)
        rng = np.random.RandomState(500 + seed)
        cands = [
            Candidate(s, "remove", np.sort(rng.choice(n, s, replace=False)).astype(np.int64),
                      np.zeros(s, np.int64), order="random")
            for s in sizes
        ]  # fmt: skip
        check_candidates(model, train, {k: v[b] for k, v in val.items()}, label, cands, lr,
                         32, 0.0, seed=seed + 10_007)  # fmt: skip
        zs += [c.z for c in cands]
        print(seed, [round(c.z, 2) for c in cands], flush=True)
    z = np.array(zs)
    print(json.dumps({
        "model": a.model, "heldout_rows": held, "seeds": a.seeds, "z_values": len(z),
        "mean_z": round(float(z.mean()), 3), "sd_z": round(float(z.std(ddof=1)), 3),
        "rho": round(float((z.var(ddof=1) - 1) / held), 5), "lr": lr,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
