"""``csv:PATH`` and ``parquet:PATH``: a manifest table with columns ``path,label[,split]``.

* ``path``: an image file relative to the manifest's folder. Paths that leave that folder (``../x.png``,
  or an absolute path elsewhere) are refused, and so are symbolic links whose target (every link
  resolved) leaves it; links that stay inside are followed. A file listed twice is refused (one label
  per example).
* ``label``: integers (``0..K-1``) or class names. Without a class list, integer labels give classes
  ``"0".."K-1"`` with K = largest label + 1, and names give the sorted distinct names; a column mixing
  the two is refused on the rows of the minority kind. A class list pins names and order: a
  ``classes.txt`` beside the manifest (UTF-8, one name per line), or for Parquet the schema metadata key
  ``class_names`` (a JSON list) or Hugging Face's ``ClassLabel`` names of the label column. With one,
  a label is a listed name or an integer in ``[0, K)``, and listed classes without examples are refused.
  At most ``MAX_CLASSES`` classes: a larger integer label is refused naming its row.
* ``split``: optional, ``train`` or ``test`` per row; without it a deterministic stratified split.

Parquet files written by Hugging Face ``datasets`` (an ``image`` column of ``{bytes, path}`` structs and an
integer ``label`` column) also load: images decode from the bytes. ``index`` is the manifest row,
``example_ids`` the normalised relative paths (``row-000012``-style for embedded images), ``paths`` the
absolute file paths. Images are normalised by the rule in :mod:`audit.data.images`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from audit.data.base import AuditDataset, stratified_split
from audit.data.checks import (
    Problems,
    check_class_list,
    check_classes,
    check_split_values,
)
from audit.data.images import ImageRef, decode_images
from audit.data.limits import MAX_CLASSES, label_too_large
from audit.data.registry import LoadOptions, register
from audit.errors import AuditInputError, describe_error

if TYPE_CHECKING:
    import pandas as pd

_INT = re.compile(r"[+-]?\d+")
CLASSES_FILE = "classes.txt"


def _read_csv(path: Path) -> pd.DataFrame:
    import pandas as pd

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise AuditInputError(f"{path}: empty file (expected a header line path,label[,split])") from None
    except Exception as e:  # ParserError, UnicodeDecodeError, OSError, ...
        raise AuditInputError(f"{path}: cannot read as CSV ({describe_error(e)})") from None


def _read_parquet(path: Path) -> tuple[pd.DataFrame, dict[bytes, bytes]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        return table.to_pandas(), dict(table.schema.metadata or {})
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-Parquet or truncated files
        raise AuditInputError(f"{path}: cannot read as Parquet ({describe_error(e)})") from None


def _json_meta(meta: dict[bytes, bytes], key: bytes, where: str, problems: Problems):
    """The JSON value of a Parquet metadata key, or ``None`` (recorded) when it is not JSON."""
    try:
        return json.loads(meta[key])
    except (ValueError, TypeError) as e:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        problems.add(f"{where}: not JSON ({describe_error(e)})")
        return None


def _pinned_classes(path: Path, meta: dict[bytes, bytes], label_col: str, problems: Problems) -> list[str] | None:
    """The class list that pins names and order, if the manifest comes with one."""
    sidecar = path.parent / CLASSES_FILE
    if sidecar.is_file():
        try:
            text = sidecar.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            problems.add(f"{sidecar}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r})")
            return None
        names = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return check_class_list(names, str(sidecar), problems)
    if b"class_names" in meta:
        where = f"{path} metadata 'class_names'"
        names = _json_meta(meta, b"class_names", where, problems)
        return None if names is None else check_class_list(names, where, problems)
    if b"huggingface" in meta:
        where = f"{path} metadata 'huggingface'"
        hf = _json_meta(meta, b"huggingface", where, problems)
        info = hf.get("info", {}) if isinstance(hf, dict) else None
        feats = info.get("features", {}) if isinstance(info, dict) else None
        if hf is not None and not isinstance(feats, dict):
            problems.add(f"{where}: expected {{'info': {{'features': {{...}}}}}}, found {str(hf)[:80]}")
        elif hf is not None and isinstance(feats.get(label_col), dict) and "names" in feats[label_col]:
            return check_class_list(feats[label_col]["names"], f"{where} ClassLabel names", problems)
    return None


def _labels(values: pd.Series, pinned: list[str] | None, problems: Problems, row) -> tuple[np.ndarray, list[str]]:
    """Labels (N,) int64 (-1 where bad, recorded in ``problems``) and the class names."""
    import pandas as pd

    n = len(values)
    out = np.full(n, -1, np.int64)
    if pd.api.types.is_integer_dtype(values) or pd.api.types.is_float_dtype(values):
        num = values.to_numpy(dtype=float, na_value=np.nan)
        text = [str(int(v)) if np.isfinite(v) and v == int(v) else ("" if np.isnan(v) else repr(v)) for v in num]
    else:
        text = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip() for v in values]
    is_int = np.array([bool(_INT.fullmatch(t)) for t in text], bool)
    empty = np.array([t == "" for t in text], bool)
    for i in np.flatnonzero(empty):
        problems.add(f"{row(i)}: empty label")
    if pinned is not None:
        index = {nm: k for k, nm in enumerate(pinned)}
        for i, t in enumerate(text):
            if empty[i]:
                continue
            if t in index:
                out[i] = index[t]
            elif is_int[i] and not label_too_large(t) and 0 <= int(t) < len(pinned):
                out[i] = int(t)
            elif is_int[i]:
                problems.add(f"{row(i)}: label {t[:40]} out of range [0, {len(pinned)})")
            else:
                known = ", ".join(pinned[:10]) + (", ..." if len(pinned) > 10 else "")
                problems.add(f"{row(i)}: unknown class name {t!r} (known: {known})")
        return out, list(pinned)
    n_int, n_name = int((is_int & ~empty).sum()), int((~is_int & ~empty).sum())
    if n_int >= n_name:  # integer labels; rows holding names are the odd ones out
        for i in np.flatnonzero(~is_int & ~empty):
            problems.add(f"{row(i)}: label {text[i]!r} is not an integer (the other labels are; "
                         f"give {CLASSES_FILE} to use class names)")
        huge = np.array([ok and label_too_large(t) for t, ok in zip(text, is_int)], bool)
        for i in np.flatnonzero(huge):
            problems.add(f"{row(i)}: label {text[i][:40]}{'...' if len(text[i]) > 40 else ''} is not below the "
                         f"maximum class count {MAX_CLASSES:,}")
        ints = np.array([int(t) if ok and not big else -1 for t, ok, big in zip(text, is_int, huge)], np.int64)
        for i in np.flatnonzero(is_int & ~huge & (ints < 0)):
            problems.add(f"{row(i)}: label {text[i]} is negative")
        valid = is_int & (ints >= 0)
        out[valid] = ints[valid]
        k = int(ints[valid].max()) + 1 if valid.any() else 0
        return out, [str(c) for c in range(k)]
    for i in np.flatnonzero(is_int & ~empty):
        problems.add(f"{row(i)}: label {text[i]!r} is an integer but the other labels are class names "
                     f"(list the classes in {CLASSES_FILE} to mix the two)")
    names = sorted({t for t, ok, e in zip(text, is_int, empty) if not ok and not e})
    index = {nm: k for k, nm in enumerate(names)}
    for i, t in enumerate(text):
        if not is_int[i] and not empty[i]:
            out[i] = index[t]
    return out, names


def _realpath(full: str, real_dirs: dict[str, str]) -> str:
    """``os.path.realpath(full)``, resolving each folder once (manifests list many files per folder)."""
    folder, name = os.path.split(full)
    if folder not in real_dirs:
        real_dirs[folder] = os.path.realpath(folder)
    path = os.path.join(real_dirs[folder], name)
    return os.path.realpath(path) if os.path.islink(path) else path


def _image_refs(df: pd.DataFrame, path: Path, problems: Problems, row) -> tuple[list[ImageRef], list[str], list[int], bool]:
    """One :class:`ImageRef` per valid row, its id, and the rows they belong to; ``embedded`` for HF bytes."""
    base = os.path.abspath(path.parent)
    real_base = os.path.realpath(base)
    real_dirs: dict[str, str] = {}
    refs, ids, rows = [], [], []
    if "path" not in df.columns:  # Hugging Face: image = {bytes, path}
        for i, cell in enumerate(df["image"].tolist()):
            data = cell.get("bytes") if isinstance(cell, dict) else None
            if not isinstance(data, (bytes, bytearray, memoryview)) or not data:
                problems.add(f"{row(i)}: image cell has no bytes")
                continue
            refs.append(ImageRef(name=row(i), data=bytes(data)))
            ids.append(f"{path.stem}-{i:06d}")
            rows.append(i)
        return refs, ids, rows, True
    first_row: dict[str, int] = {}
    for i, raw in enumerate(df["path"].tolist()):
        p = "" if raw is None or (isinstance(raw, float) and np.isnan(raw)) else str(raw).strip()
        if not p:
            problems.add(f"{row(i)}: empty path")
            continue
        if "\0" in p:
            problems.add(f"{row(i)}: path {p!r} holds a NUL character")
            continue
        full = os.path.normpath(os.path.join(base, p))
        if not full.startswith(base + os.sep):
            problems.add(f"{row(i)}: path {p!r} escapes the manifest's folder {base}")
            continue
        real = _realpath(full, real_dirs)
        if not real.startswith(real_base.rstrip(os.sep) + os.sep):
            problems.add(f"{row(i)}: path {p!r} is a link to {real}, outside the manifest's folder {real_base}")
            continue
        rel = Path(os.path.relpath(full, base)).as_posix()
        if rel in first_row:
            problems.add(f"{row(i)}: path {p!r} repeats row {first_row[rel]}")
            continue
        first_row[rel] = i
        refs.append(ImageRef(name=f"{row(i)} ({p})", path=Path(full)))
        ids.append(rel)
        rows.append(i)
    return refs, ids, rows, False


def _load_manifest(arg: str, spec: str, opts: LoadOptions, kind: str) -> AuditDataset:
    path = Path(arg)
    if not path.is_file():
        raise AuditInputError(f"{spec}: no such file {path}")
    if kind == "csv":
        df, meta = _read_csv(path), {}
    else:
        df, meta = _read_parquet(path)
    df.columns = [str(c).strip().lower() for c in df.columns]
    twice = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if twice:
        raise AuditInputError(f"{path}: column(s) {', '.join(map(repr, twice))} appear more than once")
    have_images = "path" in df.columns or ("image" in df.columns and kind == "parquet")
    missing = [c for c, ok in (("path", have_images), ("label", "label" in df.columns)) if not ok]
    if missing:
        raise AuditInputError(f"{path}: missing column(s) {', '.join(missing)} "
                              f"(expected path,label[,split]; found {', '.join(df.columns) or 'none'})")
    if len(df) == 0:
        raise AuditInputError(f"{path}: no rows")
    row = (lambda i: f"row {i} (line {i + 2})") if kind == "csv" else (lambda i: f"row {i}")
    problems = Problems(spec)
    pinned = _pinned_classes(path, meta, "label", problems)
    labels, class_names = _labels(df["label"], pinned, problems, row)
    split = None
    if "split" in df.columns:
        raw = df["split"].astype(object).where(df["split"].notna(), "").astype(str).to_numpy()
        split = check_split_values(raw, problems, row_name=row)
    refs, ids, rows, embedded = _image_refs(df, path, problems, row)
    images, info = decode_images(refs, problems, slug=f"{kind}-{path.stem}",
                                 memory_budget_mb=opts.memory_budget_mb, cache_dir=opts.cache_dir,
                                 workers=opts.decode_workers, max_pixels=opts.max_image_pixels)
    if not problems:
        check_classes(labels, class_names, problems, where="")
    problems.raise_if_any()
    assert images is not None and len(rows) == len(df)
    if split is None:
        split = stratified_split(labels)
    base = os.path.abspath(path.parent)
    return AuditDataset(
        images=images,
        labels=labels,
        split=np.asarray(split).astype(str),
        example_ids=np.array(ids).astype(str),
        index=np.arange(len(df), dtype=np.int64),
        class_names=tuple(class_names),
        name=path.stem,
        spec=spec,
        paths=None if embedded else np.array([os.path.join(base, i) for i in ids]).astype(str),
        extra=info,
    )


@register("csv")
def load_csv(arg: str, *, spec: str, opts: LoadOptions) -> AuditDataset:
    """A CSV manifest ``path,label[,split]`` (see the module docstring)."""
    return _load_manifest(arg, spec, opts, "csv")


@register("parquet")
def load_parquet(arg: str, *, spec: str, opts: LoadOptions) -> AuditDataset:
    """A Parquet manifest ``path,label[,split]``, or a Hugging Face image dataset in Parquet."""
    return _load_manifest(arg, spec, opts, "parquet")
