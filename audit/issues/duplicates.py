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

The nine exact searches cost 2·Q·N·h·w flops each, quadratic in the rows: 100 times the time of 10,000
training rows of 28×28 against themselves for 100,000, and 10,000 times for a million.
Past ``COPY_EXACT_FLOPS`` (what the largest exact search of :mod:`audit.neighbors` costs before it
turns to IVF; reached at about 19,000 × 19,000 images of 28×28) the candidates come from one
approximate search instead (:func:`scaled_candidates`: the magnitudes of the descriptors' Fourier
transforms, which a one-pixel shift barely changes, in an inverted-file index), and every candidate
pair's copy similarity is then computed exactly (:func:`copy_similarity`), so a flagged pair is a true
near copy; a copy the search misses is missed, and a row's score is the best of its candidates.
"""

from __future__ import annotations

import hashlib

import numpy as np

from audit.issues.base import TEST, TRAIN, IssueConfig, register
from audit.neighbors import IVF_MIN_PAIRS

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


def grey_descriptors(images, side: int = 16, rows: np.ndarray | None = None) -> np.ndarray:
    """uint8 images (N, C, H, W) -> float32 (N, h, w) grey in [0, 255], area-averaged by the smallest whole
    factor that brings the longer side to at most ``side`` (edges repeated to fill the last block).
    ``rows``: only those rows, in that order (the same values as ``grey_descriptors(images)[rows]``)."""
    _, _, h, w = images.shape
    n = len(images) if rows is None else len(rows)
    f = max(1, -(-max(h, w) // side))
    hh, ww = -(-h // f), -(-w // f)
    out = np.empty((n, hh, ww), np.float32)
    for s in range(0, n, CHUNK):
        key = slice(s, s + CHUNK) if rows is None else np.asarray(rows[s:s + CHUNK], np.int64)
        g = np.asarray(images[key], dtype=np.float32).mean(1)
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
                    device: str | None = "cpu", method: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near-copy candidates of each query among ``base`` by copy similarity.

    query (Q, h, w), base (N, h, w): grey descriptors (:func:`grey_descriptors`). For each of the nine
    shifts, the ``k`` best partners by Pearson correlation over the overlapping window (exact search,
    :func:`audit.neighbors.search`); a pair keeps its best shift. ``exclude_self``: query i is base i
    (a search of a set against itself), and pairs (i, i) are dropped. ``method``: ``exact`` (that),
    ``ivf`` (:func:`scaled_candidates`, the pairs' similarities exact) or ``auto`` (``exact`` up to
    ``COPY_EXACT_FLOPS``).
    Returns (query rows (M,), base rows (M,), similarities (M,) float32), one entry per distinct pair.
    """
    from audit.neighbors import search

    if method not in ("auto", "exact", "ivf"):
        raise ValueError(f"unknown copy search method {method!r} (known: auto, exact, ivf)")
    qi, bi, sims = [], [], []
    kk = min(k + int(exclude_self), len(base))
    if kk == 0 or len(query) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    if method == "auto":
        method = copy_method(len(query), len(base), *base.shape[1:])
    if method == "ivf":
        qi, bi = scaled_candidates(query, base, min(k, SCALED_CANDIDATES), exclude_self=exclude_self)
        return qi, bi, copy_similarity(query, base, qi, bi)
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


# The nine exact searches run up to the flops audit.neighbors allows one exact search before it turns
# to IVF: 2·IVF_MIN_PAIRS·256 (1e10 pairs at d = 256), reached at about 19,000 × 19,000 images of
# 28×28 (about 70 s on one core); mnist10k's 7,500 training rows and the bundled digits stay exact.
COPY_EXACT_FLOPS = 2 * IVF_MIN_PAIRS * 256
# The approximate candidate search past it (see the module docstring), checked on planted 1-pixel
# shifts and brightness changes in synthetic 28×28 images (tests/test_issue_types.py, and
# benchmarks/issues_scale.py up to 300,000 images: copy_recall there).
SCALED_DIM = 64  # principal components of the spectra the index holds
SCALED_CANDIDATES = 4  # candidates per query, each verified exactly
SCALED_SAMPLE = 20_000  # base rows the components are fitted on
SCALED_NPROBE = 64  # lists probed per query (a near copy lies in one of the query's nearest few)


def copy_method(n_query: int, n_base: int, h: int, w: int) -> str:
    """What ``method="auto"`` of :func:`copy_candidates` does: ``exact`` while the nine exact searches
    of (h, w) descriptors cost at most :data:`COPY_EXACT_FLOPS`, else ``ivf``."""
    return "exact" if 2 * n_query * n_base * h * w * len(SHIFTS) <= COPY_EXACT_FLOPS else "ivf"


