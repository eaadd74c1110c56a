"""The paper-protocol experiment (experiments/paper_protocol.py), at toy size.

The protocol itself takes hours; these tests run its code path on a few hundred real
Fashion-MNIST images and check what it writes against what it was given.
"""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from sgd_influence_plugin import ownership
from sgd_influence_plugin.dataset import read_csv_table
from sgd_influence_plugin.nnabla_adapter.training import initial_parameters, train_from_scratch
from support import fashion_mnist
from support.netdef import NetSpec, write_nntxt
from support.user_files import tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import paper_protocol  # noqa: E402

needs_data = pytest.mark.skipif(
    not fashion_mnist.available(), reason="Fashion-MNIST not installed (make data)"
)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@needs_data
def test_protocol_rows_removals_and_resume(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    argv = [
        "--work", str(work), "--out", str(out), "--pool-limit", "400", "--train", "200",
        "--val", "100", "--test", "100", "--epochs", "1", "--seeds", "3", "--noise", "0.1",
        "--jobs", "1",
    ]  # fmt: skip
    assert paper_protocol.main(argv + ["--ratios", "0.1"]) == 0
    rows = _rows(out / "results.csv")
    assert [(r["method"], int(r["n_removed"])) for r in rows] == [
        ("none", 0),
        ("final", 20),
        ("all", 20),
        ("random", 20),
    ]
    assert all(0 <= float(r["test_accuracy"]) <= 1 for r in rows)
    assert all(np.isfinite(float(r["test_loss"])) for r in rows)

    task = work / "task_0.1_3"
    flipped = np.array([r["flipped"] == "1" for r in _rows(task / "noise.csv")])
    assert flipped.sum() == 20  # 10% of 200, flipped with the seed
    _, train_rows = read_csv_table(str(task / "train.csv"))
    labels = np.array([int(r[1]) for r in train_rows])
    clean = np.array([int(r["clean_label"]) for r in _rows(task / "noise.csv")])
    assert ((labels != clean) == flipped).all()
    removed_by = {
        "final": np.argsort(np.load(task / "scores_final.npy"), kind="stable")[:20],
        "all": np.argsort(np.load(task / "scores_all.npy"), kind="stable")[:20],
        "random": np.random.RandomState(10_003).permutation(200)[:20],
    }
    for r in rows[1:]:
        removed = removed_by[r["method"]]
        # precision@n: flipped share among exactly the removed samples
        assert float(r["precision_at_n"]) == pytest.approx(flipped[removed].mean())
        # the retraining CSV holds every other image, once, and none of the removed ones
        _, kept = read_csv_table(str(task / f"{r['method']}_20" / "train.csv"))
        kept_images = sorted(k[0] for k in kept)
        assert kept_images == sorted(
            train_rows[i][0] for i in np.setdiff1d(np.arange(200), removed)
        )
    # The plugin's default estimate finds flipped labels above chance (0.10) even on a net
    # trained one epoch on 200 images (harmful-first; a sign slip gives about 0).
    assert float(rows[1]["precision_at_n"]) > 0.1

    summary = (out / "summary.md").read_text()
    d_final = float(rows[1]["test_accuracy"]) - float(rows[0]["test_accuracy"])
    assert f"| 10% (20) | final | 1 | {float(rows[1]['test_accuracy']):.4f}" in summary
    assert f"| {d_final:+.4f} | 1/1 |" in summary or f"| {d_final:+.4f} | 0/1 |" in summary
    assert (out / "figure2.png").stat().st_size > 10_000

    # Resume: a second run with one more ratio trains only the new removals.
    base = task / "base" / "results.nnp"
    stamp = base.stat().st_mtime_ns
    assert paper_protocol.main(argv + ["--ratios", "0.1,0.05"]) == 0
    again = _rows(out / "results.csv")
    assert base.stat().st_mtime_ns == stamp
    assert again[:1] + [r for r in again if r["n_removed"] == "20"] == rows
    assert sorted(r["method"] for r in again if r["n_removed"] == "10") == [
        "all",
        "final",
        "random",
    ]


def test_paired_table_against_hand_computed_differences():
    def row(seed, method, n, acc, loss, prec=float("nan")):
        return {
            "seed": seed,
            "method": method,
            "n_removed": n,
            "ratio": n / 100,
            "test_accuracy": acc,
            "test_loss": loss,
            "precision_at_n": prec,
        }

    rows = [
        row(0, "none", 0, 0.80, 0.50),
        row(1, "none", 0, 0.70, 0.60),
        row(0, "final", 10, 0.83, 0.45, 0.9),
        row(1, "final", 10, 0.69, 0.62, 0.7),
        row(0, "random", 10, 0.79, 0.52, 0.1),
        row(1, "random", 10, 0.71, 0.61, 0.1),
    ]
    table = {(g["method"], g["n_removed"]): g for g in paper_protocol.paired_table(rows)}
    g = table[("final", 10)]
    assert g["dacc_mean"] == pytest.approx(np.mean([0.03, -0.01]))
    # the sample deviation (n - 1), as "mean ± SD over seeds" is read: 0.0283, not 0.02
    assert g["dacc_std"] == pytest.approx(np.sqrt(((0.02) ** 2 + (-0.02) ** 2) / (2 - 1)))
    assert g["dloss_mean"] == pytest.approx(np.mean([-0.05, 0.02]))
    assert g["acc_mean"] == pytest.approx(0.76) and g["wins"] == "1/2"
    assert g["precision_mean"] == pytest.approx(0.8)
    assert table[("random", 10)]["dacc_mean"] == pytest.approx(0.0)
    assert table[("none", 0)]["dacc_mean"] == 0.0


def _nnabla_cli_initial_params(nntxt):
    """The parameters nnabla's own loader draws for a definition (per-tensor std)."""
    code = (
        "import json,sys,numpy as np,nnabla as nn;from nnabla.utils import load;"
        "load.load([sys.argv[1]]);"
        "print(json.dumps({k: float(v.d.std()) for k, v in "
        "nn.get_parameters(grad_only=False).items()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, nntxt], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_initial_parameters_seeded_like_nnabla_and_used_by_nnabla_cli(tmp_path):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 255, (64, 28, 28)).astype(np.uint8)
    train = fashion_mnist.write_png_dataset(
        images, rng.randint(0, 10, 64), str(tmp_path), "t.csv", "t"
    )
    nntxt = write_nntxt(
        NetSpec(arch="cnn", train_csv=train, val_csv=train, batch_size=32, lr=0.0, max_epoch=1),
        str(tmp_path / "net.nntxt"),
    )
    config = open(nntxt).read()
    a = initial_parameters(config, 1, str(tmp_path / "a.h5"))
    b = initial_parameters(config, 1, str(tmp_path / "b.h5"))
    c = initial_parameters(config, 2, str(tmp_path / "c.h5"))
    import h5py

    def load(path):
        out = {}
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda name, obj: (
                    out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
                )
            )
        return out

    pa, pb, pc = load(a), load(b), load(c)
    theirs = _nnabla_cli_initial_params(nntxt)
    assert sorted(pa) == sorted(theirs)
    for k, v in pa.items():
        assert np.array_equal(v, pb[k])
        if theirs[k] == 0:
            assert not v.any()  # biases: the constant 0
        else:
            assert not np.array_equal(v, pc[k])
            assert v.std() == pytest.approx(theirs[k], rel=0.25)
    # At lr 0, the model nnabla_cli trains is exactly the initialisation it was given.
    header, rows = read_csv_table(train)
    nnp = train_from_scratch(
        config, train, train, header, rows, np.arange(64), 0, str(tmp_path / "w"), a
    )
    from sgd_influence_plugin.nnabla_adapter import load_model

    trained = load_model(model=nnp).get_params()
    for k, v in trained.items():
        np.testing.assert_array_equal(v, pa[k])


# ----------------------------------------------------------------------------------------
# Its report folder follows the ownership rule (issue 18, case 1)
# ----------------------------------------------------------------------------------------


def _protocol_work(tmp_path):
    """A work folder with one finished toy task's rows (no models: the report skips what it
    cannot find)."""
    protocol = paper_protocol
    task = tmp_path / "work" / "task_0.1_0"
    task.mkdir(parents=True)
    rows = [
        ("none", 0, 0, 0.80, 0.50, "nan"),
        ("final", 0.1, 10, 0.82, 0.48, 0.6),
        ("all", 0.1, 10, 0.81, 0.49, 0.5),
        ("random", 0.1, 10, 0.79, 0.51, 0.1),
    ]
    protocol.save_rows(
        str(task / "rows.csv"),
        [
            dict(zip(protocol.ROW_KEYS, (0.1, 0, m, r, n, acc, loss, p, 1.0)))
            for m, r, n, acc, loss, p in rows
        ],
    )
    return str(tmp_path / "work")


def test_the_protocol_replaces_only_its_own_report(tmp_path, capfd):
    protocol = paper_protocol
    work = _protocol_work(tmp_path)
    out = tmp_path / "out"
    argv = ["--work", work, "--out", str(out), "--report-only", "--ratios", "0.1"]
    assert protocol.main(argv) == 0
    assert sorted(os.listdir(out)) == sorted(
        [ownership.LEDGER, "estimates", *protocol.REPORT_FILES]
    )
    assert (out / "estimates" / ownership.FOLDER_MARKER).is_file()
    assert protocol.main(argv) == 0  # its own report is replaced
    capfd.readouterr()
    # The user's notes in the report folder, or a file as --out: refused, nothing changes,
    # and a full run refuses before any task starts (no work folder is made).
    (out / "summary.md").write_text("my notes\n")
    for extra, pattern in (
        (["--report-only"], r"summary\.md: already exists and was not written"),
        ([], r"summary\.md: already exists and was not written"),
        (["--report-only", "--out", work + "/task_0.1_0/rows.csv"], r"is a file, not a folder"),
    ):
        fresh = str(tmp_path / "never")
        args = ["--work", work if extra else fresh, "--out", str(out), "--ratios", "0.1"] + extra
        before = tree(tmp_path)
        assert protocol.main(args) == 2
        err = capfd.readouterr().err.strip()
        assert err.startswith("paper_protocol: error: ") and "\n" not in err, err
        assert re.search(pattern, err), err
        assert tree(tmp_path) == before and not os.path.exists(fresh)
