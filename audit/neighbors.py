"""Nearest neighbours over normalised embeddings: FAISS by default, a torch matmul top-k on GPU.

A small ABC and a registry so a GPU build of FAISS or another index slots in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


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
    """Chunked matmul + top-k in torch (fast on a GPU, exact)."""

    def __init__(self, device: str | None = None, chunk: int = 4096):
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.chunk = chunk

    def search(self, base, queries, k):
        import torch

        b = torch.from_numpy(normalize(base)).to(self.device)
        sims, idx = [], []
        for s in range(0, len(queries), self.chunk):
            q = torch.from_numpy(normalize(queries[s:s + self.chunk])).to(self.device)
            v, i = (q @ b.T).topk(k, dim=1)
            sims.append(v.cpu())
            idx.append(i.cpu())
        return torch.cat(sims).numpy(), torch.cat(idx).numpy().astype(np.int64)


BACKENDS = {"faiss": FaissFlat, "torch": TorchTopK}


def knn(base: np.ndarray, queries: np.ndarray, k: int, backend: str = "faiss") -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (≤ len(base)) cosine neighbours of each query among ``base``."""
    k = min(k, len(base))
    if k == 0 or len(queries) == 0:
        return np.zeros((len(queries), k), np.float32), np.zeros((len(queries), k), np.int64)
    return BACKENDS[backend]().search(base, queries, k)
