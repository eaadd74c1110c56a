"""Build the sample's NNC-format datasets (PNGs + CSVs) and its net.nntxt from Debian's
Fashion-MNIST package.

    python build_dataset.py [--out data] [--train 6000 --val 1000 --test 2000]
                            [--noise 0.1 --noise-seed 0] [--seed 0]
    python build_dataset.py --full [--out data_full] [--noise 0.1]

Subset (the default): train and validation images are drawn from Fashion-MNIST's training
file, test images from its test file. --full: all 60,000 training images go to train.csv and
the 10,000 test images to val.csv (no test.csv). With --noise, that share of the training
labels is flipped to another class at random; ``train_noise.csv`` records which (index,
clean_label, noisy_label, flipped). Then ``net.nntxt`` is written into the same folder, with
the CSVs' absolute paths and iter_per_epoch = training rows // batch size (make_net.py). A
second run with the same options does nothing.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)

import make_net  # noqa: E402

from support import fashion_mnist  # noqa: E402


def build(
    out,
    train=6000,
    val=1000,
    test=2000,
    noise=0.0,
    noise_seed=0,
    seed=0,
    full=False,
    source=fashion_mnist.DEFAULT_DIR,
    log=print,
):
    """Build (or keep) the dataset and its ``net.nntxt`` under ``out``.

    With ``full``, ``train``/``val``/``test``/``seed`` are ignored: every training image is
    written to train.csv and every test image to val.csv.

    Returns:
        Mapping of split name (``train``, ``val``, ``test`` unless full, ``noise`` with noise,
        ``net``) to its path.

    """
    if full:
        wanted = {"full": True, "noise": noise, "noise_seed": noise_seed}
    else:
        wanted = {
            "train": train,
            "val": val,
            "test": test,
            "noise": noise,
            "noise_seed": noise_seed,
            "seed": seed,
        }
    splits = ("train", "val") if full else ("train", "val", "test")
    paths = {k: os.path.join(out, f"{k}.csv") for k in splits}
    if noise > 0:
        paths["noise"] = os.path.join(out, "train_noise.csv")
    paths["net"] = os.path.join(out, "net.nntxt")
    stamp = os.path.join(out, "dataset.json")
    up_to_date = False
    if os.path.exists(stamp):
        with open(stamp) as f:
            up_to_date = json.load(f) == wanted
    if up_to_date:
        log(f"dataset in {out} is up to date")
    else:
        what = "all 60000/10000" if full else f"{train}/{val}/{test}"
        log(f"writing {what} Fashion-MNIST PNGs to {out} (label noise {noise:.0%})")
        for old in ("dataset.json", "net.nntxt", "test.csv", "train_noise.csv"):
            if os.path.exists(os.path.join(out, old)):
                os.remove(os.path.join(out, old))
        if full:
            fashion_mnist.build_full_splits(out, noise, noise_seed, data_dir=source)
        else:
            fashion_mnist.build_splits(
                out,
                fashion_mnist.SplitSizes(train, val, test),
                noise_rate=noise,
                noise_seed=noise_seed,
                seed=seed,
                data_dir=source,
            )
    if not up_to_date or not os.path.exists(paths["net"]):
        make_net.write_definition(out, paths["net"])
        log(
            f"wrote {paths['net']} (iter_per_epoch from {make_net.count_rows(paths['train'])} rows)"
        )
    if not up_to_date:
        with open(stamp, "w") as f:
            json.dump(wanted, f)
    return paths


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--out",
        default=os.path.join(HERE, "data"),
        help="output folder (default: data/ beside this script)",
    )
    p.add_argument("--train", type=int, default=6000, help="training images (default: 6000)")
    p.add_argument("--val", type=int, default=1000, help="validation images (default: 1000)")
    p.add_argument("--test", type=int, default=2000, help="test images (default: 2000)")
    p.add_argument(
        "--full",
        action="store_true",
        help="all 60,000 training images as train.csv, the 10,000 test images as val.csv, "
        "no test.csv (ignores --train/--val/--test/--seed)",
    )
    p.add_argument(
        "--noise", type=float, default=0.0, help="share of flipped training labels (default: 0)"
    )
    p.add_argument("--noise-seed", type=int, default=0, help="seed of the flips (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset split (default: 0)")
    p.add_argument(
        "--source",
        default=fashion_mnist.DEFAULT_DIR,
        help=f"folder of the four idx .gz files (default: {fashion_mnist.DEFAULT_DIR})",
    )
    a = p.parse_args()
    build(a.out, a.train, a.val, a.test, a.noise, a.noise_seed, a.seed, a.full, a.source)


if __name__ == "__main__":
    main()
