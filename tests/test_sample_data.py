"""The sample's dataset builder and network definition writer."""

import csv

import numpy as np
import pytest

from sgd_influence_plugin import fashion_mnist
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.errors import ParameterError
from sgd_influence_plugin.netdef import NetSpec, write_nntxt
from sgd_influence_plugin.nnabla_adapter import load_model


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
