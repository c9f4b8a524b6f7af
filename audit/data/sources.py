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
listing every problem, each naming the file, row or value. Then :func:`load_dataset` refuses datasets no
audit can use (no rows, zero-size images, no train or no test rows, duplicate class names), and turns any
other exception a hostile file provokes into :class:`AuditInputError` naming the spec. Sizes are bounded
before allocation (:mod:`audit.data.limits`). Sources register in :mod:`audit.data.registry`.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from audit.data import folder, manifest, torchvision_sources  # noqa: F401  (they register themselves)
from audit.data.base import AuditDataset, stratified_split, to_nchw_uint8
from audit.data.checks import (
    Problems,
    check_class_list,
    check_classes,
    check_loaded,
    check_split_values,
)
from audit.data.limits import DEFLATE_MAX_RATIO, MAX_CLASSES, image_pixel_cap
from audit.data.registry import SOURCES, LoadOptions, register
from audit.errors import AuditError, AuditInputError
from audit.errors import describe_error as _describe

__all__ = ["SOURCES", "LoadOptions", "load_dataset", "register"]


def load_dataset(spec: str, *, download: bool = False, memory_budget_mb: float | None = None,
                 cache_dir: str | Path | None = None, decode_workers: int | None = None,
                 max_image_pixels: int | None = None) -> AuditDataset:
    """Load ``spec`` (``digits``, ``npz:PATH``, ``mnist:ROOT``, ``folder:PATH``, ``csv:PATH``, ...).

    Raises :class:`AuditInputError` (exit 2) naming the spec, file, row or value on bad input; a source
    with several problems lists them all. The other arguments are :class:`LoadOptions`
    (``max_image_pixels``: the largest image file accepted, in pixels; see :mod:`audit.data.limits`).
    """
    prefix, _, arg = spec.partition(":")
    if prefix not in SOURCES:
        import difflib

        known = ", ".join(sorted(SOURCES))
        close = difflib.get_close_matches(prefix, SOURCES, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise AuditInputError(f"--dataset {spec!r}: unknown source {prefix!r} (known: {known}){hint}")
    if prefix != "digits" and not arg:
        raise AuditInputError(f"--dataset {spec!r}: {prefix} needs a path, e.g. {prefix}:PATH")
    if "\0" in arg:
        raise AuditInputError(f"--dataset {spec!r}: the path holds a NUL character")
    opts = LoadOptions(download=download, memory_budget_mb=memory_budget_mb, cache_dir=cache_dir,
                       decode_workers=decode_workers, max_image_pixels=image_pixel_cap(max_image_pixels))
    try:
        ds = SOURCES[prefix](arg, spec=spec, opts=opts)
    except AuditError:
        raise
    except Exception as e:  # whatever else a hostile file provokes is still bad input: name it
        raise AuditInputError(f"{spec}: cannot load ({_describe(e)})") from e
    check_loaded(ds)
    return ds


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


NPZ_KEYS = ("images", "labels", "split", "class_names")


def _npy_header(f, version) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(f)
    else:
        shape, _, dtype = fmt._read_array_header(f, version)
    return shape, dtype


def _check_npz_sizes(path: Path) -> None:
    """Check each member's declared sizes against the archive's size before numpy allocates them."""
    size = path.stat().st_size
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if key not in NPZ_KEYS:
                continue
            where = f"{path}: member {info.filename!r}"
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise AuditInputError(f"{where}: compression method {info.compress_type} (np.savez writes "
                                      "stored or deflated members)")
            most = size if info.compress_type == zipfile.ZIP_STORED else info.compress_size * DEFLATE_MAX_RATIO
            if info.compress_size > size or info.file_size > most:
                raise AuditInputError(f"{where}: declares {info.file_size:,} bytes, more than a "
                                      f"{size:,}-byte archive can hold")
            with zf.open(info) as f:
                try:
                    shape, dtype = _npy_header(f, np.lib.format.read_magic(f))
                except Exception as e:  # ValueError for a bad magic or header, EOFError, BadZipFile
                    raise AuditInputError(f"{where}: not a .npy array ({_describe(e)})") from None
            if dtype.hasobject:
                raise AuditInputError(f"{where}: an object array, which would need pickle (refused)")
            need = math.prod(shape) * dtype.itemsize
            if need > info.file_size:
                raise AuditInputError(f"{where}: header declares shape {shape} {dtype} ({need:,} bytes), "
                                      f"the member holds {info.file_size:,}")


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, object]:
    """images (N, C, H, W), labels, split or None, class_names (raw) or None, from a checked archive."""
    if not path.is_file():
        raise AuditInputError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):  # else numpy takes it for a pickle and says so, which misleads
        raise AuditInputError(f"{path}: not a zip archive (an .npz file is a zip of .npy arrays, as np.savez writes)")
    try:
        _check_npz_sizes(path)
        z = np.load(path, allow_pickle=False)
    except AuditInputError:
        raise
    except Exception as e:  # corrupt zip, not an npz
        raise AuditInputError(f"{path}: cannot read as .npz ({_describe(e)})") from None
    with z:
        missing = [k for k in ("images", "labels") if k not in z.files]
        if missing:
            raise AuditInputError(f"{path}: missing array(s) {', '.join(missing)} (found {', '.join(z.files)})")
        arrays = {}
        for key in NPZ_KEYS:
            try:
                arrays[key] = np.asarray(z[key]) if key in z.files else None
            except Exception as e:  # a corrupt member (CRC, truncated), object arrays
                raise AuditInputError(f"{path}: cannot read array {key!r} ({_describe(e)})") from None
    images = to_nchw_uint8(arrays["images"], str(path))
    split = arrays["split"]
    if split is not None and (split.ndim != 1 or split.dtype.kind not in "USO"):
        raise AuditInputError(f"{path}: split must be a 1-D array of 'train'/'test' strings, "
                              f"found {split.dtype} {split.shape}")
    return images, arrays["labels"], split, arrays["class_names"]


