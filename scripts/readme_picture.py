"""The README's picture, from the demo's output: the most harmful training images with their
given label and the model's class, marked where the run recommends a change, and the
distribution of the influence.

    python scripts/readme_picture.py [--result samples/fashion_mnist/result/sgd_influence]
                                     [--out docs/images/demo.png]

``make picture`` runs the demo first, so the picture always shows the current tool.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEMO = os.path.join(ROOT, "samples", "fashion_mnist")


def main(argv=None) -> int:
    """Draw the picture; exit 2 with one line when the demo's output is missing."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--result", default=os.path.join(DEMO, "result", "sgd_influence"))
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "images", "demo.png"))
    p.add_argument("--shown", type=int, default=16, help="harmful images shown")
    a = p.parse_args(argv)
    table = os.path.join(a.result, "influence.csv")
    if not os.path.isfile(table):
        print(f"{table}: not found; run make demo first", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))  # most harmful first
    with open(os.path.join(DEMO, "label_names.txt"), encoding="utf-8") as f:
        names = f.read().splitlines()
    scores = np.array([float(r["influence"]) for r in rows])
    cols = 8
    lines = (a.shown + cols - 1) // cols
    fig = plt.figure(figsize=(cols * 1.25, lines * 1.55 + 2.2), dpi=100)
    grid = fig.add_gridspec(lines + 1, cols, height_ratios=[1.55] * lines + [2.0], hspace=0.6)
    for j, r in enumerate(rows[: a.shown]):
        ax = fig.add_subplot(grid[j // cols, j % cols])
        img = Image.open(os.path.join(a.result, r["x:image"]))
        ax.imshow(np.asarray(img), cmap="gray", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        given = names[int(r["y:label"])]
        model = names[int(r["suggested_label"])] if r["suggested_label"] else "?"
        changed = r["action"] != "keep"
        ax.set_title(
            f"given: {given}\nmodel: {model}", fontsize=7.5, color="#cc3311" if changed else "black"
        )
        for side in ax.spines.values():
            side.set_edgecolor("#cc3311" if changed else "#999999")
            side.set_linewidth(2.0 if changed else 0.5)
    ax = fig.add_subplot(grid[lines, :])
    ax.hist(scores, bins=80, color="#4477aa")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel(
        "influence (change of the mean validation loss if the row were removed; < 0 = harmful)"
    )
    ax.set_ylabel("rows")
    n_changed = sum(r["action"] != "keep" for r in rows)
    fig.suptitle(
        f"SGD-influence on the demo: the {a.shown} most harmful of {len(rows)} training images "
        f"(red: among the {n_changed} rows the run recommends removing)",
        fontsize=9,
    )
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp = a.out + ".tmp.png"
    fig.savefig(tmp, bbox_inches="tight")
    os.replace(tmp, a.out)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
