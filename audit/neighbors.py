"""Nearest neighbours over L2-normalised embeddings (cosine similarity = inner product).

Three searches behind one signature:

- ``torch`` (the default): exact, a blocked matrix product with a top-k per block, on the CPU or a
  GPU. Its cost is the 2·N·M·d flops of the product plus one read of each score block, so it runs
  close to the machine's matmul speed (see ``benchmarks/pairs_scale.py``). Equal similarities are
  ordered by training index, smaller first, so a run is reproducible; chunk sizes change only how the
  BLAS rounds the last bit of a similarity.
- ``faiss``: exact, faiss ``IndexFlatIP`` (faiss-gpu where built with GPUs); kept as an independent
  check and for faiss-gpu.
- IVF (:func:`search` with ``method="ivf"``, chosen by ``method="auto"`` past
  :data:`IVF_MIN_PAIRS`): an inverted-file search (:class:`ClusteredIndex`: faiss k-means lists,
  each query probing its ``nprobe`` nearest, scored a list at a time by one matrix product), with
  ``nprobe`` raised until the recall against exact search, measured on held-out sample queries,
  reaches the target; the recall is returned. Unlike faiss ``IndexIVFFlat`` (which probes the same
  lists query by query) it orders equal similarities by the smaller index, and probing every list is
  exact search. It is not faster: 100,000 × 100,000 rows of d = 64, k = 11, 447 lists, nprobe = 16,
  one thread: 10.5 s here against IndexIVFFlat's 7.4 s.

Threads: every search runs with ``threads`` (default ``torch.get_num_threads()``, which follows
``OMP_NUM_THREADS``) capped at the cores this process may use, and restores the previous setting.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

# Past this many (training × query) pairs, method="auto" uses IVF instead of exact search. Below it,
# exact search costs at most 2·1e10·256 flops at d = 256, about 30 s on 2 cores at the 86 GFLOP/s per
# core measured here (benchmarks/pairs_scale.py), and exact neighbours are worth that. Past it, IVF's
# k-means (12,800·N·d flops, see ivf_search) and its probes cost a fraction of exact search.
IVF_MIN_PAIRS = 10_000_000_000
# The smallest base worth clustering: IVF needs >= 39 points per list and sqrt-many lists.
IVF_MIN_BASE = 50_000
# Bytes of one block of scores (query chunk × base chunk, float32): large enough for an efficient
# matrix product, small enough not to hold the whole Q×N matrix (2.4 GB at 10k × 60k).
SCORE_BLOCK_BYTES = 64 * 2**20
MAX_BASE_CHUNK = 1 << 20
# Columns per group in grouped_topk (about sqrt(N / k) balances its two top-k passes at N = 60,000).
TOPK_GROUP = 32


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def resolve_threads(threads: int | None = None) -> int:
    """``threads`` or torch's current setting, never more than the cores this process may run on."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = torch.get_num_threads() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return max(1, min(n, cores))


@contextmanager
def thread_limit(threads: int | None = None):
    """Run torch (and faiss, when imported) with :func:`resolve_threads` threads; restore afterwards."""
    import sys

    import torch

    n, before = resolve_threads(threads), torch.get_num_threads()
    faiss = sys.modules.get("faiss")
    faiss_before = faiss.omp_get_max_threads() if faiss is not None else None
    torch.set_num_threads(n)
    if faiss is not None:
        faiss.omp_set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
        if faiss is not None:
            faiss.omp_set_num_threads(faiss_before)


def _check_finite(name: str, x: np.ndarray) -> None:
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} embeddings: {int(bad.sum())} rows hold NaN or inf (first row {int(np.flatnonzero(bad)[0])})")


def sort_ties_by_index(sims, idx):
    """Order each row by similarity descending, equal similarities by index ascending (torch tensors)."""
    import torch

    idx, perm = torch.sort(idx, dim=1)
    sims = torch.gather(sims, 1, perm)
    sims, perm = torch.sort(sims, dim=1, descending=True, stable=True)
    return sims, torch.gather(idx, 1, perm)