def spectra(d: np.ndarray) -> np.ndarray:
    """(N, h, w) descriptors -> float32 (N, F): the magnitudes of each one's 2-D Fourier transform (less
    its mean, so without the constant term), centred and scaled to unit length. A shift by a pixel
    changes them only through the edge it moves in or out, brightness and contrast not at all: near
    copies of any of the nine shifts stay near one another."""
    import torch

    out = None
    for s in range(0, len(d), CHUNK):
        x = torch.from_numpy(np.ascontiguousarray(d[s:s + CHUNK], np.float32))
        x = x - x.mean((1, 2), keepdim=True)
        m = torch.fft.rfft2(x).abs().flatten(1)[:, 1:]
        m = m - m.mean(1, keepdim=True)
        m = m / m.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if out is None:
            out = np.empty((len(d), m.shape[1]), np.float32)
        out[s:s + len(m)] = m.numpy()
    return out


def scaled_candidates(query: np.ndarray, base: np.ndarray, k: int = SCALED_CANDIDATES, *,
                      exclude_self: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (query rows, base rows), distinct and sorted, for :func:`copy_similarity`.

    The :func:`spectra` of the base, projected on their first ``SCALED_DIM`` principal components
    (fitted on ``SCALED_SAMPLE`` base rows) and normalised, go into an inverted-file index
    (:class:`audit.neighbors.ClusteredIndex`, :func:`audit.neighbors.ivf_lists` lists, ``SCALED_NPROBE``
    probed per query); each query, projected alike, gets its ``k`` nearest by cosine.
    ``exclude_self``: query i is base i; (i, i) is dropped and every pair is returned both ways."""
    import torch

    from audit.neighbors import ClusteredIndex, ivf_lists, normalize

    rng = np.random.default_rng(seed)
    sample = torch.from_numpy(spectra(base[np.sort(rng.choice(len(base), min(len(base), SCALED_SAMPLE),
                                                           replace=False))])).double()
    centre = sample.mean(0)
    sample = sample - centre
    _, vecs = torch.linalg.eigh(sample.T @ sample)  # ascending: the last columns are the first components
    proj = np.ascontiguousarray(vecs[:, -SCALED_DIM:].flip(1).float().numpy())
    centre = centre.float().numpy()

    def project(d):  # centred as the components were fitted (else the spectra's common part dominates)
        out = np.empty((len(d), proj.shape[1]), np.float32)
        for s in range(0, len(d), CHUNK):
            out[s:s + CHUNK] = (spectra(d[s:s + CHUNK]) - centre) @ proj
        return normalize(out)

    pb = project(base)
    index = ClusteredIndex(pb, ivf_lists(len(base)), seed=seed)
    kc = min(k + int(exclude_self), len(base))
    _, bi = index.search(pb if exclude_self else project(query), kc, SCALED_NPROBE)
    del index, pb
    qi = np.repeat(np.arange(len(query), dtype=np.int64), kc)
    bi = bi.ravel()
    keep = bi >= 0
    if exclude_self:
        keep &= qi != bi
    qi, bi = qi[keep], bi[keep]
    if exclude_self:
        qi, bi = np.r_[qi, bi], np.r_[bi, qi]
    order = np.lexsort((bi, qi))
    qi, bi = qi[order], bi[order]
    first = np.r_[True, (qi[1:] != qi[:-1]) | (bi[1:] != bi[:-1])] if len(qi) else np.zeros(0, bool)
    return qi[first], bi[first]


def _window_sums(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: its mean (N,), and per shift of :data:`SHIFTS` the mean and the centred norm of the
    row's window that meets the other image shifted by (dy, dx), on the row minus its mean (N, 9);
    float64. A window leaves out at most one edge row and one edge column, so its sums are the
    image's less those edges'."""
    h, w = d.shape[1:]
    mean = np.empty(len(d))
    m1, n1 = np.empty((len(d), len(SHIFTS))), np.empty((len(d), len(SHIFTS)))
    for s in range(0, len(d), CHUNK):
        block = d[s:s + CHUNK].astype(np.float64)
        b = len(block)
        mean[s:s + b] = block.reshape(b, -1).mean(1)
        block -= mean[s:s + b, None, None]
        for x, out in ((block, m1), (block * block, n1)):
            total = x.reshape(b, -1).sum(1)
            row = {1: x[:, 0, :].sum(1), -1: x[:, -1, :].sum(1)}  # the row a shift of dy leaves out
            col = {1: x[:, :, 0].sum(1), -1: x[:, :, -1].sum(1)}
            corner = {(dy, dx): x[:, 0 if dy == 1 else -1, 0 if dx == 1 else -1] for dy in (-1, 1) for dx in (-1, 1)}
            for j, (dy, dx) in enumerate(SHIFTS):
                t = total - (row[dy] if dy else 0.0) - (col[dx] if dx else 0.0)
                if dy and dx:
                    t = t + corner[(dy, dx)]
                out[s:s + b, j] = t
    sizes = np.array([(h - abs(dy)) * (w - abs(dx)) for dy, dx in SHIFTS], np.float64)
    m1 /= sizes
    n1 = np.sqrt(np.maximum(n1 - sizes * m1 * m1, 0.0))
    return mean, m1, n1


def copy_similarity(query: np.ndarray, base: np.ndarray, qi: np.ndarray, bi: np.ndarray,
                    chunk: int = 4096) -> np.ndarray:
    """The copy similarity of each pair (``query[qi]``, ``base[bi]``): the largest Pearson correlation
    over the nine shifts, each on the overlapping window (as :func:`copy_candidates` ranks them; 0 for
    a constant window), float32 (M,). Each shift's window means and norms are computed once per row;
    the nine cross products of a pair are one grouped convolution of the zero-padded query with it."""
    import torch
    import torch.nn.functional as F

    if not len(qi):
        return np.zeros(0, np.float32)
    h, w = base.shape[1:]
    cq, mq, nq = _window_sums(query)
    cb, mb, nb = (cq, mq, nq) if base is query else _window_sums(base)
    back = [SHIFTS.index((-dy, -dx)) for dy, dx in SHIFTS]  # the base's window of each shift
    sizes = np.array([(h - abs(dy)) * (w - abs(dx)) for dy, dx in SHIFTS], np.float64)
    tq, tb = torch.from_numpy(np.ascontiguousarray(query, np.float32)), torch.from_numpy(np.ascontiguousarray(base, np.float32))
    cq_t, cb_t = torch.from_numpy(cq.astype(np.float32)), torch.from_numpy(cb.astype(np.float32))
    out = np.empty(len(qi), np.float32)
    with torch.no_grad():
        for s in range(0, len(qi), chunk):
            sl = slice(s, s + chunk)
            iq, ib = torch.from_numpy(qi[sl]), torch.from_numpy(bi[sl])
            a = tq[iq] - cq_t[iq][:, None, None]
            b = tb[ib] - cb_t[ib][:, None, None]
            p = len(a)
            # out[i, j] = sum over (y, x) of a[y + i - 1, x + j - 1] * b[y, x]: shift (dy, dx) = (i - 1, j - 1)
            dot = F.conv2d(F.pad(a, (1, 1, 1, 1)).view(1, p, h + 2, w + 2), b.view(p, 1, h, w),
                           groups=p).view(p, len(SHIFTS)).double().numpy()
            ma, na = mq[qi[sl]], nq[qi[sl]]
            mb_, nb_ = mb[bi[sl]][:, back], nb[bi[sl]][:, back]
            ok = (na > 1e-3) & (nb_ > 1e-3)
            r = np.where(ok, (dot - sizes * ma * mb_) / np.maximum(na * nb_, 1e-12), 0.0)
            out[sl] = np.minimum(r.max(1), 1.0)  # a correlation; rounding must not pass for an exact copy (2.0)
    return out


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
                device: str | None = "cpu", method: str = "auto") -> dict[str, np.ndarray]:
    """Copy groups among the training rows and test rows with a copy in training.

    images: uint8 (N, C, H, W) of both splits; split (N,) ``train``/``test``. Returns arrays over all N
    rows: ``near_duplicate_score`` (train: the best copy similarity to another training row, 1.0 for an
    exact copy; NaN on test), ``is_near_duplicate_issue``, ``duplicate_group`` (int, -1 when none;
    groups numbered by their first row), ``duplicate_exact`` (the row has an exact copy in its group),
    ``leak_score`` (test: the best copy similarity to a training row; NaN on train),
    ``is_leak_issue``, ``leak_partner`` (the dataset row of that training image, -1 when none),
    ``leak_exact`` and ``content_hash`` (each row's ``S16`` pixel digest, :func:`content_hashes`).
    ``method``: how candidates are searched (:func:`copy_candidates`; ``auto``: exact unless large).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    split = np.asarray(split).astype(str)
    n, t = len(split), config.near_duplicate_similarity
    tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    hashes = content_hashes(images)
    d_tr = grey_descriptors(images, config.descriptor_side, rows=tr)
    # training rows against themselves
    qi, bi, sim = copy_candidates(d_tr, d_tr, config.copy_neighbors, exclude_self=True, device=device, method=method)
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
    h, w = d_tr.shape[1:]
    searches = {"copy_search_train": copy_method(len(tr), len(tr), h, w) if method == "auto" else method,
                "copy_search_test": copy_method(len(te), len(tr), h, w) if method == "auto" else method}
    out.update({k: np.array(v) for k, v in searches.items()})  # which search ran (the manifest says so)
    out["near_duplicate_score"][tr] = best
    out["is_near_duplicate_issue"][tr] = in_group
    out["duplicate_group"][tr] = group
    out["duplicate_exact"][tr] = has_exact
    # test rows against the training rows
    qi, bi, sim = copy_candidates(grey_descriptors(images, config.descriptor_side, rows=te), d_tr,
                                  config.copy_neighbors, device=device, method=method)
    del d_tr
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
