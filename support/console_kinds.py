r"""Small console datasets of every kind the console trains, in its CSV format.

- :func:`write_table`: number columns with raw scales (a Titanic-like table: class 1-3, age in
  years, fare up to ~500), header ``y:Survived,x__0:Pclass,...`` with the label column first;
  a class label, or ``binary=True`` for 0/1 labels of a sigmoid classifier.
- :func:`write_regression`: a bare ``x,y`` header (no ``:label`` part), y = f(x) + noise.
- :func:`write_series`: per-sample CSV inputs (one number per line, as the console's audio
  samples), named in the index CSV with Windows backslash paths ``.\\00\\12.csv``.
- :func:`write_colour`: 3-channel PNGs (a red or a green disc on noise).
- :func:`write_text`: word-index sequences as the console's Simple Text Classification plugin
  writes them (the text in a ``#`` column, the label, the length ``l``, the indices
  ``x__0..``), or as per-sample CSVs of indices.

Each returns ``{"train": path, "val": path, "input_shape": shape, "folder": folder}``. Data
are seeded: the same call writes the same bytes.
"""

from __future__ import annotations

import csv
import os
from typing import Dict, List, Sequence

import numpy as np

TABLE_FEATURES = ("Pclass", "Sex", "Age", "Fare", "SibSp")


def _write_csv(path: str, header: Sequence[str], rows: List[Sequence]) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def _table_rows(n: int, rng, binary: bool) -> List[list]:
    pclass = rng.randint(1, 4, n)
    sex = rng.randint(0, 2, n)
    age = np.round(rng.uniform(1, 80, n), 1)
    fare = np.round(rng.gamma(1.5, 40.0, n) * (4 - pclass), 2)
    sibsp = rng.poisson(0.6, n)
    logit = 1.8 * sex - 0.9 * (pclass - 2) - 0.02 * (age - 30) + 0.004 * fare
    label = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    if not binary:  # three classes: died, survived, survived with a large fare
        label = label + ((label == 1) & (fare > 120)).astype(int)
    return [[int(y), int(p), int(s), a, f, int(b)] for y, p, s, a, f, b in zip(
        label, pclass, sex, age, fare, sibsp)]  # fmt: skip


def write_table(folder: str, n_train: int, n_val: int, seed: int = 0, binary: bool = False):
    """A table with raw features; labels 0..2 (``binary``: 0/1). See the module docstring."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    header = ["y:Survived"] + [f"x__{k}:{name}" for k, name in enumerate(TABLE_FEATURES)]
    rows = _table_rows(n_train + n_val, rng, binary)
    return {
        "train": _write_csv(os.path.join(folder, "train.csv"), header, rows[:n_train]),
        "val": _write_csv(os.path.join(folder, "validation.csv"), header, rows[n_train:]),
        "input_shape": (len(TABLE_FEATURES),),
        "folder": folder,
    }


def write_regression(folder: str, n_train: int, n_val: int, seed: int = 0):
    """``x,y`` with y = sin(3x) + 0.05 noise on x in [0, 1]."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    x = rng.uniform(0, 1, n_train + n_val)
    y = np.sin(3 * x) + 0.05 * rng.randn(len(x))
    rows = [[f"{a:.5f}", f"{b:.5f}"] for a, b in zip(x, y)]
    return {
        "train": _write_csv(os.path.join(folder, "train.csv"), ["x", "y"], rows[:n_train]),
        "val": _write_csv(os.path.join(folder, "test.csv"), ["x", "y"], rows[n_train:]),
        "input_shape": (1,),
        "folder": folder,
    }


def write_series(folder: str, n_train: int, n_val: int, length: int = 16, seed: int = 0):
    """Per-sample CSVs ``<label>/<i>.csv`` of ``length`` lines (one number each): class 0 a
    slow wave, class 1 a fast one, plus noise; index CSVs with backslash paths.
    """
    rng = np.random.RandomState(seed)
    t = np.arange(length)
    rows: List[list] = []
    for i in range(n_train + n_val):
        label = int(rng.randint(0, 2))
        wave = np.sin(t * (0.3 if label == 0 else 1.2) + rng.uniform(0, 6.3))
        sub = os.path.join(folder, f"{label:02d}")
        os.makedirs(sub, exist_ok=True)
        np.savetxt(os.path.join(sub, f"{i}.csv"), wave + 0.3 * rng.randn(length), fmt="%.4f")
        rows.append([f".\\{label:02d}\\{i}.csv", label])
    header = ["x:image", "y:label"]
    return {
        "train": _write_csv(os.path.join(folder, "train.csv"), header, rows[:n_train]),
        "val": _write_csv(os.path.join(folder, "val.csv"), header, rows[n_train:]),
        "input_shape": (length, 1),
        "folder": folder,
    }


