"""Noisy tabular cases for :mod:`tabular_scores`: console CSVs and ``nnabla_cli train`` results.

Each case is one table, raw or standardized, with a seeded share of its training labels
flipped, written as console dataset CSVs (``x__0:NAME,...,y:label`` or, for Titanic, the
CSV's own header, label first) and trained by ``nnabla_cli train`` (the console's engine):

- ``titanic``: the Titanic sample's own ``train.csv``/``validation.csv`` and the console's own
  network (Affine-ReLU-Affine-Softmax-CategoricalCrossEntropy, Adam) from its ``results.nnp``,
  retrained from scratch on the noisy labels. Needs ``--titanic DIR`` (the folder holding
  ``data/`` and ``result/``).
- ``breast_cancer``, ``wine``: scikit-learn's bundled sets (needs scikit-learn, an experiment
  dependency only), a seeded 70/30 split, and :mod:`support.netdef`'s ``mlp``
  (Affine(64)-ReLU-Affine-SoftmaxCrossEntropy, Adam 0.001).

Standardized = each feature minus its training mean, over its training standard deviation.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from support.netdef import NetSpec, write_nntxt  # noqa: E402

NNABLA_CLI = os.path.join(os.path.dirname(sys.executable), "nnabla_cli")
DATASETS = ("titanic", "breast_cancer", "wine", "synth")


@dataclass
class Table:
    """One table: features (N, D) float64, labels (N,) int, split into training and validation."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    header: List[str]  # the CSV header: x__0:NAME ... and the label column, first or last
    n_classes: int


def _read_console_csv(path: str):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], np.array(rows[1:], dtype=np.float64)
    return header, body[:, 1:], body[:, 0].astype(np.int64)


def load_table(name: str, titanic: Optional[str], seed: int = 0) -> Table:
    """The table ``name`` (one of :data:`DATASETS`), clean labels."""
    if name == "titanic":
        if not titanic:
            raise SystemExit("titanic needs --titanic DIR (the folder with data/ and result/)")
        header, xt, yt = _read_console_csv(os.path.join(titanic, "data", "train.csv"))
        _, xv, yv = _read_console_csv(os.path.join(titanic, "data", "validation.csv"))
        return Table(xt, yt, xv, yv, header, 2)
    from sklearn import datasets  # experiment dependency only

    if name == "synth":
        return synthetic_table(seed)
    data = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine}[name]()
    x, y = np.asarray(data.data, np.float64), np.asarray(data.target, np.int64)
    perm = np.random.RandomState(1000 + seed).permutation(len(y))
    cut = int(round(0.7 * len(y)))
    names = [str(n).replace(" ", "_") for n in data.feature_names]
    header = [f"x__{i}:{n}" for i, n in enumerate(names)] + ["y:label"]
    tr, va = perm[:cut], perm[cut:]
    return Table(x[tr], y[tr], x[va], y[va], header, int(y.max()) + 1)


def synthetic_table(seed: int) -> Table:
    """scikit-learn's ``make_classification``: 2,000 rows of 10 features (5 informative),
    3 overlapping classes (``class_sep`` 1), no label noise; 1,400 training rows, 600
    validation rows (a table large enough for the one-way check).
    """
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=2000, n_features=10, n_informative=5, n_redundant=2, n_classes=3,
        n_clusters_per_class=1, class_sep=1.0, flip_y=0.0, random_state=seed,
    )  # fmt: skip
    header = [f"x__{i}:f{i}" for i in range(10)] + ["y:label"]
    return Table(x[:1400], y[:1400], x[1400:], y[1400:], header, 3)


def standardize(table: Table) -> Table:
    """Each feature scaled by the training rows' mean and standard deviation."""
    mean, std = table.x_train.mean(0), table.x_train.std(0)
    std = np.where(std > 0, std, 1.0)
    return Table(
        (table.x_train - mean) / std, table.y_train, (table.x_val - mean) / std, table.y_val,
        table.header, table.n_classes,
    )  # fmt: skip