def grouped_topk(scores, kk: int, group: int = 32):
    """Exact ``scores.topk(kk, dim=1)`` values, read mostly through the maxima of column groups.

    The top kk elements of a row lie in the kk groups (of ``group`` columns) with the largest maxima:
    every element above the kk-th value lies in a group whose maximum is above it, and each chosen
    group holds at least one element at or above it. So a pass of group maxima (fast, vectorised), a
    top-kk over those, and a top-kk over kk·group gathered candidates (plus the columns that do not
    fill a group) give the same values as a top-kk over the whole row, at a fraction of its cost.
    """
    import torch

    r, c = scores.shape
    n_groups = c // group if group > 1 else 0
    if n_groups <= kk:
        return scores.topk(min(kk, c), dim=1)
    gmax = scores[:, :n_groups * group].view(r, n_groups, group).amax(2)
    top_groups = gmax.topk(kk, dim=1)[1]
    cols = (top_groups[:, :, None] * group + torch.arange(group, device=scores.device)).flatten(1)
    if c % group:
        cols = torch.cat([cols, torch.arange(n_groups * group, c, device=scores.device).expand(r, -1)], 1)
    v, j = torch.gather(scores, 1, cols).topk(kk, dim=1)
    return v, torch.gather(cols, 1, j)


class NeighborIndex(ABC):
    @abstractmethod
    def search(self, base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarity top-k: (similarities (Q, k) float32, indices (Q, k) int64), best first."""


class FaissFlat(NeighborIndex):
    """Exact inner-product search with faiss (IndexFlatIP); uses faiss-gpu when built with GPUs."""

    def search(self, base, queries, k):
        import faiss  # heavy optional import, only where it is needed

        base, queries = normalize(base), normalize(queries)
        index = faiss.IndexFlatIP(base.shape[1])
        if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:  # pragma: no cover - GPU only
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(base)
        sims, idx = index.search(queries, k)
        return sims.astype(np.float32), idx.astype(np.int64)


class TorchTopK(NeighborIndex):
    """Exact blocked matmul + top-k in torch (CPU or GPU), ties broken towards the smaller index.

    Queries go in chunks of ``query_chunk`` rows and the base in chunks of ``base_chunk`` rows, so a
    block of scores holds at most ``block_bytes`` (default :data:`SCORE_BLOCK_BYTES`). Each block gives
    its exact top k by (similarity descending, index ascending): a top k+1 by value, whose (k+1)-th
    value tells whether the k-th place is tied with an element left out; only such rows are redone
    from the block's own scores (the very values compared, so the choice is consistent), taking the
    tied elements of smallest index. The blocks' lists merge by the same order. On the CPU, query
    chunks go to ``torch.get_num_threads()`` worker threads that each run torch single-threaded:
    the same work as multi-threaded kernels without their barriers, which a busy machine makes costly.
    """

    def __init__(self, device: str | None = None, query_chunk: int | None = None, base_chunk: int | None = None,
                 block_bytes: int = SCORE_BLOCK_BYTES, group: int = TOPK_GROUP):
        import torch

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.query_chunk, self.base_chunk, self.block_bytes = query_chunk, base_chunk, block_bytes
        self.group = group

    def chunks(self, n_base: int, n_query: int) -> tuple[int, int]:
        bc = self.base_chunk or min(n_base, MAX_BASE_CHUNK)
        qc = self.query_chunk or int(np.clip(self.block_bytes // (4 * bc), 16, 4096))
        return max(1, min(qc, n_query)), max(1, min(bc, n_base))

    def search(self, base, queries, k):
        import torch

        base_t = torch.from_numpy(normalize(base)).to(self.device)
        q_all = torch.from_numpy(normalize(queries)).to(self.device)
        qc, bc = self.chunks(len(base_t), len(q_all))
        starts = range(0, len(q_all), qc)
        workers = min(torch.get_num_threads(), len(starts)) if self.device.type == "cpu" else 1
        buffers = {}

        def one(s):
            buf = buffers.get(threading.get_ident())
            if buf is None:  # one score buffer per worker, reused for all its chunks
                buf = buffers[threading.get_ident()] = torch.empty(qc * bc, dtype=torch.float32, device=self.device)
            return self._query_chunk(q_all[s:s + qc], base_t, k, bc, buf)

        with torch.no_grad():
            if workers == 1:
                parts = [one(s) for s in starts]
            else:  # one single-threaded worker per core: no fork-join barriers to wait at on a busy machine
                before = torch.get_num_threads()
                try:
                    with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as ex:
                        parts = list(ex.map(one, starts))
                finally:
                    torch.set_num_threads(before)
        return (torch.cat([p[0] for p in parts]).cpu().numpy(), torch.cat([p[1] for p in parts]).cpu().numpy())

    def _query_chunk(self, q, base_t, k, bc, buf):
        """Exact top-k of a chunk of queries, sorted, over base chunks of ``bc`` rows."""
        import torch

        best_v = best_i = None
        for b in range(0, len(base_t), bc):
            blk = base_t[b:b + bc]
            scores = torch.mm(q, blk.T, out=buf[:len(q) * len(blk)].view(len(q), len(blk)))
            v, i = self._block_topk(scores, k)
            if best_v is not None:
                v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i + b], 1)
            best_v, best_i = sort_ties_by_index(v, i)
            best_v, best_i = best_v[:, :k], best_i[:, :k]
        return best_v, best_i

    def _block_topk(self, scores, k):
        """Each row's top min(k, columns) by (value descending, column ascending), in no particular order."""
        import torch

        k = min(k, scores.shape[1])
        v, i = grouped_topk(scores, min(k + 1, scores.shape[1]), self.group)
        if v.shape[1] == k:
            return v, i
        tied_rows = torch.nonzero(v[:, k - 1] == v[:, k]).flatten()
        for part in tied_rows.split(64):  # all above the k-th value, then the tied of smallest index
            sub, kth = scores[part], v[part, k - 1:k]
            above, tied = sub > kth, sub == kth
            keep = above | (tied & (tied.cumsum(1, dtype=torch.int32) <= k - above.sum(1, keepdim=True)))
            cols = torch.nonzero(keep)[:, 1].view(len(part), k)
            i[part, :k], v[part, :k] = cols, torch.gather(sub, 1, cols)
        return v[:, :k], i[:, :k]


BACKENDS = {"faiss": FaissFlat, "torch": TorchTopK}


def _empty(n_query: int, k: int):
    return np.zeros((n_query, k), np.float32), np.zeros((n_query, k), np.int64)


def knn(base: np.ndarray, queries: np.ndarray, k: int, backend: str = "torch",
        threads: int | None = None, device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (≤ len(base)) cosine neighbours of each query among ``base``.

    Returns (similarities (Q, k) float32, indices (Q, k) int64), best first. ``device`` (torch
    backend): ``cpu`` or ``cuda``; default a GPU when there is one.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown neighbour backend {backend!r} (known: {', '.join(BACKENDS)})")
    k = max(0, min(int(k), len(base)))
    if k == 0 or len(queries) == 0:
        return _empty(len(queries), k)
    _check_finite("training", base)
    _check_finite("query", queries)
    if backend == "faiss":
        import faiss  # noqa: F401 - imported first so that thread_limit sets its OpenMP threads too
    with thread_limit(threads):
        index = TorchTopK(device=device) if backend == "torch" else BACKENDS[backend]()
        return index.search(base, queries, k)


def recall_at_k(approx_sims: np.ndarray, exact_kth: np.ndarray) -> np.ndarray:
    """Per query: the share of the approximate top-k as good as the exact k-th neighbour (ties count)."""
    k = approx_sims.shape[1]
    return np.minimum((approx_sims >= exact_kth[:, None] - 1e-6).sum(1), k) / k


def ivf_lists(n_base: int) -> int:
    """Inverted lists for ``n_base`` points: 4·sqrt(N) (faiss's guideline), at least 39 points each."""
    return int(max(1, min(4 * np.sqrt(n_base), n_base // 39)))


class ClusteredIndex:
    """An inverted-file index searched a list at a time, each list by one matrix product.

    ``base`` (N, d) float32 rows (normalised or not: scores are inner products) are split into
    ``nlist`` lists by faiss k-means (``niter`` iterations on 40 points per list, ``seed``) and each
    row joins the list of its largest-inner-product centroid. :meth:`search` probes, for each query,
    its ``nprobe`` largest-inner-product lists (as faiss ``IndexIVFFlat`` does), but goes list by list:
    all the queries that probe a list are scored against its rows by one matrix product, and each
    query's best k so far are merged with its top k there. Ties go to the smaller
    row index; with ``nprobe = nlist`` the result is exact search's. The index holds a copy of
    ``base`` sorted by list (``sorted``), ``order`` (the rows of each list, ascending) and ``starts``.

    On one thread the cost is about linear in the (query, list) pairs scored and their rows: at
    250,000 × 250,000 rows of d = 64, 2,000 lists and nprobe = 64 (3% of the rows scored), about
    90 s, most of it the per-list top-k (``benchmarks/issues_scale.py``).
    """

    def __init__(self, base: np.ndarray, nlist: int, *, seed: int = 0, niter: int = 10):
        import faiss
        import torch

        self.base = np.ascontiguousarray(base, np.float32)
        n, d = self.base.shape
        self.nlist = max(1, min(int(nlist), n))
        rng = np.random.default_rng(seed)
        # k-means on 40 points per list, 10 iterations: 800·nlist²·d flops (12,800·N·d at nlist = 4·sqrt(N)),
        # below exact search's 2·N·M·d once M > 6,400 (faiss's defaults, 256 points × 25 iterations, cost 16×)
        # spherical: unit-length centroids, rows assigned by inner product, as they are probed below
        km = faiss.Kmeans(d, self.nlist, niter=niter, seed=seed, verbose=False, spherical=True)
        km.cp.min_points_per_centroid = 1
        km.train(self.base[np.sort(rng.choice(n, min(n, 40 * self.nlist), replace=False))])
        self.centroids = torch.from_numpy(np.ascontiguousarray(km.centroids, np.float32))
        lists = self.probes(self.base, 1)[:, 0]
        self.order = np.argsort(lists, kind="stable")  # rows by list, ascending within each
        self.starts = np.searchsorted(lists[self.order], np.arange(self.nlist + 1))
        self.sorted = torch.from_numpy(self.base[self.order])  # each list's rows contiguous
        self.order_t = torch.from_numpy(self.order)
        del self.base

    def probes(self, x: np.ndarray, nprobe: int, chunk: int = 16384) -> np.ndarray:
        """The ``nprobe`` lists of each row of ``x`` (Q, nprobe): its largest-inner-product centroids."""
        import torch

        nprobe = max(1, min(int(nprobe), self.nlist))
        out = np.empty((len(x), nprobe), np.int64)
        for s in range(0, len(x), chunk):
            scores = torch.from_numpy(np.ascontiguousarray(x[s:s + chunk], np.float32)) @ self.centroids.T
            out[s:s + chunk] = scores.topk(nprobe, dim=1)[1].numpy()
        return out

    def search(self, queries: np.ndarray, k: int, nprobe: int, probe_rows: int = 1 << 23):
        """(similarities (Q, k) float32, indices (Q, k) int64, best first; -1 (similarity -inf) where
        fewer than k rows were probed).

        List by list, the queries probing it are scored against its rows and each one's best k so far
        merged with its top k there (by similarity, then the smaller row). Queries go in chunks of at
        most ``probe_rows`` (query, list) probes, so the probe tables stay small (1e6 queries × 512
        lists would be 4 GB each). (Keeping every list's top k and sorting them once at the end was
        tried: slower, the one large sort costing more than the merges, and 1 GB more at 100,000 rows.)"""
        queries = np.ascontiguousarray(queries, np.float32)
        nprobe = max(1, min(int(nprobe), self.nlist))
        chunk = max(1, probe_rows // nprobe)
        if len(queries) <= chunk:
            return self._search(queries, k, nprobe)
        parts = [self._search(queries[s:s + chunk], k, nprobe) for s in range(0, len(queries), chunk)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _search(self, queries: np.ndarray, k: int, nprobe: int):
        import torch

        q = torch.from_numpy(queries)
        best_v = torch.full((len(q), k), -float("inf"))
        best_i = torch.full((len(q), k), -1, dtype=torch.int64)
        if not len(q) or k == 0:
            return best_v.numpy(), best_i.numpy()
        probe = self.probes(queries, nprobe)
        flat = probe.ravel()
        by_list = np.argsort(flat, kind="stable")
        qrow = torch.from_numpy(by_list // nprobe)  # each query at most once per list, in ascending order
        qstarts = np.searchsorted(flat[by_list], np.arange(self.nlist + 1))
        del probe, flat, by_list
        topk = TorchTopK(device="cpu")
        with torch.no_grad():
            for c in np.flatnonzero(np.diff(qstarts)):
                a, b = int(self.starts[c]), int(self.starts[c + 1])
                if a == b:
                    continue
                r = qrow[qstarts[c]:qstarts[c + 1]]
                v, i = topk._block_topk(q[r] @ self.sorted[a:b].T, k)  # ties: the smaller column = row
                v, i = sort_ties_by_index(torch.cat([best_v[r], v], 1), torch.cat([best_i[r], self.order_t[a:b][i]], 1))
                best_v[r], best_i[r] = v[:, :k], i[:, :k]
        return best_v.numpy(), best_i.numpy()


def ivf_search(base, queries, k, recall_target=0.95, recall_queries=512, seed=0):
    """Approximate top-k with a :class:`ClusteredIndex`; nprobe doubles until recall on sample queries ≥ target.

    Half the sample queries choose nprobe, the other half measure the recall of the final search
    (so the recorded figure is not the one that was tuned). Rows the IVF left short are searched exactly.
    """
    import torch

    nb, nq = normalize(base), normalize(queries)
    rng = np.random.default_rng(seed)
    nlist = ivf_lists(len(nb))
    index = ClusteredIndex(nb, nlist, seed=seed)
    sample = rng.permutation(len(nq))[:recall_queries]
    tune, check = sample[:max(1, len(sample) // 2)], sample[len(sample) // 2:]
    exact_kth = TorchTopK(device="cpu").search(nb, nq[sample], k)[0][:, -1]
    kth_tune, kth_check = exact_kth[:len(tune)], exact_kth[len(sample) // 2:]
    nprobe = max(1, nlist // 64)
    while True:
        if nprobe < nlist and recall_at_k(index.search(nq[tune], k, nprobe)[0], kth_tune).mean() < recall_target:
            nprobe = min(nlist, 2 * nprobe)
            continue
        sims, idx = index.search(nq, k, nprobe)
        recall = float(recall_at_k(sims[check], kth_check).mean())
        if recall >= recall_target or nprobe == nlist:
            break
        nprobe = min(nlist, 2 * nprobe)
    short = np.flatnonzero((idx < 0).any(1))
    if len(short):
        sims[short], idx[short] = TorchTopK(device="cpu").search(nb, nq[short], k)
    sims, idx = sort_ties_by_index(torch.from_numpy(sims), torch.from_numpy(idx.astype(np.int64)))
    info = {"nlist": nlist, "nprobe": nprobe, "recall": recall, "recall_queries": len(check),
            "recall_target": recall_target, "exact_rows": len(short)}
    return sims.numpy(), idx.numpy(), info


def choose_method(n_base: int, n_query: int) -> str:
    """``ivf`` past :data:`IVF_MIN_PAIRS` pairs with a base of at least :data:`IVF_MIN_BASE`, else ``exact``."""
    return "ivf" if n_base >= IVF_MIN_BASE and n_base * n_query > IVF_MIN_PAIRS else "exact"


def search(base: np.ndarray, queries: np.ndarray, k: int, method: str = "auto", backend: str = "torch",
           threads: int | None = None, device: str | None = None, recall_target: float = 0.95,
           recall_queries: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """:func:`knn` plus a record for the manifest: ``{"method": "exact"|"ivf", "recall": ..., ...}``.

    ``method``: ``exact`` (``backend`` ``torch`` or ``faiss``), ``ivf`` (approximate, on the CPU;
    nprobe tuned on half of ``recall_queries`` sample queries, recall measured against exact search
    on the other half and returned), or ``auto`` (:func:`choose_method`). Exact search records recall 1.0.
    """
    import time

    if method not in ("auto", "exact", "ivf"):
        raise ValueError(f"unknown neighbour method {method!r} (known: auto, exact, ivf)")
    t0 = time.perf_counter()
    k = max(0, min(int(k), len(base)))
    chosen = choose_method(len(base), len(queries)) if method == "auto" else method
    info = {"method": chosen, "k": k, "n_base": len(base), "n_query": len(queries), "threads": resolve_threads(threads)}
    if chosen == "exact" or k == 0 or len(queries) == 0:
        sims, idx = knn(base, queries, k, backend=backend, threads=threads, device=device)
        info.update(method="exact", backend=backend, recall=1.0)
    else:
        import faiss  # noqa: F401 - imported first so that thread_limit sets its OpenMP threads too

        _check_finite("training", base)
        _check_finite("query", queries)
        with thread_limit(threads):
            sims, idx, extra = ivf_search(base, queries, k, recall_target, recall_queries, seed)
        info.update(backend="ivf-clustered", **extra)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    return sims, idx, info
