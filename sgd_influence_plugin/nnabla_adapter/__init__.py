"""The one subpackage that knows nnabla's network files, parameter scopes and contexts.

It turns a console training result (``results.nnp``, or ``net.nntxt`` plus a parameters
``.h5``) into a :class:`NnablaModel`: a per-sample loss graph at any batch size, the
trainable parameters as arrays, and a description (:class:`ModelInfo`) of what feeds the
network and how the console trained it. Nothing else in the package touches nnabla's
parameter scopes, file handlers or contexts.

What the replay changes in the training network, in both phases alike (see ``notes``):

- BatchNormalization runs in inference mode (running statistics, which are not trained), so
  per-sample losses do not depend on the rest of the batch.
- Dropout and shape-preserving random augmentation are replaced by identity. Replaying
  random masks inside a double-backward pass would need per-step seeds in both phases; turning
  them off in both keeps the two phases consistent.

Its parts, each usable on its own:

- :mod:`.files`: reading ``.nnp`` / ``.nntxt`` / ``.h5`` (:func:`read_result`,
  :func:`read_params`);
- :mod:`.definition`: understanding the definition (:class:`ModelInfo`, :class:`DatasetRef`,
  :func:`describe`, which also prepares the replay network), with :mod:`.losses` (the loss
  kinds), :mod:`.solver` (:class:`SolverConfig`), :mod:`.replay_network` (the changes
  above), :mod:`.recurrent` (recurrent and repeated networks unrolled, a Delay's initial
  state) and :mod:`.indices` (the columns an Embed reads as word indices);
- :mod:`.model`: :class:`NnablaModel`, :class:`LossGraph`, :func:`make_context`,
  :func:`load_model`, :func:`prepare_process` (nnabla set up in a worker process).

``sgd_influence_plugin.nnabla_adapter`` stays the import path for all of these names.
"""

from .definition import DatasetRef, ModelInfo, describe
from .files import read_params, read_result
from .model import LossGraph, NnablaModel, load_model, make_context, prepare_process
from .solver import SolverConfig

__all__ = [
    "DatasetRef",
    "LossGraph",
    "ModelInfo",
    "NnablaModel",
    "SolverConfig",
    "describe",
    "load_model",
    "make_context",
    "prepare_process",
    "read_params",
    "read_result",
]
