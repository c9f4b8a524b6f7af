"""Label noise for experiments: flips training labels only and records what it did."""

from __future__ import annotations

import numpy as np

from audit.data.base import TRAIN, AuditDataset
from audit.errors import AuditInputError

NOISE_KINDS = ("symmetric", "pair", "confusion", "mixed")


def noisy_labels(
    labels: np.ndarray,
    rate: float,
    num_classes: int,
    *,
    kind: str = "symmetric",
    seed: int = 0,
    confusion: np.ndarray | None = None,
) -> np.ndarray:
    """Return a copy of ``labels`` with exactly round(rate × N) entries flipped to another class.

    kind: ``symmetric`` (uniform over the other classes), ``pair`` (a fixed seeded class permutation
    without fixed points: class c always goes to perm[c]), or ``confusion`` (to class k ≠ c with
    probability proportional to ``confusion[c, k]``, a (K, K) matrix of counts, e.g. a trained model's
    confusion matrix), or ``mixed`` (half of the flips pair, half symmetric: the mixed noise of real
    annotation, where some classes are confused systematically and other mistakes are random).
    """
    if not 0.0 <= rate < 1.0:
        raise AuditInputError(f"--noise {rate}: must be in [0, 1)")
    if kind not in NOISE_KINDS:
        raise AuditInputError(f"--noise-kind {kind!r}: must be one of {', '.join(NOISE_KINDS)}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.int64)
    out = labels.copy()
    n_flip = int(round(rate * len(labels)))
    if n_flip == 0:
        return out
    flip = rng.choice(len(labels), size=n_flip, replace=False)
    k = num_classes
    if kind in ("pair", "mixed"):
        # A random cyclic permutation has no fixed points.
        order = rng.permutation(k)
        perm = np.empty(k, dtype=np.int64)
        perm[order] = np.roll(order, -1)
    if kind == "symmetric":
        shift = rng.integers(1, k, size=n_flip)
        out[flip] = (labels[flip] + shift) % k
    elif kind == "pair":
        out[flip] = perm[labels[flip]]
    elif kind == "mixed":
        half = flip[: n_flip // 2]
        rest = flip[n_flip // 2:]
        out[half] = perm[labels[half]]
        out[rest] = (labels[rest] + rng.integers(1, k, size=len(rest))) % k
    else:
        if confusion is None:
            raise AuditInputError("--noise-kind confusion needs a confusion matrix")
        m = np.asarray(confusion, dtype=float).copy()
        np.fill_diagonal(m, 0.0)
        m += 1e-6 * (1 - np.eye(k))  # rows without confusions fall back to uniform
        m /= m.sum(1, keepdims=True)
        for i in flip:
            out[i] = rng.choice(k, p=m[labels[i]])
    return out


def inject_noise(
    ds: AuditDataset, rate: float, *, kind: str = "symmetric", seed: int = 0, confusion: np.ndarray | None = None
) -> AuditDataset:
    """Flip ``rate`` of the *training* labels; the result carries ``clean_labels``."""
    tr = ds.split_indices(TRAIN)
    labels = ds.labels.copy()
    labels[tr] = noisy_labels(ds.labels[tr], rate, ds.num_classes, kind=kind, seed=seed, confusion=confusion)
    return ds.with_labels(labels, clean_labels=ds.labels.copy())


def model_confusion(ds: AuditDataset, seed: int = 0) -> np.ndarray:
    """A realistic confusion matrix (K, K) for ``confusion`` noise: a logistic regression on
    downsampled training images, cross-validated (2 folds), so flips follow what a model confuses.
    BLAS runs on one thread: the solver's result, and so the injected noise, then does not depend on
    the machine's core count."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from threadpoolctl import threadpool_limits

    tr = ds.split_indices(TRAIN)
    rng = np.random.default_rng(seed)
    sub = tr if len(tr) <= 5000 else rng.choice(tr, 5000, replace=False)
    x = np.asarray(ds.images[np.sort(sub)], dtype=np.float32) / 255.0
    stride = max(1, x.shape[-1] // 14)
    x = x[:, :, ::stride, ::stride].reshape(len(x), -1)
    y = ds.labels[np.sort(sub)]
    with threadpool_limits(limits=1):
        pred = cross_val_predict(LogisticRegression(max_iter=200), x, y, cv=2)
    k = ds.num_classes
    m = np.zeros((k, k))
    np.add.at(m, (y, pred), 1)
    return m