def flip_labels(labels: np.ndarray, rate: float, n_classes: int, seed: int) -> np.ndarray:
    """A ``rate`` share of the labels (seeded) moved to another class drawn uniformly;
    returns the noisy labels (``noisy != labels`` marks the flips).
    """
    rng = np.random.RandomState(seed)
    idx = rng.choice(len(labels), size=int(round(rate * len(labels))), replace=False)
    noisy = labels.copy()
    noisy[idx] = (labels[idx] + rng.randint(1, n_classes, size=len(idx))) % n_classes
    return noisy


def write_csv(path: str, header: List[str], x: np.ndarray, y: np.ndarray) -> str:
    """A console dataset CSV: the label column where ``header`` has it (first or last), the
    features in order (repr floats).
    """
    first = header[0].startswith("y")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for xi, yi in zip(x, y):
            cells = [repr(float(v)) for v in xi]
            w.writerow([int(yi)] + cells if first else cells + [int(yi)])
    return path


def _train(folder: str, nntxt: str) -> str:
    proc = subprocess.run(
        [NNABLA_CLI, "train", "-c", nntxt, "-o", folder], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"nnabla_cli train failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    with zipfile.ZipFile(os.path.join(folder, "results.nnp")) as zf, zf.open(
        "parameter.h5"
    ) as src, open(os.path.join(folder, "parameters.h5"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    return os.path.join(folder, "results.nnp")


def titanic_nntxt(titanic: str, train_csv: str, val_csv: str, path: str) -> str:
    """The console's Titanic definition with its datasets pointed at our CSVs, on the CPU."""
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    with zipfile.ZipFile(os.path.join(titanic, "result", "results.nnp")) as zf:
        text = zf.read("net.nntxt").decode()
    proto = nnabla_pb2.NNablaProtoBuf()
    text_format.Merge(text, proto)
    proto.global_config.default_context.ClearField("backends")
    proto.global_config.default_context.backends.append("cpu:float")
    proto.global_config.default_context.array_class = "CpuCachedArray"
    for ds in proto.dataset:
        ds.uri = train_csv if ds.name == "Training" else val_csv
        ds.ClearField("cache_dir")
        ds.create_cache_explicitly = False
    with open(path, "w") as f:
        f.write(text_format.MessageToString(proto))
    return path


def train_case(folder: str, name: str, table: Table, csvs: dict, titanic: Optional[str]) -> str:
    """Train the case's network on ``csvs`` into ``folder``; returns its results.nnp."""
    os.makedirs(folder, exist_ok=True)
    nntxt = os.path.join(folder, "net.nntxt")
    if name == "titanic":
        titanic_nntxt(titanic, csvs["train"], csvs["val"], nntxt)
    else:
        n = len(table.y_train)
        spec = NetSpec(
            arch="mlp", input_shape=(table.x_train.shape[1],), n_classes=table.n_classes,
            train_csv=csvs["train"], val_csv=csvs["val"], batch_size=32, lr=0.001,
            solver="Adam", max_epoch=200, iter_per_epoch=max(1, n // 32), seed=0,
        )  # fmt: skip
        write_nntxt(spec, nntxt)
    return _train(folder, nntxt)


def build_case(
    work: str, name: str, scaling: str, seed: int, rate: float, titanic=None, noise_seed=None
) -> dict:
    """Write and train one case; returns ``model`` (results.nnp), ``train``/``val`` (CSVs),
    ``flipped`` (bool (N,)) and ``true`` (int (N,), the clean training labels). The flips are
    drawn with ``noise_seed`` (default ``seed``; keep it apart from the run's seed, see
    docs/recommendation.md, "A trap in synthetic label noise").
    """
    table = load_table(name, titanic, seed)
    if scaling == "std":
        table = standardize(table)
    noise_seed = seed if noise_seed is None else noise_seed
    noisy = flip_labels(table.y_train, rate, table.n_classes, noise_seed)
    folder = os.path.join(work, f"{name}_{scaling}_s{seed}_r{rate:g}")
    os.makedirs(folder, exist_ok=True)
    csvs = {
        "train": write_csv(os.path.join(folder, "train.csv"), table.header, table.x_train, noisy),
        "val": write_csv(os.path.join(folder, "val.csv"), table.header, table.x_val, table.y_val),
    }
    model = train_case(os.path.join(folder, "result"), name, table, csvs, titanic)
    return {**csvs, "model": model, "flipped": noisy != table.y_train, "true": table.y_train}
