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


def find_label_issues(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """cleanlab's ``find_label_issues`` (its default filter), in this process.

    With more than one core cleanlab forks a multiprocessing pool. A process that holds other threads
    (a Ray client's gRPC threads under ``--ray-address ray://``) can deadlock in the forked child: a
    ``ray://`` run hung in the table stage with both processes idle. ``n_jobs=1`` never forks."""
    from cleanlab.filter import find_label_issues as _cleanlab

    return _cleanlab(labels, pred_probs, n_jobs=1)
