"""The whole loop on real images, as a console user would run it (``make demo``).

1. Build Fashion-MNIST PNG datasets and their ``net.nntxt`` (build_dataset.py).
2. Train that ``net.nntxt`` with ``nnabla_cli train``, the console's training engine, into
   ``result/`` (the result folder holds a copy of it, with absolute dataset paths, as the
   console writes it).
3. Run the console plugin script headless inside ``result/``, with no dataset arguments: it
   reads the datasets from the network definition, as it does when a user presses OK. The
   class names come from ``label_names.txt``.
4. Print the recommendation (how many rows to remove, and how many of them are
   the flipped labels) and where the influence CSV, report and cleansed CSV are (and the
   thumbnails, which are made only for images larger than the thumbnail box).

A second run reuses the data and the trained result when their inputs are unchanged.
"""

import argparse
import csv
import hashlib
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import build_dataset  # noqa: E402

from sgd_influence_plugin.report import format_score  # noqa: E402

PLUGIN = os.path.join(
    ROOT, "plugins", "_Post_Process", "_XAI", "_Image", "SGD_Influence_Cleansing.py"
)
LABEL_NAMES = os.path.join(HERE, "label_names.txt")
NNABLA_CLI = os.path.join(os.path.dirname(sys.executable), "nnabla_cli")


def say(msg):
    print(f"[demo] {msg}", flush=True)


def stream(cmd, cwd, keep=lambda line: True):
    """Run ``cmd``, echoing the lines ``keep`` selects; raise on failure."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    tail = []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        if keep(line):
            print("    " + line.rstrip(), flush=True)
    if proc.wait() != 0:
        sys.stdout.write("".join(tail))
        raise SystemExit(f"[demo] failed: {' '.join(cmd)}")


def write_result_definition(result, definition, data):
    """The result folder's net.nntxt: a copy of the one build_dataset.py wrote for the data
    (absolute dataset paths, iter_per_epoch from the training CSV).
    """
    with open(definition) as f:
        text = f.read()
    os.makedirs(result, exist_ok=True)
    with open(os.path.join(result, "net.nntxt"), "w") as f:
        f.write(text)
    return hashlib.sha256(
        text.encode() + open(os.path.join(data, "dataset.json"), "rb").read()
    ).hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train", type=int, default=6000, help="training images (default 6000)")
    p.add_argument("--val", type=int, default=1000, help="validation images (default 1000)")
    p.add_argument("--test", type=int, default=2000, help="test images (default 2000)")
    p.add_argument(
        "--noise",
        type=float,
        default=0.1,
        help="share of training labels flipped, to give the method something to "
        "find (default 0.1; the ground truth goes to data/train_noise.csv)",
    )
    p.add_argument("--workdir", default=HERE, help="where data/ and result/ go")
    a = p.parse_args()
    start = time.time()
    data = os.path.join(a.workdir, "data")
    result = os.path.join(a.workdir, "result")

    say("step 1/3: dataset")
    paths = build_dataset.build(data, a.train, a.val, a.test, a.noise, log=say)

    say("step 2/3: training with nnabla_cli train (the console's engine)")
    digest = write_result_definition(result, paths["net"], data)
    stamp = os.path.join(result, ".trained")
    if (
        os.path.exists(stamp)
        and open(stamp).read() == digest
        and os.path.exists(os.path.join(result, "results.nnp"))
    ):
        say("trained result is up to date")
    else:
        stream(
            [NNABLA_CLI, "train", "-c", "net.nntxt", "-o", "."],
            cwd=result,
            keep=lambda line: "cost=" in line or "Completed" in line,
        )
        with open(stamp, "w") as f:
            f.write(digest)

    say("step 3/3: the SGD-influence plugin, headless, in the result folder")
    stream(
        [sys.executable, PLUGIN, "--report", "--label_names", LABEL_NAMES],
        cwd=result,
        keep=lambda line: "Level 99" in line or "CRITICAL" in line or "WARNING" in line,
    )

    out = os.path.join(result, "sgd_influence")
    with open(os.path.join(out, "influence.csv")) as f:
        rows = list(csv.DictReader(f))
    flipped = None
    if "noise" in paths:
        with open(paths["noise"]) as f:
            flipped = [r["flipped"] == "1" for r in csv.DictReader(f)]
    with open(LABEL_NAMES, encoding="utf-8") as f:
        names = f.read().splitlines()
    say("the 5 most harmful training images:")
    for r in rows[:5]:
        extra = ""
        if flipped is not None:
            extra = "  (label was flipped)" if flipped[int(r["datasource_index"])] else ""
        say(
            f"  row {r['datasource_index']:>5}  {names[int(r['y:label'])]:<11}  influence "
            f"{format_score(r['influence'])}  {r['original']}{extra}"
        )
    if flipped is not None:
        k = max(1, sum(flipped))  # precision@k with k = the number of flipped labels
        hits = sum(flipped[int(r["datasource_index"])] for r in rows[:k])
        say(
            f"flipped labels among the top {k} harmful (k = number flipped): {hits} "
            f"(precision@k {hits / k:.2f}; {sum(flipped) / len(flipped):.0%} would be expected "
            "by chance)"
        )
    changed = [r for r in rows if r["action"] != "keep"]
    relabel = sum(r["action"] == "relabel" for r in changed)
    say(
        f"recommendation: relabel {relabel}, remove {len(changed) - relabel}, keep "
        f"{len(rows) - len(changed)} (why: see the summary)"
    )
    if flipped is not None and changed:
        hits = sum(flipped[int(r["datasource_index"])] for r in changed)
        say(
            f"  {hits} of the {len(changed)} changed rows are flipped labels (precision "
            f"{hits / len(changed):.2f}, recall {hits / max(1, sum(flipped)):.2f})"
        )
    say(f"influence CSV : {os.path.join(out, 'influence.csv')}")
    thumbs = os.path.join(out, "influence_thumbnails")
    if os.path.isdir(thumbs):  # only for images larger than the thumbnail box
        say(f"thumbnails    : {thumbs}")
    say(f"report        : {os.path.join(out, 'influence_report.html')}")
    say(f"summary       : {os.path.join(out, 'influence_summary.txt')}")
    say(f"cleansed CSV  : {os.path.join(out, 'influence_cleansed.csv')} (retrain on it)")
    say(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
