"""Exact and near copies: within the training rows (``near_duplicate``) and from test into training (``leak``).

Two images are copies when their pixels hash alike (exact, a 128-bit BLAKE2 digest of the uint8
array), or near copies when their *copy similarity* reaches ``IssueConfig.near_duplicate_similarity``:
the largest Pearson correlation of their grey descriptors (mean over channels, area-averaged to at
most ``descriptor_side`` pixels a side) over the nine relative shifts of at most one descriptor pixel,
each computed on the two images' overlapping window. Pearson is blind to brightness and contrast
changes, the shifts forgive a translation, and a re-encoding's noise costs little correlation.

Why pixels and not the natural model's embedding: a classifier trained to zero error collapses each
class, so distinct images of a class lie close (on the bundled digits the nearest distinct training
image has median cosine 0.977 in the natural model's penultimate features) while a copy shifted by
one pixel can land far (cosine 0.21 to 0.74 for the MLP the recipe chooses there); no threshold on
that cosine separates copies from look-alikes (measured in ``benchmarks/issue_types.py``).
"""

from __future__ import annotations

import hashlib

import numpy as np

from audit.issues.base import TEST, TRAIN, IssueConfig, register

NEAR_DUPLICATE = register("near_duplicate", "training images that are exact or near copies of one another "
                          "(up to a 1-pixel shift, brightness or re-encoding)", (TRAIN,))
LEAK = register("leak", "test images with an exact or near copy in the training set", (TEST,))

SHIFTS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
CHUNK = 4096


def content_hashes(images) -> np.ndarray:
    """uint8 images (N, C, H, W) (an array, memmap or :class:`audit.rows.Rows`) -> (N,) ``S16`` digests."""
    out = []
    for s in range(0, len(images), CHUNK):
        block = np.ascontiguousarray(np.asarray(images[s:s + CHUNK]))
        out += [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in block.reshape(len(block), -1)]
    return np.array(out, dtype="S16")


