"""The nnabla adapter against nnabla's own loading and forward pass."""

import os

import numpy as np
import pytest

from sgd_influence_plugin.dataset import load_dataset
from sgd_influence_plugin.nnabla_adapter import load_model


def _nnabla_forward_losses(nnp, network, x, y):
    """Per-sample losses from nnabla's own loader (global scope, as nnabla_cli does)."""
    import nnabla as nn
    from nnabla.utils.load import load

    nn.clear_parameters()
    info = load([nnp], prepare_data_iterator=False, batch_size=len(x))
    net = info.networks[network]
    net.variables["x"].variable_instance.d = x
    net.variables["y"].variable_instance.d = y
    out = net.variables["loss"].variable_instance
    out.forward()
    nn.clear_parameters()
    return np.array(out.d).ravel()


@pytest.mark.parametrize("arch", ["mlp", "cnn_bn"])
@pytest.mark.parametrize("batch", [32, 7])
def test_nnp_and_nntxt_h5_give_nnabla_own_losses(results, data28, arch, batch):
    folder = results(arch)
    from_nnp = load_model(model=os.path.join(folder, "results.nnp"))
    from_txt = load_model(
        config=os.path.join(folder, "net.nntxt"), params=os.path.join(folder, "parameters.h5")
    )
    ds = load_dataset(data28["val"], from_nnp.info.input_shapes)
    x, y = ds.arrays["x"][:batch], ds.arrays["y"][:batch]
    # MainValidation is the console's inference-mode network (BN running stats, no dropout):
    # the replay network, made from Main, must agree with it.
    ref = _nnabla_forward_losses(os.path.join(folder, "results.nnp"), "MainValidation", x, y)
    for model in (from_nnp, from_txt):
        g = model.graph(batch)
        g.inputs["x"].d, g.inputs["y"].d = x, y
        g.loss.forward()
        assert g.loss.shape == (batch, 1)
        np.testing.assert_allclose(g.loss.d.ravel(), ref, rtol=1e-5, atol=1e-6)


def test_model_description(results):
    m = load_model(model=os.path.join(results("cnn_bn"), "results.nnp"))
    info = m.info
    assert info.network == "Main" and info.losses == ["loss"]
    assert info.inputs == {"x": "x", "y": "y"}
    assert info.input_shapes == {"x": (1, 28, 28), "y": (1,)}
    assert info.solver.type == "Sgd"
    assert info.solver.lr == pytest.approx(0.05)
    assert info.solver.batch_size == 32 and info.solver.weight_decay == 0
    # BN running statistics are parameters with learning-rate multiplier 0: not trainable.
    assert "BatchNormalization/bn/gamma" in info.trainable
    assert not any(n.endswith(("/mean", "/var")) for n in info.trainable)
    assert info.train_dataset.uri.endswith("train.csv")
    assert info.val_dataset.uri.endswith("val.csv") and info.validation_network == "MainValidation"
    assert any("Dropout disabled" in n for n in info.notes)
    assert sum("running statistics" in n for n in info.notes) == 2


def test_adam_alpha_and_weight_decay_are_read(results):
    m = load_model(model=os.path.join(results("adam"), "results.nnp"))
    assert m.info.solver.type == "Adam" and m.info.solver.lr == pytest.approx(0.001)
    m2 = load_model(model=os.path.join(results("logreg"), "results.nnp"))
    assert m2.info.solver.weight_decay == pytest.approx(0.01)


def test_graphs_at_any_batch_size_share_parameters(results, data28):
    import nnabla as nn

    nn.clear_parameters()
    m = load_model(model=os.path.join(results("cnn_bn"), "results.nnp"))
    g32, g5 = m.graph(32), m.graph(5)
    assert m.graph(32) is g32
    for name in m.info.trainable:
        assert g32.params[name] is g5.params[name]
    assert len(nn.get_parameters(grad_only=False)) == 0  # global scope untouched
    ds = load_dataset(data28["train"], m.info.input_shapes)
    g5.inputs["x"].d, g5.inputs["y"].d = ds.arrays["x"][:5], ds.arrays["y"][:5]
    g32.inputs["x"].d, g32.inputs["y"].d = ds.arrays["x"][:32], ds.arrays["y"][:32]
    g5.loss.forward()
    g32.loss.forward()
    np.testing.assert_allclose(g5.loss.d, g32.loss.d[:5], rtol=1e-5)
    # Changing a parameter through the model changes every graph.
    w = m.get_params()
    m.set_params({k: v * 0 for k, v in w.items()})
    g5.loss.forward()
    np.testing.assert_allclose(g5.loss.d, np.log(10.0), rtol=1e-6)


def test_save_and_load_params_roundtrip(results, tmp_path):
    m = load_model(model=os.path.join(results("mlp"), "results.nnp"))
    before = m.get_params()
    m.save_params(str(tmp_path / "p.h5"))
    m.set_params({k: v + 1 for k, v in before.items()})
    m.load_params(str(tmp_path / "p.h5"))
    for k, v in m.get_params().items():
        np.testing.assert_array_equal(v, before[k])


def test_reading_a_variable_searches_no_folder_for_nnabla_nnabla_ext():
    """nnabla 1.39 imports ``nnabla_ext.cpu`` on every ``Variable.d`` / ``.g``, first as
    ``nnabla.nnabla_ext.cpu``; once a context is made (``make_context``), that name is found
    in ``sys.modules`` instead of by a search of every folder on ``sys.path``, each time."""
    import sys

    import nnabla as nn

    from sgd_influence_plugin.nnabla_adapter import make_context

    class Recorder:  # first on sys.meta_path: sees every name a search starts for
        def __init__(self):
            self.names = []

        def find_spec(self, name, path=None, target=None):
            self.names.append(name)
            return None

    make_context("cpu")
    v = nn.Variable((2, 3), need_grad=True)
    recorder = Recorder()
    sys.meta_path.insert(0, recorder)
    try:
        for _ in range(3):
            v.d = np.ones((2, 3), dtype=np.float32)
            np.asarray(v.d) + np.asarray(v.g)
    finally:
        sys.meta_path.remove(recorder)
    assert not [n for n in recorder.names if n.startswith("nnabla.nnabla_ext")]
    assert np.array_equal(v.d, np.ones((2, 3), dtype=np.float32))


def test_an_executor_reading_a_column_the_training_does_not_is_refused(results, tmp_path):
    """Its predictions would stop on a KeyError (a traceback) once a run needs the model's
    class; now the definition is refused when it is read."""
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2

    from sgd_influence_plugin.errors import NetworkDefinitionError

    folder = results("mlp")
    proto = nnabla_pb2.NNablaProtoBuf()
    text_format.Merge(open(os.path.join(folder, "net.nntxt")).read(), proto)
    proto.executor[0].data_variable[0].data_name = "Input"
    path = tmp_path / "net.nntxt"
    path.write_text(text_format.MessageToString(proto))
    with pytest.raises(
        NetworkDefinitionError,
        match=r"executor 'Executor' fills 'x' from "
        r"dataset column 'Input', which the training network does not read",
    ):
        load_model(config=str(path), params=os.path.join(folder, "parameters.h5"))
