"""What a score estimates (``target``): the class-centred scores against oracles computed here.

The whole replay with target class-centred against a float64 brute force is in
test_core_oracles.py, and against exact leave-one-out re-runs in test_loo_fidelity.py.
"""

import os
from types import SimpleNamespace

import numpy as np
import pytest

from sgd_influence_plugin import influence
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.errors import SettingsError
from sgd_influence_plugin.nnabla_adapter import load_model
from sgd_influence_plugin.resolved import MAX_FEATURE_SPREAD, feature_spread_warning
from sgd_influence_plugin.settings import InfluenceSettings
from sgd_influence_plugin.target import (
    apply_target,
    centre_by_class,
    class_labels,
    given_classes,
    with_classes,
)


def test_centre_by_class_subtracts_each_class_mean():
    scores = np.array([1.0, 2.0, 10.0, 3.0, 20.0, -4.0])
    labels = np.array([0, 0, 1, 0, 1, 2])
    # class 0: mean 2, class 1: mean 15; class 2 has one row, which keeps its score
    expected = np.array([-1.0, 0.0, -5.0, 1.0, 5.0, -4.0])
    np.testing.assert_allclose(centre_by_class(scores, labels), expected)
    with pytest.raises(ValueError, match="5 labels for 6 scores"):
        centre_by_class(scores, labels[:5])


def test_labels_only_for_one_categorical_label():
    arrays = {"x": np.zeros((3, 2), np.float32), "y": np.array([[2.0], [0.0], [1.0]], np.float32)}
    one = SimpleNamespace(label_classes={"y": 3})
    np.testing.assert_array_equal(class_labels(one, arrays), [2, 0, 1])
    assert class_labels(SimpleNamespace(label_classes={}), arrays) is None  # regression
    assert class_labels(SimpleNamespace(label_classes={"y": 3, "z": 2}), arrays) is None
    scores = np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(apply_target(scores, "plain", one, arrays), scores)
    np.testing.assert_array_equal(
        apply_target(scores, "class-centred", SimpleNamespace(label_classes={}), arrays), scores
    )
    with pytest.raises(ValueError, match="unknown target"):
        apply_target(scores, "centred", one, arrays)
    with pytest.raises(SettingsError, match="--target 'x': choose one of class-centred, plain"):
        InfluenceSettings(target="x").validate({"target": "--target"})


def test_classes_read_and_written_as_an_index_or_one_hot():
    """A label column is a class index (N, 1) or one-hot (N, C): the one-hot row's class is
    the place of its 1 (its first value used to be read as the class), and a relabel writes
    the new class's vector (the check's relabel candidates)."""
    index = np.array([[2.0], [0.0], [1.0]], np.float32)
    onehot = np.eye(3, dtype=np.float32)[[2, 0, 1]]
    np.testing.assert_array_equal(given_classes(index), [2, 0, 1])
    np.testing.assert_array_equal(given_classes(onehot), [2, 0, 1])
    info = SimpleNamespace(label_classes={"y": 3})
    np.testing.assert_array_equal(class_labels(info, {"y": onehot}), [2, 0, 1])
    np.testing.assert_array_equal(with_classes(index, [0, 2], [1, 0]), [[1.0], [0.0], [0.0]])
    got = with_classes(onehot, [0, 2], [1, 0])
    np.testing.assert_array_equal(got, np.eye(3)[[1, 0, 0]])
    assert got.dtype == np.float32 and onehot[0, 2] == 1  # a copy, the input unchanged


def test_run_scores_are_the_plain_trial_centred_by_class(results, data28):
    """compute_influence at the default target = the same trial at target plain, each score
    minus its class's mean (the class computed here from the CSV's labels)."""
    model = load_model(model=os.path.join(results("mlp"), "results.nnp"))
    train = load_dataset(data28["train"], model.info.input_shapes).arrays
    val = load_dataset(data28["val"], model.info.input_shapes).arrays
    default = influence.compute_influence(model, train, val, InfluenceSettings(seed=2, jobs=1))
    plain = influence.compute_influence(
        model, train, val, InfluenceSettings(seed=2, jobs=1, target="plain")
    )
    labels = train["y"].ravel().astype(int)
    expected = plain.scores.copy()
    for c in np.unique(labels):
        expected[labels == c] -= plain.scores[labels == c].mean()
    scale = np.max(np.abs(plain.scores))
    np.testing.assert_allclose(default.scores, expected, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(default.losses, plain.losses)
    for c in np.unique(labels):
        assert abs(default.scores[labels == c].sum()) <= 1e-6 * scale * len(labels)


def test_a_class_of_one_row_keeps_its_score():
    """Centring a class of one row would give it 0 by construction: it keeps its score, the
    other classes are centred."""
    from types import SimpleNamespace

    from sgd_influence_plugin.target import apply_target

    info = SimpleNamespace(label_classes={"y": 3})
    scores = np.array([0.3, -0.2, 0.5, 0.1])
    one_alone = {"y": np.array([[0], [0], [1], [2]], np.float32)}
    np.testing.assert_allclose(apply_target(scores, "class-centred", info, one_alone),
                               [0.25, -0.25, 0.5, 0.1])  # fmt: skip


def _table(spreads, n=400, seed=0):
    rng = np.random.RandomState(seed)
    return (rng.randn(n, len(spreads)) * np.asarray(spreads) + 3.0).astype(np.float32)


def test_unscaled_table_features_are_named_in_a_warning():
    x = _table([0.8, 0.5, 14.0, 50.0, 1.1])
    msg = feature_spread_warning({"x": (5,), "y": (1,)}, {"x": x, "y": np.zeros((400, 1))})
    assert msg is not None and msg.startswith("the features of x differ")
    assert "(x__3: standard deviation" in msg and "x__1: " in msg  # the widest and narrowest


def test_scaled_features_images_and_constant_columns_get_no_warning():
    shapes = {"x": (4,)}
    assert feature_spread_warning(shapes, {"x": _table([1.0, 0.5, 2.0, 1.5])}) is None
    x = _table([1.0, 2.0, 1.5, 0.0])  # a constant feature has no spread to compare
    assert feature_spread_warning(shapes, {"x": x}) is None
    just_over = _table([1.0, MAX_FEATURE_SPREAD * 1.3], n=4000)
    assert feature_spread_warning({"x": (2,)}, {"x": just_over}) is not None
    pixels = np.zeros((50, 1, 4, 4), np.float32)
    pixels[:, 0, 0, 0] = np.linspace(0, 100, 50)
    pixels[:, 0, 1, 1] = np.linspace(0, 0.01, 50)
    assert feature_spread_warning({"x": (1, 4, 4)}, {"x": pixels}) is None  # images: not a table


def test_a_validation_row_is_dominant_only_past_half_of_the_loss():
    from sgd_influence_plugin.resolved import dominant_row_warning

    def row(k):
        return k + 2

    assert dominant_row_warning(np.array([1.0, 1.0]), "v.csv", row) is None  # half: not more
    assert dominant_row_warning(np.zeros(5), "v.csv", row) is None  # a perfect fit
    assert dominant_row_warning(np.array([3.0]), "v.csv", row) is None  # one row: nothing to say
    msg = dominant_row_warning(np.array([0.1, 0.2, 0.31, 0.0]), "v.csv", row)
    assert msg.startswith("v.csv row 4 carries 51% of the validation loss (its loss 0.31,")
