"""Pairing at scale: 60,000 training × 10,000 test embeddings of dimension 256, k = 50.

    OMP_NUM_THREADS=2 python benchmarks/pairs_scale.py [--train 60000] [--test 10000] [--dim 256] [--k 50]
        [--threads 2] [--skip faiss,ivf,baseline,rerank]

Prints one JSON object. Each timing has a wall-clock figure and a CPU-time figure (the process's
user+system seconds): on a machine other jobs are using, wall time measures the contention, and
CPU time / threads is what the same code takes on idle cores (for code that keeps every thread busy).

- ``exact``: :func:`audit.neighbors.knn`, backend ``torch`` (blocked matmul + top-k, ties to the
  smaller index), the default.
- ``matmul_only``: the same blocks' matrix products, chunks and threads with no top-k (what exact
  search cannot beat).
- ``baseline``: a plain torch ``(q @ base.T).topk(k)`` over query chunks of 1,024 rows.
- ``faiss_flat``: faiss IndexFlatIP (the previous default).
- ``ivf``: :func:`audit.neighbors.search` with ``method="ivf"`` (:class:`audit.neighbors.ClusteredIndex`,
  nprobe tuned to recall ≥ 0.95), its recall on its own held-out sample queries and on every query
  against ``exact``.
- ``floor``: 2·N·M·d flops divided by the peak matmul rate measured here (best of 5 square 2048³
  float32 products with the same threads), i.e. the time of the products alone at full speed;
  ``ratio_to_floor`` = exact time / floor.
- ``tracin_rerank``: the closed-form TracIn re-ranking of every candidate for one checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np
import torch

from audit.neighbors import TorchTopK, knn, recall_at_k, search, thread_limit


def timed(fn):
    """(result, {"wall_s", "cpu_s"}) of one call."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, {"wall_s": round(time.perf_counter() - w, 2), "cpu_s": round(time.process_time() - c, 2)}


def peak_gflops(reps: int = 5, n: int = 2048) -> dict:
    """Best of ``reps`` float32 n³ products: GFLOP/s by wall clock and per CPU-second."""
    a = torch.randn(n, n)
    a @ a  # warm-up
    best_w = best_c = float("inf")
    for _ in range(reps):
        _, t = timed(lambda: a @ a)
        best_w, best_c = min(best_w, t["wall_s"] or 1e-9), min(best_c, t["cpu_s"] or 1e-9)
    return {"wall": 2 * n**3 / best_w / 1e9, "per_cpu_second": 2 * n**3 / best_c / 1e9}


class MatmulOnly(TorchTopK):
    """The exact search's blocks, threads and chunks, with the top-k replaced by taking the first k columns."""

    def _block_topk(self, scores, k):
        k = min(k, scores.shape[1])
        return scores[:, :k].clone(), torch.arange(k).expand(len(scores), k).clone()


def baseline(base, queries, k, chunk=1024):
    b, q = torch.from_numpy(base), torch.from_numpy(queries)
    return [(q[s:s + chunk] @ b.T).topk(k, dim=1) for s in range(0, len(q), chunk)]


def synthetic(args):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(args.classes * 20, args.dim)).astype(np.float32)

    def draw(n):
        return (centers[rng.integers(len(centers), size=n)] + 0.5 * rng.normal(size=(n, args.dim))).astype(np.float32)
    tr, te = draw(args.train), draw(args.test)
    return tr / np.linalg.norm(tr, axis=1, keepdims=True), te / np.linalg.norm(te, axis=1, keepdims=True)


def rerank(args, tr, te, idx):
    from audit.signals.influence import pair_products

    rng = np.random.default_rng(1)
    g_tr = rng.normal(size=(args.train, args.classes)).astype(np.float32)
    g_te = rng.normal(size=(args.test, args.classes)).astype(np.float32)
    return np.argsort(-pair_products(g_te, te, g_tr, tr, idx), axis=1)[:, :5]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=60000)
    ap.add_argument("--test", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="default: torch's (OMP_NUM_THREADS)")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out: baseline,faiss,ivf,rerank")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    tr, te = synthetic(args)
    out = {"train": args.train, "test": args.test, "dim": args.dim, "k": args.k,
           "load_avg_1min": round(os.getloadavg()[0], 2), "cores": len(os.sched_getaffinity(0))}
    with thread_limit(args.threads) as n:
        out["threads"] = n
        peak = peak_gflops()
        flops = 2.0 * args.train * args.test * args.dim
        out["peak_gflops"] = {key: round(v, 1) for key, v in peak.items()}
        out["floor"] = {"wall_s": round(flops / peak["wall"] / 1e9, 2), "cpu_s": round(flops / peak["per_cpu_second"] / 1e9, 2)}
        (sims, idx), out["exact"] = timed(lambda: knn(tr, te, args.k, backend="torch", threads=n))
        out["ratio_to_floor"] = {key: round(out["exact"][key] / out["floor"][key], 2) for key in ("wall_s", "cpu_s")}
        _, out["matmul_only"] = timed(lambda: MatmulOnly(device="cpu").search(tr, te, args.k))
        if "baseline" not in skip:
            _, out["baseline"] = timed(lambda: baseline(tr, te, args.k))
        if "faiss" not in skip:
            (_, fidx), out["faiss_flat"] = timed(lambda: knn(tr, te, args.k, backend="faiss", threads=n))
            out["faiss_flat"]["same_indices"] = float((fidx == idx).mean())
        if "ivf" not in skip:
            (isims, _, info), out["ivf"] = timed(lambda: search(tr, te, args.k, method="ivf", threads=n))
            out["ivf"].update(info, recall_all_queries=round(float(recall_at_k(isims, sims[:, -1]).mean()), 4))
        if "rerank" not in skip:
            order, out["tracin_rerank_per_checkpoint"] = timed(lambda: rerank(args, tr, te, idx))
            out["checksum"] = float(order[:, 0].sum() % 997)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
