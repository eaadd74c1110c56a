"""Build the sample's NNC-format datasets (PNGs + CSVs) from Debian's Fashion-MNIST package.

    python build_dataset.py [--out data] [--train 6000 --val 1000 --test 2000]
                            [--noise 0.1 --noise-seed 0] [--seed 0]

Train and validation images come from Fashion-MNIST's training file, test images from its test
file. With --noise, that share of the training labels is flipped to another class at random;
``train_noise.csv`` records which (index, clean_label, noisy_label, flipped). A second run with
the same options does nothing.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from support import fashion_mnist  # noqa: E402


def build(out, train=6000, val=1000, test=2000, noise=0.0, noise_seed=0, seed=0, log=print):
    """Build (or keep) the dataset under ``out``; returns the split -> CSV path mapping."""
    wanted = {
        "train": train,
        "val": val,
        "test": test,
        "noise": noise,
        "noise_seed": noise_seed,
        "seed": seed,
    }
    stamp = os.path.join(out, "dataset.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == wanted:
                log(f"dataset in {out} is up to date")
                paths = {k: os.path.join(out, f"{k}.csv") for k in ("train", "val", "test")}
                if noise > 0:
                    paths["noise"] = os.path.join(out, "train_noise.csv")
                return paths
    log(f"writing {train}/{val}/{test} Fashion-MNIST PNGs to {out} (label noise {noise:.0%})")
    if os.path.exists(stamp):
        os.remove(stamp)
    paths = fashion_mnist.build_splits(
        out,
        fashion_mnist.SplitSizes(train, val, test),
        noise_rate=noise,
        noise_seed=noise_seed,
        seed=seed,
    )
    if noise == 0 and os.path.exists(os.path.join(out, "train_noise.csv")):
        os.remove(os.path.join(out, "train_noise.csv"))
    with open(stamp, "w") as f:
        json.dump(wanted, f)
    return paths


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    )
    p.add_argument("--train", type=int, default=6000)
    p.add_argument("--val", type=int, default=1000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--noise", type=float, default=0.0, help="share of flipped training labels")
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    a = p.parse_args()
    build(a.out, a.train, a.val, a.test, a.noise, a.noise_seed, a.seed)


if __name__ == "__main__":
    main()
