"""One small network per layer of the console's palette (activations and math), for
:mod:`support.netdef` and ``tests/test_layer_palette.py``.

Each entry of :data:`PALETTE` builds the scores of a tiny classifier of 7x7 grayscale images
around one layer type, with learned layers before it so that its derivatives matter: an MLP
(``Affine`` 16, the layer, ``Affine``) for the activations, two ``Affine`` branches for the
two-input functions, a small CNN for convolutions, pooling and reductions over inner axes, an
attention block (``BatchMatmul``) over the image's rows. A layer is added in one line.
"""

from __future__ import annotations


def _mlp(act):
    def build(x, k):
        import nnabla.parametric_functions as PF

        return PF.affine(act(PF.affine(x, 16, name="Affine")), k, name="Affine_2")

    return build


def _two(op):
    """Two Affine branches a, b of the input, ``op(a, b)``, then Tanh and an Affine."""

    def build(x, k):
        import nnabla.functions as F
        import nnabla.parametric_functions as PF

        a, b = PF.affine(x, 16, name="Affine"), PF.affine(x, 16, name="Affine_B")
        return PF.affine(F.tanh(op(a, b)), k, name="Affine_2")

    return build


def _cnn(op):
    """Convolution 4x3x3 (padded, Tanh) of the 7x7 input, ``op(h)``, then an Affine."""

    def build(x, k):
        import nnabla.functions as F
        import nnabla.parametric_functions as PF

        h = F.tanh(PF.convolution(x, 4, (3, 3), pad=(1, 1), name="Convolution"))
        return PF.affine(op(h), k, name="Affine")

    return build


def _attention(x, k):
    """Self-attention over the image's 7 rows (tokens of 7 values): queries, keys and values
    by 1x7 Convolutions (8 per row), BatchMatmul twice, Softmax over the keys.
    """
    import nnabla.functions as F
    import nnabla.parametric_functions as PF

    def tokens(name):  # (B, 8, 7): 8 values for each of the 7 rows
        h = PF.convolution(x, 8, (1, 7), name=name)
        return F.reshape(h, (x.shape[0], 8, 7))

    q, key, v = tokens("Convolution_Q"), tokens("Convolution_K"), tokens("Convolution_V")
    a = F.softmax(F.batch_matmul(q, key, transpose_a=True) * (8**-0.5), axis=2)
    return PF.affine(F.batch_matmul(v, a, transpose_b=True), k, name="Affine")


def _pf(name):
    """A parametric layer of the palette with the console's name for it."""

    def layer(h):
        import nnabla.functions as F
        import nnabla.parametric_functions as PF

        if name == "PReLU":
            return PF.prelu(h, name="PReLU")
        if name == "Convolution":  # groups, dilation and strides together
            h = PF.convolution(h, 4, (3, 3), pad=(2, 2), dilation=(2, 2), stride=(2, 2),
                               group=2, name="Convolution_2")  # fmt: skip
        elif name == "Deconvolution":
            h = PF.convolution(h, 4, (3, 3), stride=(2, 2), name="Convolution_2")
            h = PF.deconvolution(h, 4, (3, 3), stride=(2, 2), group=2, name="Deconvolution")
        elif name == "DepthwiseConvolution":
            h = PF.depthwise_convolution(h, (3, 3), pad=(1, 1), name="DepthwiseConvolution")
        elif name == "DepthwiseDeconvolution":
            h = PF.depthwise_deconvolution(h, (3, 3), name="DepthwiseDeconvolution")
        return F.tanh(h)

    return layer


