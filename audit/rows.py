"""Images by row, gathered batch by batch from where they lie (a memmap, an array), never all copied.

:class:`Rows` is a read-only, indexable list of images drawn from one or more source arrays: the
training rows of a memmapped dataset followed by the canaries, a fold's subset of them, the test rows.
Indexing it with an int, a slice, an integer array or a torch tensor returns a new uint8 numpy array
of just those images; :meth:`Rows.subset` returns another view, without reading any image. A view
costs 9 bytes per row (which source, which row), so peak memory grows with the batch size and the
per-example outputs, not with the images.
"""

from __future__ import annotations

import numpy as np


class Rows:
    """Rows ``rows[i]`` of ``sources[part[i]]``, for i in range(len(self))."""

    def __init__(self, sources: list, part: np.ndarray, row: np.ndarray):
        self.sources, self.part, self.row = list(sources), np.asarray(part, np.int8), np.asarray(row, np.int64)
        first = self.sources[0]
        self.shape = (len(self.row), *first.shape[1:])
        self.dtype = first.dtype
        self.ndim = len(self.shape)

    @classmethod
    def of(cls, array, rows: np.ndarray | None = None) -> "Rows":
        """``array[rows]`` (all rows when ``rows`` is None) as a view."""
        rows = np.arange(len(array)) if rows is None else np.asarray(rows, np.int64)
        return cls([array], np.zeros(len(rows), np.int8), rows)

    def concat(self, other: "Rows") -> "Rows":
        off = len(self.sources)
        return Rows(self.sources + other.sources, np.r_[self.part, other.part + off].astype(np.int8),
                    np.r_[self.row, other.row])

    def __len__(self) -> int:
        return len(self.row)

    def subset(self, idx) -> "Rows":
        idx = _as_index(idx, len(self))
        return Rows(self.sources, self.part[idx], self.row[idx])

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        idx = _as_index(key, len(self))
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        part, row = self.part[idx], self.row[idx]
        for p, src in enumerate(self.sources):
            sel = np.flatnonzero(part == p)
            if len(sel):
                r = row[sel]
                order = np.argsort(r, kind="stable")  # read the source in file order
                out[sel[order]] = src[r[order]]
        return out

    def __array__(self, dtype=None, copy=None):
        a = self[slice(None)]
        return a if dtype is None else a.astype(dtype)


def _as_index(key, n: int) -> np.ndarray:
    if isinstance(key, slice):
        return np.arange(n)[key]
    if hasattr(key, "detach"):  # a torch tensor
        key = key.detach().cpu().numpy()
    key = np.asarray(key)
    if key.dtype == bool:
        return np.flatnonzero(key)
    return key.astype(np.int64)


def subset(images, idx):
    """``images`` restricted to rows ``idx``: a view for :class:`Rows`, an index for anything else."""
    return images.subset(idx) if isinstance(images, Rows) else images[idx]


def take(images, key):
    """``images[key]`` as a torch uint8 tensor, for any of: torch tensor, numpy array, memmap, Rows."""
    import torch

    if isinstance(images, torch.Tensor):
        return images[key]
    if not isinstance(key, slice) and hasattr(key, "detach"):
        key = key.detach().cpu().numpy()
    return torch.from_numpy(np.ascontiguousarray(images[key]))
