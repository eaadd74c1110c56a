"""The fused influence/HVP graph against oracles that do not use it.

- per-sample dot products <u, grad l_i> against plain backward passes at batch size 1 of a
  network rebuilt here by hand from nnabla functions (ReLU, max pooling, BatchNorm);
- its Hessian-vector product against nnabla's own double backward of that per-sample graph
  (the gradient of <grad l_i, u>), summed over samples;
- its Hessian-vector product against float64 central differences of gradients on a smooth
  network (tanh, average pooling), where a finite difference is a valid oracle;
- what happens at exact ties (a ReLU input of exactly 0, equal values in a max-pooling window).

Rows for the ReLU/max-pooling comparisons are chosen away from near-ties, measured by an
independent float64 forward pass: float32 rounding that differs between a batch of 24 and a
batch of 1 may decide a near-tie differently, which changes a sample's gradient by a finite
amount (a different ReLU mask or max-pooling route). Exact ties are decided the same way by
both and are pinned by their own test.
"""

import os
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from sgd_influence_plugin import core
from support.results import load_trained

#: Smallest distance from a tie (absolute, in activation units of order 1) that a row chosen
#: for the ReLU/max-pooling oracles may have: 100x the float32 rounding of the activations.
TIE_MARGIN = 1e-5
BN_EPS = 1e-5  # what nnabla's parametric BatchNormalization writes into the definition


def _h5_values(path):
    """Every array in a parameters .h5, name -> float32, read with h5py (not the adapter)."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                out.__setitem__(name, np.array(obj, dtype=np.float32))
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
    return out


# ---- the cnn_bn network, independently of the adapter ----------------------------------
# conv 3x3 (8) -> BN -> ReLU -> max-pool 2 -> conv 3x3 (16) -> BN -> ReLU -> max-pool 2
# -> affine 32 -> ReLU -> (Dropout: identity) -> affine 10 -> softmax cross entropy.

_BLOCKS = (("Convolution", "BatchNormalization"), ("Convolution_2", "BatchNormalization_2"))


def _conv3x3_f64(x, W, b):
    """(N, C, H, W) -> (N, O, H, W): 3x3 convolution with zero padding 1, float64."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", win, W, optimize=True) + b.reshape(1, -1, 1, 1)


