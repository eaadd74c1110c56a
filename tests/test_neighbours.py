"""The validation neighbours' agreement against a plain loop, and the feature layer it is
measured in against nnabla's own forward pass."""

import os

import numpy as np
import pytest

from sgd_influence_plugin import neighbours as nb
from sgd_influence_plugin import recommend as rc
from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.nnabla_adapter import load_model


def _loop(features, labels, ref, ref_labels, k):
    """float64 cosine similarity, one row at a time, full sort."""
    out = []
    for f, y in zip(features.astype(np.float64), labels):
        sim = [
            float(f @ r) / (np.linalg.norm(f) * np.linalg.norm(r)) for r in ref.astype(np.float64)
        ]
        nearest = np.argsort(-np.array(sim), kind="stable")[:k]
        out.append(np.mean(ref_labels[nearest] == y))
    return np.array(out)


@pytest.mark.parametrize("chunk", [nb.CHUNK, 16])
def test_agreement_is_the_share_of_the_k_nearest_reference_rows_with_the_label(monkeypatch, chunk):
    monkeypatch.setattr(nb, "CHUNK", chunk)  # rows compared at once: the result is the same
    rng = np.random.RandomState(0)
    ref = rng.randn(120, 3, 2).astype(np.float32)  # flattened to 6 features per row
    ref_labels = rng.randint(0, 4, 120)
    feats = rng.randn(70, 6).astype(np.float32) * rng.uniform(0.1, 10, (70, 1))  # any scale
    labels = rng.randint(0, 4, 70)
    got = nb.label_agreement(feats, labels, ref, ref_labels)
    k = nb.neighbour_count(120)
    assert k == 11
    np.testing.assert_allclose(got, _loop(feats, labels, ref.reshape(120, 6), ref_labels, k))
    np.testing.assert_allclose(
        nb.label_agreement(feats, labels, ref, ref_labels, k=3),
        _loop(feats, labels, ref.reshape(120, 6), ref_labels, 3),
    )


def test_a_row_among_another_class_gets_low_agreement():
    rng = np.random.RandomState(1)
    centres = np.eye(3) * 5
    ref_labels = np.repeat(np.arange(3), 40)
    ref = centres[ref_labels] + rng.randn(120, 3)
    labels = np.repeat(np.arange(3), 10)
    feats = centres[labels] + rng.randn(30, 3)
    labels[0] = 2  # a class-0 image labelled 2
    got = nb.label_agreement(feats, labels, ref, ref_labels)
    assert got[0] <= 0.1 and np.all(got[1:] >= 0.9), got


def test_neighbour_count_and_bad_input():
    assert [nb.neighbour_count(v) for v in (1, 2, 100, 5000)] == [1, 1, 10, 71]
    with pytest.raises(ValueError, match="widths differ"):
        nb.label_agreement(np.ones((2, 3)), [0, 1], np.ones((4, 2)), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="not finite"):
        nb.label_agreement(np.full((2, 2), np.nan), [0, 1], np.ones((4, 2)), [0, 0, 1, 1])


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(
    "arch, data, feature, last",
    [
        ("mlp", "data28", 64, "Affine_2"),
        ("cnn_bn", "data28", 32, "Affine_2"),
        ("logreg", "data7", 49, "Affine"),
    ],
)
def test_features_feed_the_last_affine(results, request, arch, data, feature, last):
    """The features are the input of the executor's last learned layer: that layer, applied
    to them in numpy, gives the executor's own output."""
    model = load_model(model=os.path.join(results(arch), "results.nnp"))
    ds = load_dataset(request.getfixturevalue(data)["val"], model.info.input_shapes)
    x = {k: v[:37] for k, v in ds.arrays.items()}
    n = len(x["x"])
    feats = model.features(x)
    assert n >= 20 and feats.shape == (n, feature)
    params = model.get_params()
    w, b = params[f"{last}/affine/W"], params[f"{last}/affine/b"]
    np.testing.assert_allclose(
        _softmax(feats.astype(np.float64) @ w + b), model.predict(x), rtol=1e-4, atol=1e-6
    )
    pred, both = model.predict_with_features(x)  # one forward pass gives both
    np.testing.assert_array_equal(both, feats)
    np.testing.assert_array_equal(pred, model.predict(x))
    assert model.feature_width == feature
    if arch == "logreg":  # the last learned layer is the first: its input is the image
        np.testing.assert_array_equal(feats, x["x"].reshape(n, -1))


