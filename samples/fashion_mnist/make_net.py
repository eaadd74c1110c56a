"""Regenerate ``net.nntxt``, the sample's network definition, in the console's style.

    python make_net.py [--train-size 6000]

Main (training), MainValidation and MainRuntime networks; a small CNN (two 3x3 convolutions with
ReLU and max pooling, a 32-unit hidden layer, 10 outputs); the Sgd solver at lr 0.1; batch 64;
10 epochs. Dataset URIs are relative (``data/train.csv``): run_demo.py writes the result folder's
copy with absolute paths, as the console does.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

from support.netdef import NetSpec, write_nntxt  # noqa: E402

BATCH_SIZE = 64


def spec(train_size: int = 6000) -> NetSpec:
    """The sample's network and training settings."""
    return NetSpec(
        arch="cnn",
        input_shape=(1, 28, 28),
        n_classes=10,
        train_csv="data/train.csv",
        val_csv="data/val.csv",
        batch_size=BATCH_SIZE,
        lr=0.1,
        solver="Sgd",
        max_epoch=10,
        iter_per_epoch=max(1, train_size // BATCH_SIZE),
        seed=0,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train-size", type=int, default=6000)
    p.add_argument("--out", default=os.path.join(HERE, "net.nntxt"))
    a = p.parse_args()
    write_nntxt(spec(a.train_size), a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
