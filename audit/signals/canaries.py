"""Canaries: a few planted label flips whose answer we know, used to choose how to combine signals.

Like AUM's threshold samples, they are extra training rows: a copy of a random training image,
shifted by one pixel so it is a new image rather than an exact duplicate, given a random wrong label.
Every model trains with them; every output drops them.
"""

from __future__ import annotations

import numpy as np


def make_canaries(images: np.ndarray, labels: np.ndarray, num_classes: int, rate: float, seed: int):
    """images uint8 (N, C, H, W), labels (N,) -> (canary images (M, C, H, W), labels (M,), source rows (M,)).

    M = round(rate × N), at least 10 when rate > 0 (never more than N // 4).
    """
    n = len(labels)
    if rate <= 0 or n < 20 or num_classes < 2:
        return images[:0].copy(), labels[:0].copy(), np.zeros(0, np.int64)
    m = min(max(10, int(round(rate * n))), n // 4)
    rng = np.random.default_rng(seed + 99991)
    src = np.sort(rng.choice(n, size=m, replace=False))
    imgs = np.asarray(images[src]).copy()
    for i in range(m):
        axis = 2 + int(rng.integers(2))
        imgs[i] = np.roll(imgs[i], 1 if rng.random() < 0.5 else -1, axis=axis - 1)
    new = (labels[src] + rng.integers(1, num_classes, size=m)) % num_classes
    return imgs, new.astype(np.int64), src.astype(np.int64)