def _table():
    import nnabla.functions as F

    mlp = {
        "ReLU": F.relu,
        "LeakyReLU": lambda h: F.leaky_relu(h, 0.1),
        "PReLU": _pf("PReLU"),
        "ELU": F.elu,
        "SELU": F.selu,
        "CELU": F.celu,
        "CReLU": F.crelu,
        "Swish": F.swish,
        "GELU": F.gelu,
        "Mish": F.mish,
        "Softplus": F.softplus,
        "Softsign": F.softsign,
        "Tanh": F.tanh,
        "Sigmoid": F.sigmoid,
        "HardSigmoid": F.hard_sigmoid,
        "HardTanh": F.hard_tanh,
        "LogSigmoid": F.log_sigmoid,
        "ReLU6": F.relu6,
        "Abs": F.abs,
        "Exp": lambda h: F.exp(h * 0.5),
        "Log": lambda h: F.log(F.add_scalar(F.pow_scalar(h, 2.0), 1.0)),
        "PowScalar": lambda h: F.pow_scalar(h, 3.0),
        "Sqrt": lambda h: F.pow_scalar(F.add_scalar(F.pow_scalar(h, 2.0), 1.0), 0.5),
        "AddScalar": lambda h: F.tanh(F.add_scalar(h, 0.5)),
        "MulScalar": lambda h: F.tanh(F.mul_scalar(h, 1.5)),
        # over the batch axis: every sample's loss depends on the rest of its batch
        "Softmax_axis0": lambda h: F.softmax(h, axis=0),
        "Mean_axis0": lambda h: F.tanh(h - F.mean(h, axis=0, keepdims=True)),
    }
    two = {
        "Add2": F.add2,
        "Sub2": F.sub2,
        "Mul2": F.mul2,
        "Div2": lambda a, b: F.div2(a, F.add_scalar(F.pow_scalar(b, 2.0), 1.0)),
        "Pow2": lambda a, b: F.pow2(F.add_scalar(F.pow_scalar(a, 2.0), 1.0), F.tanh(b)),
        "Maximum2": F.maximum2,
        "Minimum2": F.minimum2,
    }
    cnn = {
        "Sum": lambda h: F.sum(h, axis=3),
        "Mean": lambda h: F.mean(h, axis=2),
        "Max": lambda h: F.max(h, axis=(2, 3)),
        "Softmax": lambda h: F.softmax(h, axis=1),
        "LogSoftmax": lambda h: F.log_softmax(h, axis=1),
        "Convolution": _pf("Convolution"),
        "Deconvolution": _pf("Deconvolution"),
        "DepthwiseConvolution": _pf("DepthwiseConvolution"),
        "DepthwiseDeconvolution": _pf("DepthwiseDeconvolution"),
        "MaxPooling": lambda h: F.max_pooling(h, (2, 2)),
        "AveragePooling": lambda h: F.average_pooling(h, (2, 2)),
        "SumPooling": lambda h: F.sum_pooling(h, (2, 2)),
        "GlobalAveragePooling": F.global_average_pooling,
        "Unpooling": lambda h: F.unpooling(F.average_pooling(h, (2, 2)), (2, 2)),
    }
    table = {name: _mlp(act) for name, act in mlp.items()}
    table.update({name: _two(op) for name, op in two.items()})
    table.update({name: _cnn(op) for name, op in cnn.items()})
    table["BatchMatmul"] = _attention
    table["Affine"] = _mlp(F.tanh)
    return table


#: The layer kinds of :data:`PALETTE`; an architecture's name is ``palette_<kind>``.
PALETTE_KINDS = (
    "ReLU LeakyReLU PReLU ELU SELU CELU CReLU Swish GELU Mish Softplus Softsign Tanh Sigmoid "
    "HardSigmoid HardTanh LogSigmoid ReLU6 Abs Exp Log PowScalar Sqrt AddScalar MulScalar "
    "Add2 Sub2 Mul2 Div2 Pow2 Maximum2 Minimum2 Sum Mean Max Softmax LogSoftmax Convolution "
    "Deconvolution DepthwiseConvolution DepthwiseDeconvolution MaxPooling AveragePooling "
    "SumPooling GlobalAveragePooling Unpooling BatchMatmul Affine Softmax_axis0 Mean_axis0"
).split()
PALETTE_ARCHS = tuple("palette_" + kind for kind in PALETTE_KINDS)
#: Parameter-name suffix -> initializer of the palette's own parametric layers (before
#: :mod:`support.netdef`'s table; the console's defaults).
PALETTE_INITIALIZERS = (
    ("/deconv/W", ("NormalConvolutionGlorot", 1.0)),
    ("/depthwise_conv/W", ("Normal", 0.3)),
    ("/depthwise_deconv/W", ("Normal", 0.3)),
    ("/slope", ("Constant", 0.25)),
)


def palette_logits(arch: str, x, k: int):
    """The scores (N, k) of ``arch`` (one of :data:`PALETTE_ARCHS`) on input ``x``."""
    return _table()[arch[len("palette_") :]](x, k)
