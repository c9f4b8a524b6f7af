"""Outliers: images far from every training image in the embedding (``outlier``).

A row's distance is the geometric mean of two k-NN distances in the embedding (the natural model's
penultimate features, the ones behind the FAISS neighbours; mean-centred pixel vectors when no model
ran): its mean cosine distance to its ``outlier_k`` nearest training rows, and the same to the
training rows of its given label (a training row leaving itself out): far from everything, and from
its class. The class term keeps a few foreign images that resemble one another from hiding behind
each other (on digits with 1% planted noise and inverted images, AUROC 0.998 with it, 0.965 without,
in the natural MLP's features). The score is that distance's percentile among the training rows'
(0.99 = farther than 99% of them); a row is flagged past Tukey's fence of the training rows' log
distances, Q3 + ``outlier_iqr`` × IQR, so data without outliers flags few rather than a fixed share.
A row far from its class only is a label question (``category``), which this type leaves alone.
"""

from __future__ import annotations

import numpy as np

from audit.issues.base import IssueConfig, register

OUTLIER = register("outlier", "images far from every training image and from their class in the embedding")


def knn_distance(emb: np.ndarray, base_rows: np.ndarray, k: int, *, device: str | None = "cpu",
                 method: str = "auto") -> np.ndarray:
    """Mean cosine distance (0..2) of every row of ``emb`` (N, D) to its ``k`` nearest rows among
    ``base_rows``, a base row not counting itself. float64 (N,). ``method``: that of
    :func:`audit.neighbors.search` (``auto``: exact unless large)."""
    from audit.neighbors import search

    emb = np.ascontiguousarray(emb, np.float32)
    base = emb[base_rows]
    kk = min(k + 1, len(base))
    if kk == 0:
        return np.full(len(emb), np.nan)
    sims, idx, _ = search(base, emb, kk, method=method, device=device)
    own = np.full(len(emb), -1, np.int64)
    own[base_rows] = np.arange(len(base_rows))
    is_self = idx == own[:, None]
    # drop each row's own match, else the last of the k + 1
    drop = np.where(is_self.any(1), is_self.argmax(1), kk - 1)
    keep = np.ones_like(is_self)
    keep[np.arange(len(emb)), drop] = False
    return (1.0 - sims[keep].reshape(len(emb), kk - 1).astype(np.float64)).mean(1)


def find_outliers(emb: np.ndarray, labels: np.ndarray, split: np.ndarray, *, config: IssueConfig = IssueConfig(),
                  device: str | None = "cpu") -> dict[str, np.ndarray]:
    """``outlier_score`` (percentile among the training rows, 0..1), ``is_outlier_issue``,
    ``outlier_distance`` (to the nearest training rows) and ``outlier_class_distance`` (to those of the
    row's given label; NaN when its class has fewer than two training rows) over all N rows, plus the
    fence (``outlier_fence``, a 0-d array, in units of the combined distance)."""
    from audit.neighbors import IVF_MIN_BASE, choose_method

    split = np.asarray(split).astype(str)
    tr = np.flatnonzero(split == "train")
    d_all = knn_distance(emb, tr, config.outlier_k, device=device)
    # The per-class searches follow the whole search: when it is approximate (past IVF_MIN_PAIRS), so is
    # each class's with a base of IVF_MIN_BASE rows or more (ten classes of 100,000 rows are 8.3e10
    # pairs together, though each is below the threshold: exact, 12 minutes on one core at 1M rows).
    large = choose_method(len(tr), len(emb)) == "ivf"
    d_cls = np.full(len(emb), np.nan)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        base = np.intersect1d(rows, tr)
        if len(base) >= 2:
            method = "ivf" if large and len(base) >= IVF_MIN_BASE else "auto"
            d_cls[rows] = knn_distance(emb[rows], np.searchsorted(rows, base), config.outlier_k, device=device,
                                       method=method)
    d = np.sqrt(np.maximum(d_all, 0) * np.maximum(np.where(np.isnan(d_cls), d_all, d_cls), 0))
    ref = np.sort(d[tr])
    # mid-rank percentile: a row tied with m training rows sits in the middle of them
    pct = (np.searchsorted(ref, d, "left") + np.searchsorted(ref, d, "right")) / (2.0 * max(1, len(ref)))
    logd = np.log(np.maximum(ref, 1e-9))
    q1, q3 = np.quantile(logd, [0.25, 0.75]) if len(ref) else (0.0, 0.0)
    fence = float(np.exp(q3 + config.outlier_iqr * (q3 - q1)))
    return {"outlier_score": pct, "is_outlier_issue": d > fence, "outlier_distance": d_all,
            "outlier_class_distance": d_cls, "outlier_fence": np.array(fence),
            "outlier_search": np.array("ivf" if large else "exact")}


def pixel_vectors(images) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32 (N, C·H·W), each image minus its mean: the embedding when no model
    ran (centring makes an inverted image far from its original instead of close through the background)."""
    x = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    return x - x.mean(1, keepdims=True)
