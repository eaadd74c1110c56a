"""A classifier's output as class probabilities, whatever its last layer (softmax, logits, or
a binary classifier's single sigmoid output).
"""

from __future__ import annotations

import numpy as np


def as_probabilities(output: np.ndarray) -> np.ndarray:
    """The classifier's output as probabilities, float64 (N, C).

    Rows that are already probabilities (non-negative, summing to 1 within 1e-3, e.g. a
    softmax output) are kept; anything else (logits) goes through a softmax. A binary
    classifier's single output (N, 1), the probability of class 1 (a sigmoid's output, or its
    logit when any value lies outside 0..1), becomes ``[1 - p, p]`` (N, 2).
    """
    out = np.asarray(output, dtype=np.float64).reshape(len(output), -1)
    if out.shape[1] == 1:
        p = out[:, 0] if np.all((out >= 0) & (out <= 1)) else 0.5 * (1 + np.tanh(out[:, 0] / 2))
        return np.stack([1.0 - p, p], axis=1)
    if np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3):
        return out
    z = out - out.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