def write_colour(folder: str, n_train: int, n_val: int, size: int = 12, seed: int = 0):
    """RGB PNGs ``img/<i>.png``: label 0 a red disc, 1 a green one, on noise."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    rows: List[list] = []
    for i in range(n_train + n_val):
        label = int(rng.randint(0, 2))
        im = rng.randint(0, 90, (size, size, 3)).astype(np.uint8)
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (size * 0.3) ** 2
        im[disc, label] = 230
        Image.fromarray(im).save(os.path.join(folder, "img", f"{i}.png"))
        rows.append([f"img/{i}.png", label])
    header = ["x:image", "y:label"]
    return {
        "train": _write_csv(os.path.join(folder, "train.csv"), header, rows[:n_train]),
        "val": _write_csv(os.path.join(folder, "val.csv"), header, rows[n_train:]),
        "input_shape": (3, size, size),
        "folder": folder,
    }


def _sentences(n: int, length: int, vocab: int, n_classes: int, rng):
    """(labels, word indices (n, length)): each class has 4 keywords among 2..; a text's
    words are its keywords (35%), any other word, or 1 (a word outside the dictionary),
    then 0 to the end (the text ends).
    """
    keywords = 2 + np.arange(4 * n_classes).reshape(n_classes, 4)
    labels = rng.randint(0, n_classes, n)
    x = np.zeros((n, length), dtype=int)
    for i, label in enumerate(labels):
        words = int(rng.randint(4, length + 1))
        own = rng.uniform(size=words) < 0.35
        other = rng.randint(2 + 4 * n_classes, vocab + 1, words)
        other[other == vocab] = 1  # "(others)"
        x[i, :words] = np.where(own, rng.choice(keywords[label], words), other)
    return labels, x


def write_text(folder: str, n_train: int, n_val: int, length: int = 12, vocab: int = 50,
               n_classes: int = 3, seed: int = 0, files: bool = False):  # fmt: skip
    """Word-index texts of ``n_classes`` topics (see :func:`_sentences`). Columns as the
    console's text plugin writes them: ``# x:text`` (the words, commas and all), ``y:label``,
    ``l`` (the length) and ``x__0..x__{length-1}``; or, with ``files``, ``x:image`` naming a
    per-sample CSV of ``length`` lines, one index each.
    """
    os.makedirs(folder, exist_ok=True)
    labels, x = _sentences(n_train + n_val, length, vocab, n_classes, np.random.RandomState(seed))
    rows: List[list] = []
    for i, (label, words) in enumerate(zip(labels, x)):
        n = int(np.count_nonzero(words))
        text = ", ".join(f"w{w}" for w in words[:n])
        if files:
            os.makedirs(os.path.join(folder, "text"), exist_ok=True)
            np.savetxt(os.path.join(folder, "text", f"{i}.csv"), words, fmt="%d")
            rows.append([text, f"text/{i}.csv", int(label)])
        else:
            rows.append([text, int(label), n] + [int(w) for w in words])
    header = ["# x:text"] + (["x:image", "y:label"] if files else
                             ["y:label", "l"] + [f"x__{k}" for k in range(length)])  # fmt: skip
    return {
        "train": _write_csv(os.path.join(folder, "train.csv"), header, rows[:n_train]),
        "val": _write_csv(os.path.join(folder, "val.csv"), header, rows[n_train:]),
        "input_shape": (length, 1) if files else (length,),
        "folder": folder,
    }


def read_rows(path: str) -> Dict[str, list]:
    """A CSV as ``{"header": [...], "rows": [[...], ...]}`` (text cells)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        table = list(csv.reader(f))
    return {"header": table[0], "rows": table[1:]}
