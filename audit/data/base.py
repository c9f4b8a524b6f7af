"""The one internal representation every stage reads: :class:`AuditDataset`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from audit.errors import AuditInputError

TRAIN, TEST = "train", "test"


@dataclass(frozen=True, eq=False)
class AuditDataset:
    """Images, labels and ids of both splits.

    Attributes:
        images: uint8 array (N, C, H, W); may be a read-only ``np.memmap`` for large folders.
        labels: int64 (N,) given labels in ``[0, K)``.
        split: array of ``"train"`` / ``"test"`` strings (N,).
        example_ids: stable string ids (N,), unique, identical across runs of the same data.
        index: int64 (N,) row in the source (npz row, torchvision index, manifest row, sorted file order).
        class_names: K class names.
        name: short dataset name (``digits``, ``mnist``, ...).
        spec: the ``--dataset`` spec this was loaded from.
        paths: optional source file per example (image folders and manifests), for the app.
        clean_labels: labels before injected noise, when the tool injected noise.
    """

    images: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    example_ids: np.ndarray
    index: np.ndarray
    class_names: tuple[str, ...]
    name: str
    spec: str
    paths: np.ndarray | None = None
    clean_labels: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.labels)
        problems = []
        if self.images.ndim != 4:
            problems.append(f"images must be N×C×H×W, got shape {tuple(self.images.shape)}")
        if self.images.dtype != np.uint8:
            problems.append(f"images must be uint8, got {self.images.dtype}")
        for nm in ("images", "split", "example_ids", "index"):
            if len(getattr(self, nm)) != n:
                problems.append(f"{nm} has {len(getattr(self, nm))} rows, labels has {n}")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            problems.append(
                f"labels must lie in [0, {len(self.class_names)}), found {self.labels.min()}..{self.labels.max()}"
            )
        if len(set(self.example_ids.tolist())) != n:
            problems.append("example_ids are not unique")
        if problems:
            raise AuditInputError(f"dataset {self.spec}: inconsistent arrays", problems)

    # -- convenience -----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def split_indices(self, which: str) -> np.ndarray:
        return np.flatnonzero(self.split == which)

    def fingerprint(self) -> str:
        """Content hash of images, labels and split (sampled for very large data): 16 hex chars."""
        h = hashlib.sha256()
        n = len(self.labels)
        rows = np.arange(n) if n <= 20000 else np.linspace(0, n - 1, 20000).astype(int)
        h.update(np.ascontiguousarray(self.images[rows]).tobytes())
        h.update(np.ascontiguousarray(self.labels).astype(np.int64).tobytes())
        h.update("|".join(self.split.tolist()).encode())
        h.update(str(self.images.shape).encode())
        return h.hexdigest()[:16]

    def with_labels(self, labels: np.ndarray, clean_labels: np.ndarray | None) -> "AuditDataset":
        """A copy with new given labels (used by noise injection)."""
        return AuditDataset(
            images=self.images,
            labels=np.asarray(labels, dtype=np.int64),
            split=self.split,
            example_ids=self.example_ids,
            index=self.index,
            class_names=self.class_names,
            name=self.name,
            spec=self.spec,
            paths=self.paths,
            clean_labels=clean_labels,
            extra=dict(self.extra),
        )

    def resized(self, size: int, chunk: int = 4096) -> "AuditDataset":
        """A copy with every image resized to ``size`` × ``size`` (``--image-size``): area-weighted
        (antialiased bilinear) when shrinking, bilinear when growing; uint8 as before. The source's
        fingerprint (``extra``) is kept; the copy's own fingerprint covers the resized pixels."""
        import torch
        import torch.nn.functional as F

        n, c, h, w = self.images.shape
        if (h, w) == (size, size):
            return self
        out = np.empty((n, c, size, size), np.uint8)
        for i in range(0, n, chunk):
            x = torch.from_numpy(np.ascontiguousarray(self.images[i:i + chunk])).float()
            y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=size < max(h, w))
            out[i:i + chunk] = y.round().clamp(0, 255).to(torch.uint8).numpy()
        extra = {**self.extra, "resized_from": [int(h), int(w)]}
        return AuditDataset(images=out, labels=self.labels, split=self.split, example_ids=self.example_ids,
                            index=self.index, class_names=self.class_names, name=self.name, spec=self.spec,
                            paths=self.paths, clean_labels=self.clean_labels, extra=extra)


def stratified_split(labels: np.ndarray, test_fraction: float = 0.25, seed: int = 0) -> np.ndarray:
    """Deterministic stratified train/test split: a string array of ``train``/``test`` (N,).

    Each class contributes round(test_fraction × its count) test examples (at least one when it has
    two or more), chosen by a seeded permutation, so the same data always splits the same way.
    """
    labels = np.asarray(labels)
    split = np.full(len(labels), TRAIN, dtype=object)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(test_fraction * len(idx)))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        else:
            n_test = 0
        split[idx[:n_test]] = TEST
    return split.astype(str)


def to_nchw_uint8(images: np.ndarray, what: str) -> np.ndarray:
    """Accept N×H×W or N×H×W×C uint8 and return contiguous N×C×H×W uint8."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise AuditInputError(f"{what}: images must be uint8, found {images.dtype}")
    if images.ndim == 3:
        return np.ascontiguousarray(images[:, None, :, :])
    if images.ndim == 4 and images.shape[-1] in (1, 3, 4):
        out = images[..., :3] if images.shape[-1] == 4 else images
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
    raise AuditInputError(f"{what}: images must be N×H×W or N×H×W×C (C in 1, 3, 4), found shape {images.shape}")
