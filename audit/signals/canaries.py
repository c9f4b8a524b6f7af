"""Canaries: a few planted label flips whose answer we know, used to choose how to combine signals.

A canary is a real training image whose label is flipped to a random wrong one, and whose correctly
labelled original is taken *out* of the training set: every model sees the image once, with the wrong
label only. So a canary is what an injected label error is (a training image with a wrong label and no
correctly labelled twin), and no model can recover its true label from a copy of it in training,
whatever its augmentation (shifts, flips) does. Images that occur more than once in the training set
are never made canaries (their duplicate would be such a twin).

The price: the canaries' own given labels are not audited in this run (only their out-of-sample
predictions, from the cross-validation folds that held them out, are about them). A rerun with another
seed draws other canaries.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from audit.rows import Rows


def _unique_image_rows(images: np.ndarray) -> np.ndarray:
    """Rows whose image occurs exactly once in ``images`` (byte-exact; by a 128-bit hash of each
    image, 1 s for 50,000 colour 32×32 images, where sorting the pixel rows takes 14 s)."""
    digests = []
    for s in range(0, len(images), 4096):  # a block at a time: images may be a memmap or audit.rows.Rows
        flat = np.ascontiguousarray(np.asarray(images[s:s + 4096])).reshape(-1, int(np.prod(images.shape[1:])))
        digests += [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]
    digests = np.array(digests, dtype="S16")
    _, inverse, counts = np.unique(digests, return_inverse=True, return_counts=True)
    return np.flatnonzero(counts[inverse.ravel()] == 1)


def make_canaries(images: np.ndarray, labels: np.ndarray, num_classes: int, rate: float, seed: int):
    """images uint8 (N, C, H, W), labels (N,) -> (canary images (M, C, H, W), labels (M,), source rows (M,)).

    M = round(rate × N), at least 10 when rate > 0 (never more than N // 4 nor the number of images
    that occur once). Each canary image is an exact copy of ``images[source]`` with a uniformly drawn
    label other than ``labels[source]``. The caller must take the source rows out of the training
    set (:func:`plant_canaries` does), else each canary has its correctly labelled original as a twin.
    """
    n = len(labels)
    none = images[:0].copy(), labels[:0].copy(), np.zeros(0, np.int64)
    if rate <= 0 or n < 20 or num_classes < 2:
        return none
    pool = _unique_image_rows(images)
    m = min(max(10, int(round(rate * n))), n // 4, len(pool))
    if m == 0:
        return none
    rng = np.random.default_rng(seed + 99991)
    src = np.sort(rng.choice(pool, size=m, replace=False))
    new = (labels[src] + rng.integers(1, num_classes, size=m)) % num_classes
    return np.asarray(images[src]).copy(), new.astype(np.int64), src.astype(np.int64)


@dataclass(frozen=True)
class CanarySet:
    """The training set the models see: the real rows that stay (in their order), then the canaries.

    ``images`` (N, C, H, W) and ``labels`` (N,) with N = len(real_rows) + len(source); ``is_canary``
    (N,) is True on the last M rows; ``real_rows`` and ``source`` index the rows passed in (the
    outputs describe ``real_rows``; ``source`` rows are the canaries); ``clean_labels`` (M,) are the
    canaries' labels before the flip (for :func:`audit.signals.combine.canary_weights`).
    """

    images: Rows  # a view of the rows that stay, then the canaries' copied images
    labels: np.ndarray
    is_canary: np.ndarray
    real_rows: np.ndarray
    source: np.ndarray
    clean_labels: np.ndarray


def plant_canaries(images, labels: np.ndarray, num_classes: int, rate: float, seed: int) -> CanarySet:
    """The canaries of :func:`make_canaries` in place of their sources: no row of the result is a
    correctly labelled copy of a canary, so cross-validation needs no grouping. ``images`` is an array,
    a memmap or a :class:`audit.rows.Rows`; the result's images are a view (only the canaries' images
    are copied)."""
    c_img, c_lab, src = make_canaries(images, labels, num_classes, rate, seed)
    keep = np.setdiff1d(np.arange(len(labels)), src)
    base = images if isinstance(images, Rows) else Rows.of(images)
    return CanarySet(
        images=base.subset(keep).concat(Rows.of(c_img)),
        labels=np.concatenate([np.asarray(labels)[keep], c_lab]).astype(np.int64),
        is_canary=np.r_[np.zeros(len(keep), bool), np.ones(len(src), bool)],
        real_rows=keep.astype(np.int64), source=src, clean_labels=np.asarray(labels)[src].astype(np.int64))
