"""Dataset sources behind ``--dataset SPEC``, each returning an :class:`AuditDataset`.

A source is a function ``(arg: str, *, spec: str, opts: LoadOptions) -> AuditDataset`` registered under
the spec's prefix (``npz`` in ``npz:PATH``); ``digits`` takes no argument. Built in:

==================================  ==============================================  =====================
spec                                reads                                           module
==================================  ==============================================  =====================
``digits``                          scikit-learn's bundled 8×8 digits (offline)     this one
``npz:PATH``                        ``images``, ``labels`` [, ``split``,            this one
                                    ``class_names``]
``mnist:ROOT``,                     torchvision's on-disk formats (idx files,       ``torchvision_sources``
``fashion-mnist:ROOT``,             CIFAR python batches); ``--download`` lets
``cifar10:ROOT``, ``cifar100:ROOT`` torchvision fetch missing files
``folder:PATH``                     one sub-folder per class                        ``folder``
``csv:PATH``, ``parquet:PATH``      a manifest ``path,label[,split]``               ``manifest``
==================================  ==============================================  =====================

Every source checks its whole input and raises one :class:`audit.data.checks.DatasetError` (exit code 2)
listing every problem, each naming the file, row or value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from audit.data.base import AuditDataset, stratified_split, to_nchw_uint8
from audit.data.checks import Problems, check_classes, check_split_values
from audit.errors import AuditInputError


@dataclass(frozen=True)
class LoadOptions:
    """How to load, beyond the spec.

    download: let torchvision sources download missing files (never by default).
    memory_budget_mb: decoded image folders and manifests larger than this (MiB) stream from a memmap
        cache file; ``None`` reads ``AUDIT_MEMORY_BUDGET_MB`` (default 2048).
    cache_dir: where those cache files go; ``None`` reads ``AUDIT_CACHE_DIR`` (default ~/.cache/benign-audit).
    decode_workers: processes decoding image files; ``None`` reads ``AUDIT_DECODE_WORKERS``, else one per
        CPU (up to 8) from 2,000 images on, when there are more than 2 CPUs.
    """

    download: bool = False
    memory_budget_mb: float | None = None
    cache_dir: str | Path | None = None
    decode_workers: int | None = None


Loader = Callable[..., AuditDataset]
SOURCES: dict[str, Loader] = {}


def register(prefix: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        SOURCES[prefix] = fn
        return fn

    return deco


def load_dataset(spec: str, *, download: bool = False, memory_budget_mb: float | None = None,
                 cache_dir: str | Path | None = None, decode_workers: int | None = None) -> AuditDataset:
    """Load ``spec`` (``digits``, ``npz:PATH``, ``mnist:ROOT``, ``folder:PATH``, ``csv:PATH``, ...).

    Raises :class:`AuditInputError` (exit 2) naming the spec, file, row or value on bad input; a source
    with several problems lists them all. The other arguments are :class:`LoadOptions`.
    """
    prefix, _, arg = spec.partition(":")
    if prefix not in SOURCES:
        known = ", ".join(sorted(SOURCES))
        raise AuditInputError(f"--dataset {spec!r}: unknown source {prefix!r} (known: {known})")
    if prefix != "digits" and not arg:
        raise AuditInputError(f"--dataset {spec!r}: {prefix} needs a path, e.g. {prefix}:PATH")
    opts = LoadOptions(download=download, memory_budget_mb=memory_budget_mb, cache_dir=cache_dir,
                       decode_workers=decode_workers)
    return SOURCES[prefix](arg, spec=spec, opts=opts)


@register("digits")
def load_digits(arg: str = "", *, spec: str = "digits", opts: LoadOptions = LoadOptions()) -> AuditDataset:
    """scikit-learn's bundled handwritten digits: 1,797 8×8 images (0..16 scaled to 0..255), offline."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    n = len(labels)
    return AuditDataset(
        images=images[:, None],
        labels=labels,
        split=stratified_split(labels),
        example_ids=np.array([f"digits-{i:04d}" for i in range(n)]),
        index=np.arange(n, dtype=np.int64),
        class_names=tuple(str(c) for c in range(10)),
        name="digits",
        spec=spec,
    )


def _rows(idx: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:limit])
    return shown + (f", ... ({len(idx)} rows in all)" if len(idx) > limit else "")


@register("npz")
def load_npz(arg: str, *, spec: str = "", opts: LoadOptions = LoadOptions()) -> AuditDataset:
    """An ``.npz`` with ``images`` (uint8 N×H×W[×C]), ``labels`` (N), optional ``split`` and ``class_names``."""
    path = Path(arg)
    if not path.is_file():
        raise AuditInputError(f"{path}: no such file")
    import zipfile

    if not zipfile.is_zipfile(path):  # else numpy takes it for a pickle and says so, which misleads
        raise AuditInputError(f"{path}: not a zip archive (an .npz file is a zip of .npy arrays, as np.savez writes)")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # corrupt zip, not an npz, object arrays
        raise AuditInputError(f"{path}: cannot read as .npz ({type(e).__name__}: {e})") from None
    problems = Problems(str(path))
    with z:
        missing = [k for k in ("images", "labels") if k not in z.files]
        if missing:
            raise AuditInputError(f"{path}: missing array(s) {', '.join(missing)} (found {', '.join(z.files)})")
        try:
            images = to_nchw_uint8(z["images"], str(path))
            labels = np.asarray(z["labels"])
            split = np.asarray(z["split"]).astype(str) if "split" in z.files else None
            names = [str(s) for s in z["class_names"]] if "class_names" in z.files else None
        except ValueError as e:  # object arrays need pickle, which is refused
            raise AuditInputError(f"{path}: cannot read arrays ({e})") from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise AuditInputError(f"{path}: labels must be a 1-D integer array, found {labels.dtype} {labels.shape}")
    n = len(labels)
    if len(images) != n:
        problems.add(f"{len(images)} images but {n} labels")
    if split is not None and len(split) != n:
        problems.add(f"{len(split)} split values but {n} labels")
    if names is None:
        names = [str(c) for c in range(int(labels.max()) + 1 if n else 0)]
    bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
    if len(bad):
        problems.add(f"label {labels[bad[0]]} at row {bad[0]} is out of range [0, {len(names)})"
                     + (f"; {len(bad)} such rows: {_rows(bad)}" if len(bad) > 1 else ""))
    elif n:
        check_classes(labels, names, problems)
    if split is not None and len(split) == n:
        split = check_split_values(split, problems)
    problems.raise_if_any()
    if split is None:
        split = stratified_split(labels)
    return AuditDataset(
        images=images,
        labels=labels.astype(np.int64),
        split=split,
        example_ids=np.array([f"{path.stem}-{i:06d}" for i in range(n)]),
        index=np.arange(n, dtype=np.int64),
        class_names=tuple(names),
        name=path.stem,
        spec=spec,
    )


# The other sources register themselves on import (they need ``register`` and ``LoadOptions`` above).
from audit.data import folder, manifest, torchvision_sources  # noqa: E402,F401
