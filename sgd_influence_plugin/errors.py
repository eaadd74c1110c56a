"""The project's exception types.

Every message names the file (and the row, where there is one) and says how to fix it.
Entry points catch :class:`SGDInfluenceError`, print its message as one line and exit non-zero.
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
