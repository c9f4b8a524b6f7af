"""Neighbour search: exact against brute force (ties to the smaller index, any chunking), FAISS
agreement, k larger than the base, IVF recall, threads."""

import numpy as np
import pytest
import torch

from audit.neighbors import (
    IVF_MIN_BASE,
    IVF_MIN_PAIRS,
    ClusteredIndex,
    TorchTopK,
    choose_method,
    grouped_topk,
    ivf_lists,
    knn,
    normalize,
    recall_at_k,
    resolve_threads,
    search,
    thread_limit,
)


def brute_force(base, queries, k):
    """Reference in float64 numpy: similarity descending, ties by index ascending."""
    nb = base / np.linalg.norm(base, axis=1, keepdims=True)
    nq = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    s = nq.astype(np.float64) @ nb.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(np.arange(len(base)), s.shape), -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), order


def tied_data(n_base, n_query, seed=0):
    """Unit vectors with four entries of ±0.5: every dot product is exact in float32, and many tie."""
    rng = np.random.default_rng(seed)

    def draw(n):
        x = np.zeros((n, 8), np.float32)
        for row in x:
            row[rng.choice(8, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
        return x
    return draw(n_base), draw(n_query)


@pytest.mark.parametrize("n_base,k,chunks", [
    (100, 20, (None, None, 32)), (100, 20, (7, 13, 32)), (100, 20, (1, 1, 32)), (100, 20, (30, 100, 4)),
    (2000, 5, (None, None, 32)), (2000, 5, (17, 999, 32)), (2000, 5, (64, None, 7)), (2000, 5, (64, None, 0)),
])
def test_exact_with_ties_matches_brute_force_for_any_chunking(n_base, k, chunks):
    base, queries = tied_data(n_base, 30)
    qc, bc, group = chunks
    sims, idx = TorchTopK(device="cpu", query_chunk=qc, base_chunk=bc, group=group).search(base, queries, k)
    ref_s, ref_i = brute_force(base, queries, k + 1)
    assert (idx == ref_i[:, :k]).all()
    assert (sims == ref_s[:, :k].astype(np.float32)).all()
    # the data really is tied at the boundary for most rows (else the test proves little)
    assert (ref_s[:, k - 1] == ref_s[:, k]).sum() >= 10


def test_duplicated_rows_tie_in_float32_and_any_chunking_agrees():
    """Real-valued scores where copies of training rows tie at the k-th place: ties must be settled on
    the very values the block compared (recomputing a row by another kernel rounds differently, and
    an earlier version then returned fewer than k neighbours and failed)."""
    rng = np.random.default_rng(0)
    base = np.repeat(rng.normal(size=(700, 64)).astype(np.float32), 3, axis=0)
    base = base[rng.permutation(len(base))]
    queries = rng.normal(size=(200, 64)).astype(np.float32)
    ref_s, ref_i = brute_force(base, queries, 11)
    assert (ref_s[:, 9] == ref_s[:, 10]).sum() >= 50  # many rows tied at the boundary
    runs = [TorchTopK(device="cpu", query_chunk=qc, base_chunk=bc, group=g).search(base, queries, 10)
            for qc, bc, g in ((None, None, 32), (33, 500, 32), (7, 2100, 0))]
    sims, idx = runs[0]
    for s2, i2 in runs[1:]:
        # the same neighbours for any chunking (BLAS rounds by block shape: values agree to float32 rounding)
        assert (i2 == idx).all() and np.abs(s2 - sims).max() < 1e-6
    assert np.abs(sims - ref_s[:, :10]).max() < 1e-5
    # float32 rounds the copies' similarities apart in the last bit now and then; the order is still
    # similarity descending, then index ascending, and differs from float64's on a few rows only
    assert ((np.diff(sims, axis=1) < 0) | ((np.diff(sims, axis=1) == 0) & (np.diff(idx, axis=1) > 0))).all()
    assert (idx != ref_i[:, :10]).any(1).sum() <= 5


def test_grouped_topk_values_equal_plain_topk():
    rng = np.random.default_rng(3)
    scores = torch.from_numpy(rng.integers(0, 50, size=(40, 1001)).astype(np.float32))  # many ties
    for group in (2, 8, 32, 64):
        v, i = grouped_topk(scores, 11, group)
        assert torch.equal(v, scores.topk(11, dim=1)[0])
        assert torch.equal(torch.gather(scores, 1, i), v)  # indices point at those values


def test_exact_on_random_data_and_faiss_agrees():
    rng = np.random.default_rng(1)
    base, queries = rng.normal(size=(1001, 24)).astype(np.float32), rng.normal(size=(77, 24)).astype(np.float32)
    ref_s, ref_i = brute_force(base, queries, 9)
    for backend in ("torch", "faiss"):
        sims, idx = knn(base, queries, 9, backend=backend)
        assert sims.dtype == np.float32 and idx.dtype == np.int64
        assert (idx == ref_i).all() and np.abs(sims - ref_s).max() < 1e-5
    # blocked with chunks that divide neither size: the same neighbours
    a = TorchTopK(device="cpu", query_chunk=10, base_chunk=333).search(base, queries, 9)
    b = TorchTopK(device="cpu").search(base, queries, 9)
    assert (a[1] == b[1]).all() and np.abs(a[0] - b[0]).max() < 1e-6
    # query chunks spread over 3 worker threads: the same bits as one thread, and torch's setting kept
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        c = TorchTopK(device="cpu", query_chunk=10, base_chunk=333).search(base, queries, 9)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert (c[1] == a[1]).all() and (c[0] == a[0]).all()


def test_k_larger_than_base_and_empty_inputs():
    base, queries = tied_data(5, 4)
    sims, idx = knn(base, queries, 10, device="cpu")
    ref_s, ref_i = brute_force(base, queries, 5)
    assert idx.shape == (4, 5) and (idx == ref_i).all() and (sims == ref_s.astype(np.float32)).all()
    assert knn(base, queries[:0], 3)[1].shape == (0, 3)
    assert knn(base, queries, 0)[0].shape == (4, 0)
    s, i, info = search(base, queries, 10)
    assert (s == sims).all() and i.shape == (4, 5) and info["method"] == "exact" and info["recall"] == 1.0 and info["k"] == 5


def test_bad_input_is_named():
    base, queries = tied_data(10, 3)
    base[4, 2] = np.nan
    with pytest.raises(ValueError, match=r"training embeddings: 1 rows hold NaN or inf \(first row 4\)"):
        knn(base, queries, 3)
    with pytest.raises(ValueError, match="unknown neighbour backend 'annoy'"):
        knn(base, queries, 3, backend="annoy")
    with pytest.raises(ValueError, match="unknown neighbour method 'hnsw'"):
        search(base, queries, 3, method="hnsw")


def test_ivf_recall_on_clustered_data():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(100, 32)).astype(np.float32)
    base = centers[rng.integers(100, size=20000)] + 0.3 * rng.normal(size=(20000, 32)).astype(np.float32)
    queries = centers[rng.integers(100, size=1000)] + 0.3 * rng.normal(size=(1000, 32)).astype(np.float32)
    sims, idx, info = search(base, queries, 10, method="ivf", threads=1)
    assert info["method"] == "ivf" and info["recall"] >= 0.95 and info["recall_queries"] == 256
    assert info["nlist"] == 512 and 1 <= info["nprobe"] <= 512
    exact_s, _ = knn(base, queries, 10)
    true_recall = recall_at_k(sims, exact_s[:, -1]).mean()  # on every query, not only the sample
    assert true_recall >= 0.95
    assert (np.diff(sims, axis=1) <= 0).all() and (idx >= 0).all()
    again = search(base, queries, 10, method="ivf", threads=1)
    assert (again[1] == idx).all() and again[2]["nprobe"] == info["nprobe"]  # reproducible


def test_clustered_index_probing_every_list_is_exact_search_with_ties():
    """At nprobe = nlist every row is scored: the same neighbours and bits as brute force, equal
    similarities ordered by the smaller index, whatever the lists and however the queries spread."""
    base, queries = tied_data(3000, 120, seed=4)
    ref_s, ref_i = brute_force(base, queries, 13)
    assert (ref_s[:, 11] == ref_s[:, 12]).sum() >= 30  # tied at the k-th place on many rows
    for nlist in (1, 7, 40):
        index = ClusteredIndex(base, nlist, seed=1)
        assert index.nlist == nlist and index.starts[-1] == len(base)
        sims, idx = index.search(queries, 12, nlist)
        assert sims.dtype == np.float32 and idx.dtype == np.int64
        assert (idx == ref_i[:, :12]).all() and (sims == ref_s[:, :12].astype(np.float32)).all()
    assert index.search(queries[:0], 5, 3)[1].shape == (0, 5)
    # queries in chunks of a few probes each: the same answer
    few = index.search(queries, 12, 5, probe_rows=37)
    whole = index.search(queries, 12, 5)
    assert (few[0] == whole[0]).all() and (few[1] == whole[1]).all()


def test_clustered_index_fills_short_rows_with_minus_one():
    """Fewer probed rows than k: the probed list's rows, exact and in order, then -1 with -inf."""
    rng = np.random.default_rng(5)
    base = normalize(rng.normal(size=(200, 8)).astype(np.float32))
    queries = normalize(rng.normal(size=(30, 8)).astype(np.float32))
    index = ClusteredIndex(base, 10, seed=0)
    sims, idx = index.search(queries, 60, 1)
    lists = index.probes(queries, 1)[:, 0]
    for q in range(len(queries)):
        rows = np.sort(index.order[index.starts[lists[q]]:index.starts[lists[q] + 1]])
        assert 0 < len(rows) < 60
        ref_s, ref_i = brute_force(base[rows], queries[q:q + 1], len(rows))
        assert (idx[q, :len(rows)] == rows[ref_i[0]]).all()
        assert np.abs(sims[q, :len(rows)] - ref_s[0]).max() < 1e-6
        assert (idx[q, len(rows):] == -1).all() and np.isneginf(sims[q, len(rows):]).all()
    # every row in exactly one list, lists ascending by row within
    assert (np.sort(index.order) == np.arange(len(base))).all()
    for c in range(index.nlist):
        assert (np.diff(index.order[index.starts[c]:index.starts[c + 1]]) > 0).all()


def test_ivf_search_reported_recall_is_the_recall_against_exact():
    """The recall ``search`` reports is the recall of its returned neighbours on its held-out sample
    queries (half of recall_queries, drawn by the seed), recomputed here against exact search; on every
    query it is at the target too."""
    rng = np.random.default_rng(6)
    centers = rng.normal(size=(60, 24)).astype(np.float32)
    base = centers[rng.integers(60, size=12000)] + 0.35 * rng.normal(size=(12000, 24)).astype(np.float32)
    queries = centers[rng.integers(60, size=3000)] + 0.35 * rng.normal(size=(3000, 24)).astype(np.float32)
    sims, idx, info = search(base, queries, 10, method="ivf", threads=1, recall_queries=400, seed=3)
    assert info["nlist"] == ivf_lists(12000) == 307 and info["exact_rows"] == 0 and info["recall_queries"] == 200
    assert info["nprobe"] < info["nlist"]  # really approximate
    exact_s, exact_i = knn(base, queries, 10)
    check = np.random.default_rng(3).permutation(len(queries))[:400][200:]
    mine = recall_at_k(sims[check], exact_s[check, -1]).mean()
    assert info["recall"] >= 0.95 and abs(info["recall"] - mine) < 1e-12
    assert recall_at_k(sims, exact_s[:, -1]).mean() >= 0.95
    # what IVF found is exact where found: the true similarity of each returned index, best first
    true = np.einsum("qd,qkd->qk", normalize(queries), normalize(base)[idx])
    assert np.abs(true - sims).max() < 1e-5 and (np.diff(sims, axis=1) <= 0).all()
    assert (idx == exact_i).all(1).mean() >= 0.8


def test_auto_method_threshold():
    assert choose_method(60000, 10000) == "exact"
    assert choose_method(IVF_MIN_BASE, IVF_MIN_PAIRS // IVF_MIN_BASE + 1) == "ivf"
    assert choose_method(IVF_MIN_BASE - 1, 10**9) == "exact"


def test_threads_are_capped_and_restored():
    before = torch.get_num_threads()
    cores = len(__import__("os").sched_getaffinity(0))
    assert resolve_threads(10_000) == cores and resolve_threads(1) == 1
    with pytest.raises(ValueError, match="threads must be >= 1"):
        resolve_threads(0)
    with thread_limit(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    base, queries = tied_data(300, 50)
    one = knn(base, queries, 15, threads=1)
    two = knn(base, queries, 15, threads=2)
    assert (one[0] == two[0]).all() and (one[1] == two[1]).all()
    assert torch.get_num_threads() == before
