"""How ``shared`` (the big inputs every unit reads: the model, the decoded arrays) reaches
spawned workers of :mod:`.parallel`: pickled once per map into a temporary folder, its large
arrays as ``.npy`` files beside it that every worker maps copy-on-write, so the decoded
datasets are on disk once, not once per worker. The model is pickled as its definition and
parameter values and rebuilt by the adapter (``NnablaModel.__reduce__``) after the adapter
has set up nnabla in that process (:func:`.nnabla_adapter.prepare_process`).
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Sequence

#: Arrays of ``shared`` at least this large go to spawned workers as mapped ``.npy`` files.
_MAPPED_BYTES = 1 << 16


class _ArrayFiles(pickle.Pickler):
    """Pickles an object with its large plain arrays written beside it as ``.npy`` files."""

    def __init__(self, file, folder: str):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.folder, self.count = folder, 0

    def persistent_id(self, obj):
        import numpy as np

        if type(obj) is not np.ndarray or obj.dtype.hasobject or obj.nbytes < _MAPPED_BYTES:
            return None
        name = f"a{self.count}.npy"
        self.count += 1
        np.save(os.path.join(self.folder, name), obj, allow_pickle=False)
        return name


class _MappedArrays(pickle.Unpickler):
    def __init__(self, file, folder: str):
        super().__init__(file)
        self.folder = folder

    def persistent_load(self, name):
        import numpy as np

        # Copy-on-write: a unit may change its copy (as a forked worker may), never the file.
        return np.load(os.path.join(self.folder, name), mmap_mode="c").view(np.ndarray)


def write_shared(shared: Sequence[Any], folder: str) -> None:
    """``shared`` written into ``folder`` (an empty temporary folder the caller removes)."""
    with open(os.path.join(folder, "shared.pkl"), "wb") as f:
        _ArrayFiles(f, folder).dump(tuple(shared))


def read_shared(folder: str) -> tuple:
    """What :func:`write_shared` wrote into ``folder``, its large arrays mapped copy-on-write."""
    with open(os.path.join(folder, "shared.pkl"), "rb") as f:
        return _MappedArrays(f, folder).load()
