"""Small array helpers shared by the signals."""

from __future__ import annotations

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def margin(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Given-label logit minus the largest other logit, per row."""
    true = logits[np.arange(len(labels)), labels]
    other = logits.copy()
    other[np.arange(len(labels)), labels] = -np.inf
    return true - other.max(1)