def _pool_windows(r):
    """(N, C, H, W) -> (N, C, H/2, W/2, 4): the values of each 2x2 max-pooling window."""
    n, c, h, w = r.shape
    return (
        r.reshape(n, c, h // 2, 2, w // 2, 2)
        .transpose(0, 1, 2, 4, 3, 5)
        .reshape(n, c, h // 2, w // 2, 4)
    )


def cnn_bn_float64(values, x, y):
    """Float64 forward of the cnn_bn network.

    Args:
        values: parameter name -> array (BatchNorm statistics included).
        x: (N, 1, 28, 28) images; y: (N, 1) integer labels.

    Returns:
        ``(losses (N,), margins (N, 3))``: per-sample softmax cross entropy, and per sample
        and stage (the two convolution blocks, the hidden affine layer) the smallest distance
        from a tie: min over the stage's ReLU inputs z of |z| and over its max-pooling
        windows with a positive maximum of (largest - second largest) when those differ.
        Exactly equal values (the same input patch, e.g. the background) are decided the same
        way by every computation and are not counted.

    """
    p = {k: v.astype(np.float64) for k, v in values.items()}
    h = x.astype(np.float64)
    n = len(h)
    margins = np.full((n, 3), np.inf)
    for stage, (conv, bn) in enumerate(_BLOCKS):
        z = _conv3x3_f64(h, p[conv + "/conv/W"], p[conv + "/conv/b"])
        z = (z - p[bn + "/bn/mean"]) / np.sqrt(p[bn + "/bn/var"] + BN_EPS) * p[
            bn + "/bn/gamma"
        ] + p[bn + "/bn/beta"]
        win = np.sort(_pool_windows(np.maximum(z, 0)), axis=-1)
        gap = win[..., -1] - win[..., -2]
        gap = np.where((win[..., -1] > 0) & (gap > 0), gap, np.inf)
        margins[:, stage] = np.minimum(
            np.abs(z).reshape(n, -1).min(axis=1), gap.reshape(n, -1).min(axis=1)
        )
        h = win[..., -1]
    z = h.reshape(n, -1) @ p["Affine/affine/W"] + p["Affine/affine/b"]
    margins[:, 2] = np.abs(z).min(axis=1)
    logits = np.maximum(z, 0) @ p["Affine_2/affine/W"] + p["Affine_2/affine/b"]
    top = logits.max(axis=1)
    lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    losses = lse - logits[np.arange(n), y.astype(np.int64).ravel()]
    return losses, margins


def cnn_bn_by_hand(values, trainable):
    """The cnn_bn network at batch size 1, built here from nnabla functions.

    Returns:
        A namespace: ``x`` (1, 1, 28, 28) and ``y`` (1, 1) inputs, ``loss`` (scalar),
        ``params`` (trainable name -> Variable), ``u`` (one input Variable per trainable
        parameter), ``hvp``: nnabla's double backward, the gradient of <grad loss, u> with
        respect to the trainable parameters (= H u of this one sample).

    """
    import nnabla as nn
    import nnabla.functions as F

    p = {k: nn.Variable.from_numpy_array(v, need_grad=k in trainable) for k, v in values.items()}
    x, y = nn.Variable((1, 1, 28, 28)), nn.Variable((1, 1))
    h = x
    for conv, bn in _BLOCKS:
        h = F.convolution(h, p[conv + "/conv/W"], p[conv + "/conv/b"], pad=(1, 1))
        h = F.batch_normalization(
            h,
            p[bn + "/bn/beta"],
            p[bn + "/bn/gamma"],
            p[bn + "/bn/mean"],
            p[bn + "/bn/var"],
            axes=[1],
            eps=BN_EPS,
            batch_stat=False,
        )
        h = F.max_pooling(F.relu(h), (2, 2))
    h = F.relu(F.affine(h, p["Affine/affine/W"], p["Affine/affine/b"]))
    logits = F.affine(h, p["Affine_2/affine/W"], p["Affine_2/affine/b"])
    # -log softmax(logits)[y], written out: nnabla 1.39's double backward of
    # SoftmaxCrossEntropy fails at batch size 1, and another formulation is a better oracle.
    loss = -F.sum(F.log_softmax(logits, axis=1) * F.one_hot(y, (10,)))
    params = {k: p[k] for k in trainable}
    grads = nn.grad([loss], list(params.values()))
    u = [nn.Variable(v.shape) for v in params.values()]
    g_dot_u = F.add_n(*[F.sum(g * uk) for g, uk in zip(grads, u)])
    hvp = nn.grad([g_dot_u], list(params.values()))
    return SimpleNamespace(x=x, y=y, loss=loss, params=params, u=u, hvp=hvp)


def _reference_dots_and_hvp(net, arrays, idx, u):
    """Per sample j in idx: <u, grad l_j> from a plain backward pass (float64 sum), and the
    mean over idx of H_j u from the double backward; plus the per-sample losses."""
    import nnabla as nn

    for var, k in zip(net.u, net.params):
        var.d = u[k]
    dots, losses = [], []
    hvp = {k: np.zeros(p.shape) for k, p in net.params.items()}
    for j in idx:
        net.x.d, net.y.d = arrays["x"][j : j + 1], arrays["y"][j : j + 1]
        net.loss.forward()
        losses.append(float(net.loss.d))
        for p in net.params.values():
            p.grad.zero()
        net.loss.backward()
        dots.append(sum(np.sum(np.asarray(p.g, np.float64) * u[k]) for k, p in net.params.items()))
        nn.forward_all(net.hvp)
        for k, h in zip(net.params, net.hvp):
            hvp[k] += np.asarray(h.d, np.float64) / len(idx)
    return np.array(dots), hvp, np.array(losses)


def _fused(m, arrays, idx, u):
    """The product's fused pass on rows idx at weight 1/B: (dots (B,), H u by parameter)."""
    B = len(idx)
    sg = core.GraphCache(m, fused=True)(B)
    sg.feed(arrays, idx, np.full(B, 1.0 / B, np.float32))
    for var, k in zip(sg.u, sg.graph.params):
        var.d = u[k]
    sg.score.forward()
    sg.zero_grads()
    sg.score.backward()
    dots = np.array(sg.w.g, dtype=np.float64).ravel()[:B]
    return dots, {k: np.array(p.g, dtype=np.float64) for k, p in sg.graph.params.items()}


def _rel_l2(a, b):
    num = np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in b))
    den = np.sqrt(sum(np.sum(b[k] ** 2) for k in b))
    return num / den, den


@pytest.fixture(scope="module")
def cnn_bn(results, data28):
    m, tr, va = load_trained(results("cnn_bn"), data28)
    values = _h5_values(os.path.join(results("cnn_bn"), "parameters.h5"))
    losses64, margins = cnn_bn_float64(values, tr["x"], tr["y"])
    # The float64 forward is the network the adapter builds (its own check).
    g = m.graph(len(tr["x"]))
    g.inputs["x"].d, g.inputs["y"].d = tr["x"], tr["y"]
    g.loss.forward()
    np.testing.assert_allclose(np.ravel(g.loss.d), losses64, rtol=1e-4, atol=1e-5)
    return SimpleNamespace(m=m, train=tr, val=va, values=values, margins=margins)


