"""Storage-efficient SGD-influence for Neural Network Console."""

__version__ = "0.1.0"
