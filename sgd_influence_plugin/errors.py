"""The project's exception types.

Every message names the file (and the row, where there is one) and says how to fix it.
Entry points catch :class:`SGDInfluenceError`, print its message as one line and exit with
status 2. Every check runs before the computation starts (see :mod:`.validation`), except
:class:`ComputationError`, which checks what was computed before anything is written.
"""


class SGDInfluenceError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(SGDInfluenceError):
    """A file the user gave is missing, unreadable or malformed."""


class DatasetError(InputError):
    """A dataset CSV or one of its images does not fit the network."""


class NetworkDefinitionError(InputError):
    """The network definition (.nntxt / .nnp) lacks what the method needs."""


class ParameterError(InputError):
    """Parameters are missing or have the wrong shape for the network."""


class ContextError(SGDInfluenceError):
    """The requested compute context (e.g. cudnn) is not available."""


class SettingsError(SGDInfluenceError):
    """An option value is out of range or inconsistent with the inputs."""


class UnstableReplayError(SGDInfluenceError):
    """The replay blew up even at the reduced learning rates of every retry."""


class OutputError(SGDInfluenceError):
    """An output or cache place cannot be used: it is a folder where a file is expected, it is
    not writable or too full, it overlaps an input, or it holds a file the tool did not write.
    """


class ComputationError(SGDInfluenceError):
    """The computation produced values that cannot be right (NaN or infinite scores), e.g.
    because the learning rate makes the SGD epoch diverge; nothing is written.
    """


class ClusterError(SGDInfluenceError):
    """The cluster given with ``--cluster`` cannot be used (no scheduler answers, no workers,
    workers with other versions or without the data), or it lost the work (a worker died
    more often than its retries allow); nothing is written.
    """