def test_fused_dots_and_hvp_equal_a_separately_built_graph_relu_maxpool_bn(cnn_bn):
    m, tr = cnn_bn.m, cnn_bn.train
    # 24 rows whose every ReLU input and max-pooling choice is at least TIE_MARGIN from a tie.
    safe = np.flatnonzero(cnn_bn.margins.min(axis=1) > TIE_MARGIN)
    assert len(safe) >= 24, f"only {len(safe)} of 256 rows are away from ties"
    idx = safe[:24]
    u = core.validation_gradient(m, cnn_bn.val, 64)
    dots, hvp = _fused(m, tr, idx, u)
    net = cnn_bn_by_hand(cnn_bn.values, m.info.trainable)
    ref_dots, ref_hvp, losses = _reference_dots_and_hvp(net, tr, idx, u)
    g = m.graph(24)
    g.inputs["x"].d, g.inputs["y"].d = tr["x"][idx], tr["y"][idx]
    g.loss.forward()
    np.testing.assert_allclose(losses, np.ravel(g.loss.d), rtol=1e-5, atol=1e-6)
    # The per-sample dot products: every one, against the largest.
    assert np.max(np.abs(dots - ref_dots)) <= 1e-4 * np.max(np.abs(ref_dots))
    assert np.min(np.abs(ref_dots)) > 0
    # H u (the fused graph weights each sample 1/B: the mean of per-sample H_j u).
    err, norm = _rel_l2(hvp, ref_hvp)
    assert norm > 0 and err <= 1e-4
    # Each parameter block on its own (a missing layer's term would hide in the total).
    for k in ref_hvp:
        scale = np.max(np.abs(ref_hvp[k]))
        assert scale > 0 and np.max(np.abs(hvp[k] - ref_hvp[k])) <= 1e-4 * scale, k


def test_hvp_equals_float64_finite_differences_on_smooth_net(results, data28):
    """H u = d/de grad L(theta + e u) at e = 0, from a 4-point central difference.

    The network (tanh, average pooling) is smooth, so the difference converges; gradients
    come from plain backward passes (no double backward) and are differenced in float64.
    """
    import nnabla.functions as F

    m, tr, va = load_trained(results("smooth"), data28)
    B = 32
    idx = np.arange(100, 100 + B)
    u = core.validation_gradient(m, va)
    scale = np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in u.values()))
    u = {k: (v / scale).astype(np.float32) for k, v in u.items()}  # unit length
    _, hvp = _fused(m, tr, idx, u)

    g = m.graph(B)
    with m.context_scope():
        objective = F.mean(g.loss)
    for col, var in g.inputs.items():
        var.d = tr[col][idx]
    theta = m.get_params()

    def grad_at(e):
        m.set_params({k: (theta[k] + e * u[k]).astype(np.float32) for k in theta})
        objective.forward()
        for p in g.params.values():
            p.grad.zero()
        objective.backward()
        return {k: np.array(p.g, dtype=np.float64) for k, p in g.params.items()}

    eps = 1e-2
    gp1, gm1, gp2, gm2 = (grad_at(e) for e in (eps, -eps, 2 * eps, -2 * eps))
    m.set_params(theta)
    fd = {k: (8 * (gp1[k] - gm1[k]) - (gp2[k] - gm2[k])) / (12 * eps) for k in theta}
    err, norm = _rel_l2(hvp, fd)
    print(f"H u vs finite differences: relative error {err:.2e}")
    assert norm > 0 and err <= 1e-4
    # The oracle can tell: half the Hessian, or the Hessian of another batch, is far off.
    assert _rel_l2({k: 0.5 * v for k, v in hvp.items()}, fd)[0] > 0.4
    _, other = _fused(m, tr, np.arange(B), u)
    assert _rel_l2(other, fd)[0] > 0.1


def _loop_grads(m, arrays, only=None):
    """Per-sample gradients (flattened, float64, (N, P)) by plain backward passes at
    batch size 1, in the order of the model's trainable parameters (or of ``only``)."""
    g = m.graph(1)
    out = []
    for j in range(len(arrays["x"])):
        for col, var in g.inputs.items():
            var.d = arrays[col][j : j + 1]
        g.loss.forward()
        for p in g.params.values():
            p.grad.zero()
        g.loss.backward()
        names = only or list(g.params)
        out.append(np.concatenate([np.ravel(g.params[k].g).astype(np.float64) for k in names]))
    return np.array(out)


