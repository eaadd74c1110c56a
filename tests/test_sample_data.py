"""The sample's dataset builder and network definition writer."""

import csv
import os

import numpy as np
import pytest

from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.errors import ParameterError
from sgd_influence_plugin.nnabla_adapter import load_model
from support import fashion_mnist
from support.netdef import NetSpec, write_nntxt


def test_flip_labels_flips_exactly_the_share_to_other_classes():
    labels = np.arange(1000) % 10
    noisy = fashion_mnist.flip_labels(labels, 0.1, 10, seed=3)
    changed = noisy != labels
    assert changed.sum() == 100
    assert ((noisy >= 0) & (noisy < 10)).all()
    # every class is a possible target: noise is symmetric, not a fixed permutation
    assert len(set(noisy[changed] - labels[changed]) | set((noisy - labels)[changed] % 10)) > 5


@pytest.mark.skipif(not fashion_mnist.available(), reason="needs dataset-fashion-mnist (make data)")
def test_build_splits_with_noise_ground_truth(tmp_path):
    paths = fashion_mnist.build_splits(
        str(tmp_path), fashion_mnist.SplitSizes(40, 10, 10), noise_rate=0.25, noise_seed=1
    )
    with open(paths["noise"]) as f:
        truth = list(csv.DictReader(f))
    assert sum(r["flipped"] == "1" for r in truth) == 10
    with open(paths["train"]) as f:
        rows = list(csv.DictReader(f))
    for r, t in zip(rows, truth):
        assert r["y:label"] == t["noisy_label"]
        assert (t["clean_label"] != t["noisy_label"]) == (t["flipped"] == "1")
    ds = load_dataset(paths["test"], {"x": (1, 28, 28), "y": (1,)})
    assert ds.size == 10 and ds.arrays["x"].max() <= 1.0


def test_written_definition_has_console_layout_and_initializers(tmp_path):
    spec = NetSpec(arch="cnn_bn", solver="Momentum", lr=0.02, weight_decay=1e-4, iter_per_epoch=3)
    path = write_nntxt(spec, str(tmp_path / "net.nntxt"))
    text = open(path).read()
    for name in ('"Main"', '"MainValidation"', '"MainRuntime"', "NormalConvolutionGlorot"):
        assert name in text
    assert "iter_per_epoch: 3" in text and 'type: "Momentum"' in text
    # The file holds no parameters (the console keeps them apart): loading it alone says so.
    with pytest.raises(ParameterError, match=r"holds no parameters .*--params"):
        load_model(config=path)


def _write_idx(path, array):
    """An idx file as MNIST's are stored: magic (0, 0x08, ndim), big-endian dims, bytes."""
    import gzip
    import struct

    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture()
def small_source(tmp_path):
    """Fashion-MNIST's four files in its format, with 200 training and 30 test images."""
    rng = np.random.RandomState(0)
    folder = tmp_path / "source"
    folder.mkdir()
    labels = {"train": np.arange(200) % 10, "t10k": rng.randint(0, 10, 30)}
    for prefix, lab in labels.items():
        images = rng.randint(0, 256, (len(lab), 28, 28))
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", lab)
    return str(folder), labels


def _sample_module(name):
    import importlib.util
    import sys

    here = os.path.join(os.path.dirname(os.path.dirname(__file__)), "samples", "fashion_mnist")
    sys.path.insert(0, here)
    try:
        spec = importlib.util.spec_from_file_location(name, os.path.join(here, name + ".py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(here)
    return mod


def _definition(path):
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    proto = nnabla_pb2.NNablaProtoBuf()
    text_format.Merge(open(path).read(), proto)
    return proto


def test_sample_definition_counts_iter_per_epoch_from_the_data(tmp_path, small_source):
    source, _ = small_source
    build = _sample_module("build_dataset").build
    out = tmp_path / "data"
    messages = []
    paths = build(str(out), 150, 20, 10, source=source, log=messages.append)
    proto = _definition(paths["net"])
    assert proto.training_config.iter_per_epoch == 150 // 64 == 2
    uris = {d.name: d.uri for d in proto.dataset}
    assert uris == {"Training": str(out / "train.csv"), "Validation": str(out / "val.csv")}
    assert proto.dataset[0].batch_size == 64
    # same options again: nothing is rewritten
    before = {p: os.path.getmtime(p) for p in (paths["net"], paths["train"])}
    build(str(out), 150, 20, 10, source=source, log=messages.append)
    assert messages[-1].endswith("is up to date")
    assert {p: os.path.getmtime(p) for p in before} == before


def test_full_split_takes_every_training_image_and_the_test_set_as_validation(
    tmp_path, small_source
):
    source, labels = small_source
    build = _sample_module("build_dataset").build
    out = tmp_path / "full"
    paths = build(str(out), full=True, noise=0.1, source=source, log=lambda m: None)
    assert not (out / "test.csv").exists()
    for split, key in (("train", "train"), ("val", "t10k")):
        with open(paths[split]) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == len(labels[key])
        if split == "val":
            assert [int(r["y:label"]) for r in rows] == labels[key].tolist()
    with open(paths["noise"]) as f:
        truth = list(csv.DictReader(f))
    assert [int(t["clean_label"]) for t in truth] == labels["train"].tolist()
    assert sum(t["flipped"] == "1" for t in truth) == 20
    assert _definition(paths["net"]).training_config.iter_per_epoch == 200 // 64 == 3


def test_the_sample_folder_holds_the_demo_only():
    """samples/ is for users (issue 33): the demo, what it needs and its README; research
    scripts and their results belong in experiments/. What the demo writes (data/, result/,
    demo_output/) is ignored by git."""
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples")
    assert sorted(os.listdir(root)) == ["fashion_mnist"]
    written = {"data", "result", "demo_output", "__pycache__"}
    assert sorted(set(os.listdir(os.path.join(root, "fashion_mnist"))) - written) == [
        "README.md",
        "build_dataset.py",
        "label_names.txt",
        "make_net.py",
        "run_demo.py",
    ]
