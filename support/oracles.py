"""Float64 oracles for softmax regression, for the tests: closed-form losses, gradients and a
dense Hessian (:class:`LogReg`), plain SGD (:func:`sgd_float64`) and the replay of Algorithm 2
with dense Hessians (:func:`brute_force_replay`), written without nnabla or the package's
graphs so that the influence core can be checked against them; and the exact leave-one-out
re-runs of a replayed epoch (:func:`exact_leave_one_out`) that the scores estimate; and the
console trainer's own gradient and per-row losses (:func:`console_gradient`,
:func:`console_losses`), from nnabla's loader; the products ``<u, grad l_i>`` of a
batch-size-1 loop of nnabla's backward (:func:`per_sample_dots`).
"""

from __future__ import annotations

import numpy as np

from sgd_influence_plugin import core


def softmax(z):
    """Row-wise softmax in float64 (the largest logit subtracted first)."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class LogReg:
    """Softmax regression theta = [W (D, C) row-major, b (C,)] with closed forms in float64."""

    def __init__(self, x, y, n_classes):
        self.x = x.reshape(len(x), -1).astype(np.float64)
        self.y = y.astype(np.int64).ravel()
        self.C = n_classes
        self.D = self.x.shape[1]

    def unpack(self, theta):
        """(W (D, C), b (C,)) views of ``theta``."""
        W = theta[: self.D * self.C].reshape(self.D, self.C)
        return W, theta[self.D * self.C :]

    def losses(self, theta, idx):
        """(|idx|,) per-sample cross-entropy losses."""
        W, b = self.unpack(theta)
        p = softmax(self.x[idx] @ W + b)
        return -np.log(p[np.arange(len(idx)), self.y[idx]])

    def grads(self, theta, idx):
        """(|idx|, P) per-sample gradients."""
        W, b = self.unpack(theta)
        p = softmax(self.x[idx] @ W + b)
        r = p.copy()
        r[np.arange(len(idx)), self.y[idx]] -= 1
        gw = self.x[idx][:, :, None] * r[:, None, :]
        return np.concatenate([gw.reshape(len(idx), -1), r], axis=1)

    def hessian(self, theta, idx):
        """Mean Hessian over idx, dense (P, P)."""
        W, b = self.unpack(theta)
        p = softmax(self.x[idx] @ W + b)
        P = self.D * self.C + self.C
        H = np.zeros((P, P))
        for i, j in enumerate(idx):
            xt = np.concatenate([self.x[j], [1.0]])  # the bias is a weight on a constant 1
            S = np.diag(p[i]) - np.outer(p[i], p[i])
            Hi = np.kron(np.outer(xt, xt), S)  # ((D+1)C, (D+1)C), rows (d, c)
            H += Hi
        return H / len(idx)  # row index d*C + c matches [W.ravel(), b] with b as d = D


def brute_force_replay(train, theta_at, order, lrs, batch_size, u0, wd):
    """Algorithm 2 in float64 with dense Hessians: infl (N,), for step t = T-1..0 at
    parameters ``theta_at(t)`` and rate ``lrs[t]``.
    """
    ref, u, B = np.zeros(len(order)), np.array(u0, dtype=np.float64), batch_size
    for t in range(core.n_steps(len(order), B) - 1, -1, -1):
        idx = order[t * B : (t + 1) * B]
        theta = theta_at(t)
        ref[idx] += lrs[t] / len(idx) * train.grads(theta, idx) @ u
        u = u - lrs[t] * (train.hessian(theta, idx) @ u + wd * u)
    return ref


def sgd_float64(train, theta, orders, lrs, batch_size, wd):
    """Plain SGD in float64 over each order in turn (closed-form gradients); returns the
    parameters after every step, (sum of T_k + 1, P), the start first.
    """
    path = [np.array(theta, dtype=np.float64)]
    for order in orders:
        for t in range(core.n_steps(len(order), batch_size)):
            idx = order[t * batch_size : (t + 1) * batch_size]
            th = path[-1]
            path.append(th - lrs[t] * (train.grads(th, idx).mean(axis=0) + wd * th))
    return np.array(path)


def theta_of(params):
    """Softmax regression's parameters as one float64 vector [W.ravel(), b]."""
    return np.concatenate([params["Affine/affine/W"].ravel(), params["Affine/affine/b"]]).astype(
        np.float64
    )


def exact_leave_one_out(model, train, val, theta_start, order, lrs, batch_size, wd):
    """L_val(epoch without j) - L_val(epoch with all), for every j: N+1 re-runs of the epoch
    from the same start parameters and order, sample j's weight set to 0.
    """
    n = len(order)
    graphs = core.GraphCache(model, fused=False)

    def val_loss_after(weight):
        model.set_params(theta_start)
        core.sgd_epoch(
            model, train, order, lrs, batch_size, wd, sample_weight=weight, graphs=graphs
        )
        return core.mean_loss(model, val, 256)

    full = val_loss_after(np.ones(n, np.float32))
    out = np.empty(n)
    for j in range(n):
        w = np.ones(n, np.float32)
        w[j] = 0
        out[j] = val_loss_after(w) - full
    model.set_params(theta_start)
    return out