def test_exact_ties_first_maximum_and_zero_slope(results, data28, cnn_bn):
    """What happens at exact ties: both computations decide them alike, a max-pooling window
    sends the gradient to its first largest element (row-major), and a ReLU input of exactly 0
    passes no gradient (as a slightly negative one would).

    The first convolution is set to the identity on its centre pixel (BatchNorm to identity),
    so the first max-pooling windows see the image's own pixels: equal intensities in a window
    are exact ties between positions with different neighbours (so the choice matters), and
    black pixels are ReLU inputs of exactly 0.
    """
    m, _, va = load_trained(results("cnn_bn"), data28)
    W = np.zeros((8, 1, 3, 3), np.float32)
    W[:, 0, 1, 1] = 1.0
    ident = {
        "Convolution/conv/W": W,
        "Convolution/conv/b": np.zeros(8, np.float32),
        "BatchNormalization/bn/mean": np.zeros((1, 8, 1, 1), np.float32),
        "BatchNormalization/bn/var": np.ones((1, 8, 1, 1), np.float32),
        "BatchNormalization/bn/gamma": np.ones((1, 8, 1, 1), np.float32),
        "BatchNormalization/bn/beta": np.zeros((1, 8, 1, 1), np.float32),
    }
    m.set_params(ident)
    values = {**cnn_bn.values, **ident}
    x, y = cnn_bn.train["x"], cnn_bn.train["y"]
    win = _pool_windows(x)  # (N, 1, 14, 14, 4): the first max-pooling windows
    top = win.max(axis=-1, keepdims=True)
    tied = (top[..., 0] > 0) & ((win == top).sum(axis=-1) >= 2)
    # Rows with ties in the first stage and none near a tie later: the nudges of 1e-6 below
    # cannot change a later decision.
    _, margins = cnn_bn_float64(values, x, y)
    n_tied = tied.reshape(len(x), -1).sum(axis=1)
    rows = np.flatnonzero((n_tied >= 3) & (margins[:, 1:].min(axis=1) > 1e-4))
    assert len(rows) >= 4
    rows = rows[:4]

    def nudged(which=None, zeros=0.0):
        """The rows' images with each tie's first or last largest pixel raised by 1e-6, or
        the black pixels set to ``zeros``."""
        xs = x[rows].copy()
        if which is not None:
            wv = _pool_windows(xs)
            for r, c, i, j in zip(*np.nonzero(tied[rows])):
                at = np.flatnonzero(wv[r, c, i, j] == wv[r, c, i, j].max())
                k = at[0] if which == "first" else at[-1]
                xs[r, c, 2 * i + k // 2, 2 * j + k % 2] += 1e-6
        xs[xs == 0] = zeros
        return {"x": xs, "y": y[rows]}

    # The fused batch decides every exact tie as the batch-1 loop does.
    at_tie = _loop_grads(m, nudged())
    u = core.validation_gradient(m, va, 64)
    u_flat = np.concatenate([np.ravel(u[k]) for k in m.info.trainable]).astype(np.float64)
    fused, _ = _fused(m, nudged(), np.arange(len(rows)), u)
    loop = at_tie @ u_flat
    assert np.max(np.abs(fused - loop)) <= 1e-5 * np.max(np.abs(loop))

    def off(which=None, zeros=0.0):
        """Relative change of each row's gradient of the first convolution's kernel, where
        the choice of a window's element shows (its gradient is that element's neighbours)."""
        kernel = ["Convolution/conv/W"]
        ref = _loop_grads(m, nudged(), kernel)
        other = _loop_grads(m, nudged(which, zeros), kernel)
        return np.linalg.norm(other - ref, axis=1) / np.linalg.norm(ref, axis=1)

    # Max pooling: a tie behaves as the first largest element winning by a hair, not the last.
    first, last = off("first"), off("last")
    # ReLU: an input of exactly 0 is on the flat side.
    below, above = off(zeros=-1e-6), off(zeros=1e-6)
    assert np.all(first <= 1e-5) and np.all(last >= 1e-3)
    assert np.all(below <= 1e-5) and np.all(above >= 1e-3)


def test_fixture_definitions_seed_their_random_functions(results):
    """What keeps these oracles reproducible: the cnn_bn definition's Dropout (seed -1 as
    nnabla saves it, a new seed at every training) carries a fixed seed, so nnabla_cli train
    gives the same parameters every session."""
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    proto = nnabla_pb2.NNablaProtoBuf()
    with open(os.path.join(results("cnn_bn"), "net.nntxt")) as f:
        text_format.Merge(f.read(), proto)
    seeds = [
        (func.type, value.seed)
        for net in proto.network
        for func in net.function
        for field, value in func.ListFields()
        if field.name.endswith("_param") and hasattr(value, "seed")
    ]
    assert ("Dropout", -1) not in seeds and any(kind == "Dropout" for kind, _ in seeds)
    assert all(seed >= 0 for _, seed in seeds)
