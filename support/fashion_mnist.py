"""Build console-format PNG datasets from Debian's ``dataset-fashion-mnist`` package.

Fashion-MNIST (Xiao et al. 2017): 60,000 training and 10,000 test images, 28x28 grayscale,
10 classes, stored in MNIST's idx format. ``apt-get install dataset-fashion-mnist`` puts the
four ``.gz`` files in :data:`DEFAULT_DIR`. Nothing is downloaded at run time.

The CSVs written here are what Neural Network Console expects: a header ``x:image,y:label``,
one row per sample, image paths relative to the CSV's folder. :func:`make_png_dataset` makes
the tests' small datasets (generated patterns where the package is not installed).
"""

from __future__ import annotations

import csv
import gzip
import os
import struct
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np

from sgd_influence_plugin.errors import InputError
from sgd_influence_plugin.io_utils import atomic_write

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def available(data_dir: str = DEFAULT_DIR) -> bool:
    """True when the four idx files are present."""
    return all(os.path.exists(os.path.join(data_dir, f)) for p in _FILES.values() for f in p)


def read_idx(path: str) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed) into a uint8 array of its stored shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise InputError(f"{path}: not an unsigned-byte idx file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(split: str, data_dir: str = DEFAULT_DIR):
    """Return ``(images, labels)`` of ``split`` ('train' or 'test').

    Returns:
        images: (N, 28, 28) uint8; labels: (N,) int64 in 0..9.

    """
    if not available(data_dir):
        raise InputError(
            f"Fashion-MNIST not found in {data_dir}; install it with "
            "'apt-get install dataset-fashion-mnist' (or run 'make data')"
        )
    img_name, lab_name = _FILES[split]
    images = read_idx(os.path.join(data_dir, img_name))
    labels = read_idx(os.path.join(data_dir, lab_name)).astype(np.int64)
    return images, labels


def write_png_dataset(
    images: np.ndarray,
    labels: Sequence[int],
    out_dir: str,
    csv_name: str,
    image_subdir: str,
    extra_columns: Optional[Dict[str, Sequence]] = None,
) -> str:
    """Write images as PNGs under ``out_dir/image_subdir`` and a console CSV listing them.

    Args:
        images: (N, H, W) uint8 grayscale or (N, H, W, 3) uint8 RGB.
        labels: N integer labels.
        out_dir: folder of the CSV; image paths in it are relative to this folder.
        csv_name: file name of the CSV.
        image_subdir: folder (relative to ``out_dir``) for the PNGs.
        extra_columns: optional more columns, e.g. ``{"#original_label": [...]}``.

    Returns:
        The CSV's path.

    """
    from PIL import Image

    os.makedirs(os.path.join(out_dir, image_subdir), exist_ok=True)
    rel_paths = []
    for i, img in enumerate(images):
        rel = f"{image_subdir}/{i:06d}.png"
        full = os.path.join(out_dir, rel)
        Image.fromarray(np.asarray(img, dtype=np.uint8)).save(full)
        rel_paths.append(rel)
    extra_columns = extra_columns or {}
    header = ["x:image", "y:label"] + list(extra_columns)
    path = os.path.join(out_dir, csv_name)
    with atomic_write(path, newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for i, rel in enumerate(rel_paths):
            w.writerow([rel, int(labels[i])] + [extra_columns[k][i] for k in extra_columns])
    return path


def flip_labels(labels: np.ndarray, rate: float, n_classes: int, seed: int) -> np.ndarray:
    """Symmetric label noise: a ``rate`` share of the labels, chosen at random, each replaced
    by a different class drawn uniformly.

    Returns:
        (N,) int64 noisy labels; ``noisy != labels`` marks exactly the flipped samples.

    """
    rng = np.random.RandomState(seed)
    labels = np.asarray(labels, dtype=np.int64)
    noisy = labels.copy()
    n_flip = int(round(rate * len(labels)))
    idx = rng.choice(len(labels), size=n_flip, replace=False)
    shift = rng.randint(1, n_classes, size=n_flip)
    noisy[idx] = (labels[idx] + shift) % n_classes
    return noisy


def write_noisy_train(data: Dict, rate: float, seed: int, name: str = "train_noisy.csv"):
    """A copy of ``data``'s training CSV (``x:image,y:label``, as :func:`make_png_dataset`
    writes it) beside it with a ``rate`` share of its labels flipped (:func:`flip_labels`,
    10 classes, ``seed``): ``(its path, bool (N,) the flipped rows)``.
    """
    with open(data["train"], newline="") as f:
        table = list(csv.reader(f))
    labels = np.array([int(r[1]) for r in table[1:]])
    noisy = flip_labels(labels, rate, 10, seed)
    path = os.path.join(data["folder"], name)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(table[0])
        w.writerows([r[0], int(y)] for r, y in zip(table[1:], noisy))
    return path, noisy != labels


@dataclass
class SplitSizes:
    """Numbers of images in each split; train and validation come from Fashion-MNIST's
    training file, test from its test file.
    """

    train: int = 6000
    val: int = 1000
    test: int = 2000


def _add_noise(out_dir: str, labels: np.ndarray, noise_rate: float, noise_seed: int):
    """Flip a ``noise_rate`` share of ``labels``; write ``train_noise.csv``; return
    ``(noisy labels, path)``.
    """
    noisy = flip_labels(labels, noise_rate, len(CLASS_NAMES), noise_seed)
    path = os.path.join(out_dir, "train_noise.csv")
    os.makedirs(out_dir, exist_ok=True)
    with atomic_write(path, newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["index", "clean_label", "noisy_label", "flipped"])
        for i, (c, n) in enumerate(zip(labels, noisy)):
            w.writerow([i, int(c), int(n), int(c != n)])
    return noisy, path


def build_splits(
    out_dir: str,
    sizes: Optional[SplitSizes] = None,
    noise_rate: float = 0.0,
    noise_seed: int = 0,
    seed: int = 0,
    data_dir: str = DEFAULT_DIR,
) -> Dict[str, str]:
    """Write ``train.csv``, ``val.csv`` and ``test.csv`` (and PNGs) under ``out_dir``.

    With ``noise_rate > 0`` the training labels get symmetric noise (see :func:`flip_labels`)
    and ``train_noise.csv`` records the ground truth: ``index,clean_label,noisy_label,flipped``.

    Returns:
        Mapping of split name to CSV path (plus ``noise`` when noise was added).

    """
    sizes = sizes or SplitSizes()
    images, labels = load_split("train", data_dir)
    test_images, test_labels = load_split("test", data_dir)
    if sizes.train + sizes.val > len(images) or sizes.test > len(test_images):
        raise InputError(
            f"requested sizes {sizes} exceed Fashion-MNIST's {len(images)}/{len(test_images)} "
            "images"
        )
    rng = np.random.RandomState(seed)
    perm = rng.permutation(len(images))
    tr, va = perm[: sizes.train], perm[sizes.train : sizes.train + sizes.val]
    te = rng.permutation(len(test_images))[: sizes.test]
    train_labels = labels[tr]
    out = {}
    if noise_rate > 0:
        train_labels, out["noise"] = _add_noise(out_dir, train_labels, noise_rate, noise_seed)
    out["train"] = write_png_dataset(images[tr], train_labels, out_dir, "train.csv", "train")
    out["val"] = write_png_dataset(images[va], labels[va], out_dir, "val.csv", "val")
    out["test"] = write_png_dataset(test_images[te], test_labels[te], out_dir, "test.csv", "test")
    return out


def build_full_splits(
    out_dir: str, noise_rate: float = 0.0, noise_seed: int = 0, data_dir: str = DEFAULT_DIR
) -> Dict[str, str]:
    """Write the whole dataset: every training image to ``train.csv``, every test image to
    ``val.csv`` (in the files' order; 60,000 and 10,000 for Fashion-MNIST). No test split.

    Noise as in :func:`build_splits`.

    Returns:
        Mapping of ``train``, ``val`` (and ``noise``) to CSV paths.

    """
    images, labels = load_split("train", data_dir)
    test_images, test_labels = load_split("test", data_dir)
    out = {}
    if noise_rate > 0:
        labels, out["noise"] = _add_noise(out_dir, labels, noise_rate, noise_seed)
    out["train"] = write_png_dataset(images, labels, out_dir, "train.csv", "train")
    out["val"] = write_png_dataset(test_images, test_labels, out_dir, "val.csv", "val")
    return out


#: Look-alike classes of Fashion-MNIST, the label errors annotators make: each class and the
#: class its wrong labels go to (T-shirt <-> Shirt, Pullover <-> Coat, Sandal <-> Sneaker,
#: Ankle boot -> Sneaker, Trouser -> Dress, Dress -> Coat, Bag -> Pullover).
CONFUSABLE = {0: 6, 6: 0, 2: 4, 4: 2, 5: 7, 7: 5, 9: 7, 1: 3, 3: 4, 8: 2}


def flip_to_confusable(labels: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Class-dependent label noise: a ``rate`` share of the labels, chosen at random, each moved
    to its class's look-alike in :data:`CONFUSABLE`.

    Returns:
        (N,) int64 noisy labels; ``noisy != labels`` marks exactly the flipped samples.

    """
    rng = np.random.RandomState(seed)
    labels = np.asarray(labels, dtype=np.int64)
    noisy = labels.copy()
    idx = rng.choice(len(labels), size=int(round(rate * len(labels))), replace=False)
    noisy[idx] = np.array([CONFUSABLE[int(k)] for k in labels[idx]], dtype=np.int64)
    return noisy


def _source_images(n: int, seed: int):
    """(images uint8 (n, 28, 28), labels int (n,)): Fashion-MNIST, or generated patterns."""
    rng = np.random.RandomState(seed)
    if available():
        images, labels = load_split("train")
        idx = rng.choice(len(images), n, replace=False)
        return images[idx], labels[idx]
    labels = rng.randint(0, 10, n)
    yy, xx = np.mgrid[:28, :28]
    images = np.empty((n, 28, 28), np.uint8)
    for i, c in enumerate(labels):
        base = 127 + 100 * np.sin((c + 1) * xx / 9.0 + c * yy / 7.0)
        images[i] = np.clip(base + rng.randn(28, 28) * 40, 0, 255).astype(np.uint8)
    return images, labels


def make_png_dataset(folder, n_train, n_val, size=28, seed=0):
    """Write train.csv / val.csv (x:image,y:label) with PNGs of ``size`` x ``size``: a random
    sample of Fashion-MNIST's training images when the package is installed, otherwise
    generated class-dependent patterns, so the tests run anywhere.

    Returns:
        ``{"folder", "train", "val", "size"}``: the folder, the two CSVs' paths, the size.

    """
    from PIL import Image

    images, labels = _source_images(n_train + n_val, seed)
    if size != 28:
        images = np.stack(
            [np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images]
        )
    os.makedirs(folder, exist_ok=True)
    train = write_png_dataset(images[:n_train], labels[:n_train], folder, "train.csv", "train")
    val = write_png_dataset(images[n_train:], labels[n_train:], folder, "val.csv", "val")
    return {"folder": str(folder), "train": train, "val": val, "size": size}