def centred_by_class(values, labels):
    """Target class-centred from per-row values: each minus the mean of its label's rows."""
    out = np.array(values, dtype=np.float64)
    for c in np.unique(labels):
        out[labels == c] -= np.mean(values[labels == c])
    return out


def pearson_with_leave_one_out(model, train, val, work, runs, lr, batch_size, seed=3):
    """The tool's scores of one trial for each ``(cache, replay_step)`` in ``runs``, against
    the exact leave-one-out re-runs of that trial's epoch (same order and rates, read from
    the ``("all", "exact")`` run's cache, which ``runs`` must hold), centred by class as the
    default target is: Pearson per run, ``{(cache, step): r}``. The model's parameters are
    restored.
    """
    import os

    from sgd_influence_plugin import influence
    from sgd_influence_plugin.settings import InfluenceSettings

    theta0 = model.get_params()
    scores = {}
    for cache, step in runs:
        settings = InfluenceSettings(cache=cache, seed=seed, lr=lr, trials=1, replay_step=step)
        out = os.path.join(str(work), f"{cache}_{step}")
        scores[cache, step] = influence.compute_influence(
            model, train, val, settings, cache_dir=out
        ).scores
        model.set_params(theta0)
    order = np.load(os.path.join(str(work), "all_exact", "order.npy"))
    lrs = np.load(os.path.join(str(work), "all_exact", "lr.npy"))
    plain = exact_leave_one_out(model, train, val, theta0, order, lrs, batch_size, 0.0)
    model.set_params(theta0)
    labels = train["y"].reshape(len(plain), -1)
    loo = centred_by_class(plain, labels.argmax(1) if labels.shape[1] > 1 else labels[:, 0])
    assert np.std(loo) > 0
    return {key: float(np.corrcoef(s, loo)[0, 1]) for key, s in scores.items()}


def per_sample_dots(model, arrays, idx, u):
    """``<u, grad l_i>`` for each row i of ``idx`` from nnabla's own backward of the model's
    loss graph at batch size 1, one row at a time (float64 (|idx|,)); ``u`` a list of arrays
    in ``model.graph(B).params`` order.
    """
    graphs, flat_u = core.GraphCache(model, fused=False), np.concatenate([x.ravel() for x in u])
    out = []
    for i in idx:
        sg = graphs(1)
        sg.feed(arrays, np.array([i]), np.ones(1, np.float32))
        sg.objective.forward()
        sg.zero_grads()
        sg.objective.backward()
        g = np.concatenate([np.asarray(p.g, np.float64).ravel() for p in sg.params])
        out.append(g @ flat_u)
    return np.array(out)


def _console_optimizer(nnp, arrays, idx):
    """Nnabla's own loader of ``nnp`` at batch size ``len(idx)``, its optimizer's data
    variables filled with rows ``idx`` of ``arrays`` as ``nnabla_cli train`` fills them (every
    variable a column feeds, e.g. an autoencoder's ``Input`` and ``SquaredError_T``).
    """
    import nnabla as nn
    from nnabla.utils.load import load

    nn.clear_parameters()
    info = load([nnp], prepare_data_iterator=False, batch_size=len(idx))
    opt = info.optimizers["Optimizer"]
    for v, column in opt.dataset_assign.items():
        v.variable_instance.d = arrays[column][idx].reshape(v.variable_instance.shape)
    return opt


def console_gradient(nnp, arrays, idx):
    """The gradient ``nnabla_cli train`` takes on rows ``idx``: its optimizer's target
    forward, then backward with ``grad=1/size(first loss)`` (one loss) or the gradient
    1/size(loss) nnabla's loader puts on each loss variable (several losses, through Sink);
    parameter name -> float64 array.
    """
    import nnabla as nn

    opt = _console_optimizer(nnp, arrays, idx)
    size = opt.loss_variables[0].variable_instance.size
    opt.target.forward(clear_no_need_grad=True)
    opt.solver.zero_grad()
    opt.target.backward(grad=1.0 / size, clear_buffer=True)
    out = {k: np.array(v.g, dtype=np.float64) for k, v in nn.get_parameters().items()}
    nn.clear_parameters()
    return out


def console_losses(nnp, arrays, idx):
    """Each row's loss as the console's training network computes it on rows ``idx``: the
    sum over the optimizer's loss variables of each one's mean over the row's elements (its
    share of the trainer's objective, the mean over every element); float64 (len(idx),).
    """
    import nnabla as nn

    opt = _console_optimizer(nnp, arrays, idx)
    out = np.zeros(len(idx))
    for lv in opt.loss_variables:
        lv.variable_instance.forward()
        out += np.asarray(lv.variable_instance.d, np.float64).reshape(len(idx), -1).mean(1)
    nn.clear_parameters()
    return out
