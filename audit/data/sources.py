"""Dataset sources behind ``--dataset SPEC``, each returning an :class:`AuditDataset`.

A source is a function ``(arg: str, *, download: bool) -> AuditDataset`` registered under the spec's
prefix (``npz`` in ``npz:PATH``). ``digits`` takes no argument.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from audit.data.base import TEST, TRAIN, AuditDataset, stratified_split, to_nchw_uint8
from audit.errors import AuditInputError

Loader = Callable[..., AuditDataset]
SOURCES: dict[str, Loader] = {}


def register(prefix: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        SOURCES[prefix] = fn
        return fn

    return deco


def load_dataset(spec: str, *, download: bool = False) -> AuditDataset:
    """Load ``spec`` (``digits``, ``npz:PATH``, ``mnist:ROOT``, ``folder:PATH``, ``csv:PATH``, ...).

    Raises :class:`AuditInputError` (exit 2) naming the spec, file, row or value on bad input.
    """
    prefix, _, arg = spec.partition(":")
    if prefix not in SOURCES:
        known = ", ".join(sorted(SOURCES))
        raise AuditInputError(f"--dataset {spec!r}: unknown source {prefix!r} (known: {known})")
    if prefix != "digits" and not arg:
        raise AuditInputError(f"--dataset {spec!r}: {prefix} needs a path, e.g. {prefix}:PATH")
    return SOURCES[prefix](arg, download=download, spec=spec)


@register("digits")
def load_digits(arg: str = "", *, download: bool = False, spec: str = "digits") -> AuditDataset:
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


@register("npz")
def load_npz(arg: str, *, download: bool = False, spec: str = "") -> AuditDataset:
    """An ``.npz`` with ``images`` (uint8 N×H×W[×C]), ``labels`` (N), optional ``split`` and ``class_names``."""
    path = Path(arg)
    if not path.is_file():
        raise AuditInputError(f"{path}: no such file")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # corrupt zip, not an npz, object arrays
        raise AuditInputError(f"{path}: cannot read as .npz ({type(e).__name__}: {e})") from None
    with z:
        missing = [k for k in ("images", "labels") if k not in z.files]
        if missing:
            raise AuditInputError(f"{path}: missing array(s) {', '.join(missing)} (found {', '.join(z.files)})")
        images = to_nchw_uint8(z["images"], str(path))
        labels = np.asarray(z["labels"])
        split = np.asarray(z["split"]).astype(str) if "split" in z.files else None
        names = [str(s) for s in z["class_names"]] if "class_names" in z.files else None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise AuditInputError(f"{path}: labels must be a 1-D integer array, found {labels.dtype} {labels.shape}")
    if len(labels) != len(images):
        raise AuditInputError(f"{path}: {len(images)} images but {len(labels)} labels")
    k = int(labels.max()) + 1 if len(labels) else 0
    if names is None:
        names = [str(c) for c in range(k)]
    bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
    if len(bad):
        raise AuditInputError(
            f"{path}: label {labels[bad[0]]} at row {bad[0]} is out of range [0, {len(names)})"
            + (f" ({len(bad)} rows in all)" if len(bad) > 1 else "")
        )
    if split is None:
        split = stratified_split(labels)
    else:
        bad = np.flatnonzero(~np.isin(split, [TRAIN, TEST]))
        if len(bad):
            raise AuditInputError(f"{path}: split value {split[bad[0]]!r} at row {bad[0]} is not 'train' or 'test'")
    n = len(labels)
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
