"""Write ``net.nntxt``, the sample's network definition, in the console's style, for a dataset.

    python make_net.py [--data data] [--out data/net.nntxt]

Main (training), MainValidation and MainRuntime networks; a small CNN (two 3x3 convolutions with
ReLU and max pooling, a 32-unit hidden layer, 10 outputs); the Sgd solver at lr 0.1; batch 64;
10 epochs. The dataset URIs are the absolute paths of ``DATA/train.csv`` and ``DATA/val.csv``
(as the console writes them into a result folder), and ``iter_per_epoch`` is computed from the
training CSV: rows // 64. ``nnabla_cli train`` runs max_epoch * iter_per_epoch steps and never
computes that number itself, so a definition for other data needs its own. build_dataset.py
calls this after writing the data.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

from support.netdef import NetSpec, write_nntxt  # noqa: E402

BATCH_SIZE = 64


def spec(train_csv: str, val_csv: str, train_size: int) -> NetSpec:
    """The sample's network and training settings for ``train_size`` training rows."""
    return NetSpec(
        arch="cnn",
        input_shape=(1, 28, 28),
        n_classes=10,
        train_csv=train_csv,
        val_csv=val_csv,
        batch_size=BATCH_SIZE,
        lr=0.1,
        solver="Sgd",
        max_epoch=10,
        iter_per_epoch=max(1, train_size // BATCH_SIZE),
        seed=0,
    )


def count_rows(csv_path: str) -> int:
    """Data rows of a console CSV (lines after the header, blank lines not counted)."""
    with open(csv_path, encoding="utf-8-sig") as f:
        return sum(1 for line in f if line.strip()) - 1


def write_definition(data: str, out: str = "") -> str:
    """Write the definition for the dataset in folder ``data``; returns its path.

    Args:
        data: folder holding ``train.csv`` and ``val.csv``.
        out: where to write (default: ``data/net.nntxt``).

    """
    data = os.path.abspath(data)
    train_csv, val_csv = os.path.join(data, "train.csv"), os.path.join(data, "val.csv")
    out = out or os.path.join(data, "net.nntxt")
    return write_nntxt(spec(train_csv, val_csv, count_rows(train_csv)), out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--data",
        default=os.path.join(HERE, "data"),
        help="folder with train.csv and val.csv (default: data/ beside this script)",
    )
    p.add_argument("--out", default="", help="definition to write (default: DATA/net.nntxt)")
    a = p.parse_args()
    print(f"wrote {write_definition(a.data, a.out)}")


if __name__ == "__main__":
    main()