def test_three_ranks_decide_where_two_tie():
    # Rows 0 and 1 tie on margin and influence ranks; the one whose validation neighbours
    # disagree with its label (row 1) comes first. Row 2's label is the model's class.
    prob = np.array([[0.2, 0.8], [0.2, 0.8], [0.9, 0.1]])
    labels = np.array([0, 0, 0])
    trials = np.array([[-1.0, -1.0, -1.0]])
    two = rc.find_suspects(labels, prob, trials)
    assert rc.combined_order(two).tolist() == [0, 1]
    three = rc.find_suspects(labels, prob, trials, agreement=np.array([0.9, 0.1, 0.0]))
    assert rc.combined_order(three).tolist() == [1, 0]
    cands = rc.candidates(three, levels=(0.5,))
    assert [c.order for c in cands] == ["given_label"]  # at 0.5 both orders hold both rows
    cands = rc.candidates(
        rc.find_suspects(
            np.array([0, 0, 0]),
            np.array([[0.1, 0.9], [0.3, 0.7], [0.3, 0.7]]),
            np.array([[-1.0, -3.0, -2.0]]),
            agreement=np.array([1.0, 0.0, 0.5]),
        ),
        levels=(0.2,),
    )
    # given label below 0.2: row 0 only; the three ranks (margin 0, 1, 1 -> 0, 1, 1;
    # influence 2, 0, 1; agreement 2, 0, 1 -> sums 4, 1, 3) put row 1 first
    assert [(c.order, c.rows.tolist()) for c in cands] == [
        ("given_label", [0]),
        ("margin_influence_neighbours", [1]),
    ]
    assert "least like their validation neighbours" in cands[1].describe()


def test_no_feature_layer_without_a_learned_layer_on_the_way_back():
    from nnabla.utils import nnabla_pb2

    from sgd_influence_plugin.nnabla_adapter.heads import feature_variable

    net = nnabla_pb2.Network()
    for name, kind in (("x", "Buffer"), ("W", "Parameter"), ("h", "Buffer"), ("y", "Buffer")):
        v = net.variable.add()
        v.name, v.type = name, kind
    f = net.function.add()
    f.name, f.type, f.output[:] = "Affine", "Affine", ["h"]
    f.input[:] = ["x", "W"]
    g = net.function.add()
    g.name, g.type, g.input[:], g.output[:] = "Softmax", "Softmax", ["h"], ["y"]
    assert feature_variable(net, "y") == "x"  # the Affine's data input
    del net.function[0]  # now nothing learned produces h
    assert feature_variable(net, "y") is None


def test_training_signals_in_one_pass_and_what_they_skip(results, data28, monkeypatch):
    model = load_model(model=os.path.join(results("mlp"), "results.nnp"))
    ds = load_dataset(data28["val"], model.info.input_shapes).arrays
    train = {k: v[:50] for k, v in ds.items()}
    ref = {k: v[50:] for k, v in ds.items()}
    prob, agreement, facts = rc.training_signals(model, train, ref, "y")
    assert facts["used"] and facts["width"] == 64 and agreement.shape == (50,)
    np.testing.assert_allclose(prob, rc.as_probabilities(model.predict(train)), rtol=1e-6)
    want = nb.label_agreement(model.features(train), train["y"], model.features(ref), ref["y"])
    np.testing.assert_array_equal(agreement, want)
    assert rc.training_signals(model, train, None, "y")[1:] == (
        None,
        {"used": False, "why": "no validation rows for the influence"},
    )
    monkeypatch.setattr(nb, "MAX_FEATURE_BYTES", 50 * 64 * 4 - 1)  # one byte too few
    prob, agreement, facts = rc.training_signals(model, train, ref, "y")
    assert agreement is None and not facts["used"] and "64 features per row" in facts["why"]
    assert prob.shape == (50, 10)