def grey_descriptors(images, side: int = 16) -> np.ndarray:
    """uint8 images (N, C, H, W) -> float32 (N, h, w) grey in [0, 255], area-averaged by the smallest whole
    factor that brings the longer side to at most ``side`` (edges repeated to fill the last block)."""
    n, _, h, w = images.shape
    f = max(1, -(-max(h, w) // side))
    hh, ww = -(-h // f), -(-w // f)
    out = np.empty((n, hh, ww), np.float32)
    for s in range(0, n, CHUNK):
        g = np.asarray(images[s:s + CHUNK], dtype=np.float32).mean(1)
        if f > 1:
            g = np.pad(g, ((0, 0), (0, hh * f - h), (0, ww * f - w)), mode="edge")
            g = g.reshape(len(g), hh, f, ww, f).mean((2, 4))
        out[s:s + len(g)] = g
    return out


def _window(d: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Rows of ``d`` (N, h, w) cropped to the window that meets the other image shifted by (dy, dx),
    flattened, centred and scaled to unit length (zeros where the window is constant)."""
    h, w = d.shape[1:]
    x = d[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)].reshape(len(d), -1).astype(np.float32)
    x = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norm > 1e-3, x / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def copy_candidates(query: np.ndarray, base: np.ndarray, k: int, *, exclude_self: bool = False,
                    device: str | None = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near-copy candidates of each query among ``base`` by copy similarity.

    query (Q, h, w), base (N, h, w): grey descriptors (:func:`grey_descriptors`). For each of the nine
    shifts, the ``k`` best partners by Pearson correlation over the overlapping window (exact search,
    :func:`audit.neighbors.search`); a pair keeps its best shift. ``exclude_self``: query i is base i
    (a search of a set against itself), and pairs (i, i) are dropped.
    Returns (query rows (M,), base rows (M,), similarities (M,) float32), one entry per distinct pair.
    """
    from audit.neighbors import search

    qi, bi, sims = [], [], []
    kk = min(k + int(exclude_self), len(base))
    if kk == 0 or len(query) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    for dy, dx in SHIFTS:
        # query shifted by (dy, dx) against base: query pixel (y + dy, x + dx) meets base pixel (y, x)
        s, idx, _ = search(_window(base, -dy, -dx), _window(query, dy, dx), kk, method="exact", device=device)
        qi.append(np.repeat(np.arange(len(query)), kk))
        bi.append(idx.ravel())
        sims.append(s.ravel())
    qi, bi, sims = np.concatenate(qi), np.concatenate(bi), np.concatenate(sims)
    keep = bi >= 0
    if exclude_self:
        keep &= qi != bi
    qi, bi, sims = qi[keep], bi[keep], sims[keep]
    order = np.lexsort((-sims, bi, qi))  # per pair, its best shift first
    qi, bi, sims = qi[order], bi[order], sims[order]
    first = np.r_[True, (qi[1:] != qi[:-1]) | (bi[1:] != bi[:-1])]
    return qi[first], bi[first], sims[first]


def _exact_pairs(hq: np.ndarray, hb: np.ndarray, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every (query, base) pair with equal digests (without (i, i) when ``exclude_self``)."""
    order = np.argsort(hb, kind="stable")
    sb = hb[order]
    lo, hi = np.searchsorted(sb, hq, "left"), np.searchsorted(sb, hq, "right")
    cnt = hi - lo
    qi = np.repeat(np.arange(len(hq)), cnt)
    starts = np.repeat(lo - np.r_[0, np.cumsum(cnt)[:-1]], cnt)
    bi = order[np.arange(len(qi)) + starts] if len(qi) else np.zeros(0, np.int64)
    keep = qi != bi if exclude_self else np.ones(len(qi), bool)
    return qi[keep], bi[keep]


def find_copies(images, split: np.ndarray, *, config: IssueConfig = IssueConfig(),
                device: str | None = "cpu") -> dict[str, np.ndarray]:
    """Copy groups among the training rows and test rows with a copy in training.

    images: uint8 (N, C, H, W) of both splits; split (N,) ``train``/``test``. Returns arrays over all N
    rows: ``near_duplicate_score`` (train: the best copy similarity to another training row, 1.0 for an
    exact copy; NaN on test), ``is_near_duplicate_issue``, ``duplicate_group`` (int, -1 when none;
    groups numbered by their first row), ``duplicate_exact`` (the row has an exact copy in its group),
    ``leak_score`` (test: the best copy similarity to a training row; NaN on train),
    ``is_leak_issue``, ``leak_partner`` (the dataset row of that training image, -1 when none),
    ``leak_exact`` and ``content_hash`` (each row's ``S16`` pixel digest, :func:`content_hashes`).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    split = np.asarray(split).astype(str)
    n, t = len(split), config.near_duplicate_similarity
    tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    hashes = content_hashes(images)
    desc = grey_descriptors(images, config.descriptor_side)
    # training rows against themselves
    qi, bi, sim = copy_candidates(desc[tr], desc[tr], config.copy_neighbors, exclude_self=True, device=device)
    eq, eb = _exact_pairs(hashes[tr], hashes[tr], exclude_self=True)
    best = np.zeros(len(tr), np.float32)
    np.maximum.at(best, qi, sim)
    best[eq] = 1.0
    has_exact = np.zeros(len(tr), bool)
    has_exact[eq] = True
    edge = sim >= t
    ei, ej = np.r_[qi[edge], eq], np.r_[bi[edge], eb]
    graph = coo_matrix((np.ones(len(ei)), (ei, ej)), shape=(len(tr), len(tr)))
    _, comp = connected_components(graph, directed=False)
    size = np.bincount(comp, minlength=len(tr))[comp]
    in_group = size >= 2
    group = np.full(len(tr), -1, np.int64)
    if in_group.any():  # renumber 0, 1, ... by each group's first row
        first_row = np.full(comp.max() + 1, len(tr))
        np.minimum.at(first_row, comp, np.arange(len(tr)))
        ids = np.unique(first_row[comp[in_group]])
        group[in_group] = np.searchsorted(ids, first_row[comp[in_group]])
    out = {"near_duplicate_score": np.full(n, np.nan), "is_near_duplicate_issue": np.zeros(n, bool),
           "duplicate_group": np.full(n, -1, np.int64), "duplicate_exact": np.zeros(n, bool),
           "leak_score": np.full(n, np.nan), "is_leak_issue": np.zeros(n, bool),
           "leak_partner": np.full(n, -1, np.int64), "leak_exact": np.zeros(n, bool)}
    out["near_duplicate_score"][tr] = best
    out["is_near_duplicate_issue"][tr] = in_group
    out["duplicate_group"][tr] = group
    out["duplicate_exact"][tr] = has_exact
    # test rows against the training rows
    qi, bi, sim = copy_candidates(desc[te], desc[tr], config.copy_neighbors, device=device)
    eq, eb = _exact_pairs(hashes[te], hashes[tr], exclude_self=False)
    sim = np.r_[sim, np.full(len(eq), 2.0, np.float32)]  # an exact copy outranks any near one
    qi, bi = np.r_[qi, eq], np.r_[bi, eb]
    order = np.lexsort((bi, -sim, qi))  # per test row: the best partner, then the smaller row
    qi, bi, sim = qi[order], bi[order], sim[order]
    first = np.r_[True, qi[1:] != qi[:-1]] if len(qi) else np.zeros(0, bool)
    qi, bi, sim = qi[first], bi[first], sim[first]
    score = np.zeros(len(te))
    partner = np.full(len(te), -1, np.int64)
    score[qi] = np.minimum(sim, 1.0)
    leak = np.zeros(len(te), bool)
    leak[qi] = sim >= t
    partner[qi[sim >= t]] = tr[bi[sim >= t]]
    exact = np.zeros(len(te), bool)
    exact[qi] = sim > 1.0
    out["leak_score"][te] = score
    out["is_leak_issue"][te] = leak
    out["leak_partner"][te] = partner
    out["leak_exact"][te] = exact
    out["content_hash"] = hashes  # each row's pixel digest: review decisions are bound to it
    return out
