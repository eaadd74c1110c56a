"""Networks with the console's quantized and binarized layers, for :mod:`support.netdef`.

The console offers BinaryConnectAffine/Convolution, BinaryWeightAffine/Convolution (their
forward uses sign(W), their backward passes the gradient straight through to W), BinarySigmoid
and BinaryTanh (step activations with a straight-through gradient), FixedPointQuantize,
Pow2Quantize (straight through, fine-grained), Round and Sign, and the kinked but honest
HardTanh and ReLU6. Each architecture here is a small MLP or LeNet-like CNN with one kind
(``bnn_mlp`` has two, as the console's binary-net samples).
"""

from __future__ import annotations

#: arch -> what it tests (the kind of layer it carries)
QUANT_ARCHS = {
    "bc_mlp": "BinaryConnectAffine",
    "bw_mlp": "BinaryWeightAffine",
    "bc_lenet": "BinaryConnectConvolution",
    "bw_lenet": "BinaryWeightConvolution",
    "btanh_mlp": "BinaryTanh",
    "bsig_mlp": "BinarySigmoid",
    "fpq_mlp": "FixedPointQuantize",
    "pow2_mlp": "Pow2Quantize",
    "round_mlp": "Round",
    "sign_mlp": "Sign",
    "bnn_mlp": "BinaryConnectAffine, BinaryTanh",
    "hardtanh_mlp": "HardTanh",
    "relu6_mlp": "ReLU6",
}


def quant_logits(arch: str, x, k: int, train: bool):
    """The scores (N, k) of ``arch`` (a key of :data:`QUANT_ARCHS`) on input ``x``."""
    import nnabla.functions as F
    import nnabla.parametric_functions as PF

    def bn(h, name):
        return PF.batch_normalization(h, batch_stat=train, name=name)

    if arch in ("bc_lenet", "bw_lenet"):
        conv = PF.binary_connect_convolution if arch == "bc_lenet" else PF.binary_weight_convolution
        layer = "BinaryConnect" if arch == "bc_lenet" else "BinaryWeight"
        h = conv(x, 6, (3, 3), pad=(1, 1), name=layer + "Convolution")
        h = F.relu(F.max_pooling(bn(h, "BatchNormalization"), (2, 2)))
        return PF.affine(h, k, name="Affine")
    if arch in ("bc_mlp", "bw_mlp"):
        affine = PF.binary_connect_affine if arch == "bc_mlp" else PF.binary_weight_affine
        layer = "BinaryConnectAffine" if arch == "bc_mlp" else "BinaryWeightAffine"
        h = F.tanh(bn(affine(x, 32, name=layer), "BatchNormalization"))
        return PF.affine(h, k, name="Affine_2")
    if arch == "bnn_mlp":  # the console's binary-net samples: both kinds in one network
        h = PF.binary_connect_affine(x, 32, name="BinaryConnectAffine")
        h = F.binary_tanh(bn(h, "BatchNormalization"))
        return PF.affine(h, k, name="Affine_2")
    h = PF.affine(x, 32, name="Affine")
    act = {
        "btanh_mlp": F.binary_tanh,
        "bsig_mlp": F.binary_sigmoid,
        "fpq_mlp": lambda v: F.fixed_point_quantize(F.tanh(v)),
        "pow2_mlp": lambda v: F.pow2_quantize(F.tanh(v)),
        "round_mlp": lambda v: F.round(v * 2.0),
        "sign_mlp": F.sign,
        "hardtanh_mlp": F.hard_tanh,
        "relu6_mlp": F.relu6,
    }[arch]
    return PF.affine(act(h), k, name="Affine_2")
