"""Issue 36, item 6: does the order find flipped labels in tables when the replay's geometry
removes the bias-like direction of every layer? A first-order measurement, not kept.

With raw table features the replay's stable rate is tiny (1e-6 to 1e-4), so the replay is in
effect the first-order product ``<u, g_j>`` of the validation gradient u and each training
row's gradient g_j at the trained parameters. For an Affine layer ``y = h W + b`` a row's
gradient is ``(outer(h_j, d_j), d_j)``; with raw features every h is large and positive, so
``outer(h_j, d_j) = outer(h_j - m, d_j) + outer(m, d_j)`` (m = the layer's mean input) is
dominated by its second, bias-like part, shared by every row. This script measures, on the
same noisy cases as :mod:`tabular_scores` (:mod:`tabular_data`), the precision@k of:

- ``loss``: the k rows of highest training loss (the baseline);
- ``replay``: the package's default scores (the replay, centred by class);
- ``first-order``: ``<u, g_j>`` centred by class (the replay's small-rate limit);
- ``centred``: the same in coordinates where every Affine layer's input is centred
  (``outer(h_j - m, d_j)``, i.e. plain SGD on ``W, b' = b + m W``);
- ``centred-whitened``: centred, each coordinate divided by its standard deviation over the
  training rows on both sides (a diagonal empirical-Fisher metric).

Per-sample gradients come from a batch-size-1 loop (the tables have at most 1,000 rows); m is
recovered from them (``h_j = gW_j d_j / |d_j|^2``). Writes ``OUT/centred_geometry.md``.

Run: ``.venv/bin/python experiments/centred_geometry.py --titanic PATH/titanic_nnc2``
(needs scikit-learn in the venv, like :mod:`tabular_scores`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Dict, List, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import tabular_data  # noqa: E402
from tabular_scores import precision_at_k  # noqa: E402

from sgd_influence_plugin import core  # noqa: E402
from sgd_influence_plugin.dataset import load_dataset  # noqa: E402
from sgd_influence_plugin.influence import compute_influence  # noqa: E402
from sgd_influence_plugin.nnabla_adapter import load_model  # noqa: E402
from sgd_influence_plugin.settings import InfluenceSettings  # noqa: E402
from sgd_influence_plugin.target import centre_by_class  # noqa: E402

ORDERS = ("loss", "replay", "first-order", "centred", "centred-whitened")


def per_sample_gradients(model, arrays) -> Tuple[np.ndarray, List[str], List[int]]:
    """float64 (N, P) gradients of each row's loss, the parameter names and sizes."""
    n = len(next(iter(arrays.values())))
    graphs = core.GraphCache(model, fused=False)
    rows = []
    for i in range(n):
        sg = graphs(1)
        sg.feed(arrays, np.array([i]), np.ones(1, np.float32))
        sg.objective.forward(clear_no_need_grad=True)
        sg.zero_grads()
        sg.objective.backward(clear_buffer=True)
        rows.append(np.concatenate([np.asarray(p.g, np.float64).ravel() for p in sg.params]))
    names = list(sg.graph.params.keys())
    return np.stack(rows), names, [int(np.prod(p.shape)) for p in sg.params]


def centre_affine_inputs(g: np.ndarray, gv: np.ndarray, names, sizes):
    """Both gradient matrices in coordinates with every Affine layer's input centred."""
    ends = np.cumsum(sizes)
    block = {n: (e - s, e) for n, s, e in zip(names, sizes, ends)}
    g, gv = g.copy(), gv.copy()
    for name in names:
        bias = name[:-1] + "b"
        if not name.endswith("/W") or bias not in block:
            continue
        (wa, wb), (ba, bb) = block[name], block[bias]
        n_out = bb - ba
        if (wb - wa) % n_out:
            continue  # not an Affine layer's (in, out) matrix
        n_in = (wb - wa) // n_out
        w, d = g[:, wa:wb].reshape(len(g), n_in, n_out), g[:, ba:bb]
        norm = (d**2).sum(1)
        ok = norm > 1e-30
        m = (np.einsum("nio,no->ni", w[ok], d[ok]) / norm[ok, None]).mean(0)
        for mat in (g, gv):
            mat[:, wa:wb] -= np.einsum("i,no->nio", m, mat[:, ba:bb]).reshape(len(mat), -1)
    return g, gv


def orders_of(case: dict) -> Dict[str, np.ndarray]:
    """Each order's key (ascending = listed first) on one trained case."""
    model = load_model(model=case["model"])
    train = load_dataset(case["train"], model.info.input_shapes).arrays
    val = load_dataset(case["val"], model.info.input_shapes).arrays
    label = next(iter(model.info.label_classes))
    given = train[label].reshape(-1).astype(np.int64)
    res = compute_influence(model, train, val, InfluenceSettings(jobs=1))
    g, names, sizes = per_sample_gradients(model, train)
    gv = per_sample_gradients(model, val)[0]
    gc, gvc = centre_affine_inputs(g, gv, names, sizes)
    sd = gc.std(0) + 1e-12
    return {
        "loss": -res.losses,
        "replay": res.scores,
        "first-order": centre_by_class(g @ gv.mean(0), given),
        "centred": centre_by_class(gc @ gvc.mean(0), given),
        "centred-whitened": centre_by_class((gc / sd) @ (gvc / sd).mean(0), given),
    }


def main(argv=None) -> int:
    """Build, train and measure every case; print a line per table; write OUT/."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--titanic", help="the titanic_nnc2 folder; needed for titanic")
    p.add_argument("--datasets", default=",".join(tabular_data.DATASETS))
    p.add_argument("--scalings", default="raw")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--work", help="where the cases are built (default: a temporary folder)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="centred_geometry_")
    lines = ["| dataset | scaling | " + " | ".join(ORDERS) + " |", "|---" * (2 + len(ORDERS)) + "|"]
    for name in args.datasets.split(","):
        for scaling in args.scalings.split(","):
            got = {o: [] for o in ORDERS}
            for seed in (int(s) for s in args.seeds.split(",")):
                case = tabular_data.build_case(work, name, scaling, seed, 0.1, args.titanic)
                for order, key in orders_of(case).items():
                    got[order].append(precision_at_k(key, case["flipped"]))
            means = " | ".join(f"{np.mean(got[o]):.3f}" for o in ORDERS)
            lines.append(f"| {name} | {scaling} | {means} |")
            print(lines[-1], flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "centred_geometry.md"), "w") as f:
        f.write(f"# Precision@k of flipped labels (10%), means over seeds {args.seeds}\n\n")
        f.write("`experiments/centred_geometry.py`; see its docstring for the orders.\n\n")
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