def _npz_class_names(labels: np.ndarray, raw, path: Path, problems: Problems) -> list[str] | None:
    """The class names: the file's ``class_names``, else "0".."K-1" for K = largest label + 1
    (``None``, recorded, when a label is not below ``MAX_CLASSES``)."""
    if raw is not None:
        return check_class_list(raw, "class_names", problems)
    if not len(labels):
        return []
    big = np.flatnonzero(labels >= MAX_CLASSES)
    if len(big):
        problems.add(f"label {labels[big[0]]} at row {big[0]} is not below the maximum class count "
                     f"{MAX_CLASSES:,}" + (f"; {len(big)} such rows: {_rows(big)}" if len(big) > 1 else ""))
        return None
    return [str(c) for c in range(max(int(labels.max()) + 1, 0))]


@register("npz")
def load_npz(arg: str, *, spec: str = "", opts: LoadOptions = LoadOptions()) -> AuditDataset:
    """An ``.npz`` with ``images`` (uint8 N×H×W[×C]), ``labels`` (N), optional ``split`` and ``class_names``."""
    path = Path(arg)
    images, labels, split, raw_names = _read_npz(path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise AuditInputError(f"{path}: labels must be a 1-D integer array, found {labels.dtype} {labels.shape}")
    problems = Problems(str(path))
    n = len(labels)
    if len(images) != n:
        problems.add(f"{len(images)} images but {n} labels")
    if split is not None and len(split) != n:
        problems.add(f"{len(split)} split values but {n} labels")
    names = _npz_class_names(labels, raw_names, path, problems)
    if names is not None:
        bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
        if len(bad):
            problems.add(f"label {labels[bad[0]]} at row {bad[0]} is out of range [0, {len(names)})"
                         + (f"; {len(bad)} such rows: {_rows(bad)}" if len(bad) > 1 else ""))
        elif n:
            check_classes(labels, names, problems)
    if split is not None and len(split) == n:
        split = check_split_values(split, problems)
    problems.raise_if_any()
    labels = labels.astype(np.int64)
    return AuditDataset(
        images=images,
        labels=labels,
        split=stratified_split(labels) if split is None else split,
        example_ids=np.array([f"{path.stem}-{i:06d}" for i in range(n)]),
        index=np.arange(n, dtype=np.int64),
        class_names=tuple(names),
        name=path.stem,
        spec=spec,
    )
