"""A user's own model as input: ``--pred-probs FILE`` (out-of-sample class probabilities) and
``--features FILE`` (embeddings), checked like a dataset (DESIGN.md, "Issue types").

A file is ``.npy`` (a 2-D float array, no pickles) or Parquet (``.parquet``/``.pq``):

* rows in dataset order, one per example of both splits (N rows), or one per training example in
  dataset order (only for ``--pred-probs``, whose test rows are optional);
* or, in Parquet, an ``example_id`` column naming each row's example (the ids ``examples.parquet``
  uses; any order, any subset that covers what is needed) beside the value columns: either one list
  column, or K (``--pred-probs``: one per class, in class order) / D numeric columns.

Checks: a regular file; a 2-D finite numeric array; ``--pred-probs``: K columns (the dataset's classes),
every value in [0, 1], each row summing to 1 within ``SUM_TOL``, every training row covered;
``--features``: every row of both splits covered (neighbours and pairs search them). A problem is one
line naming the file and the row, id or shape (exit 2).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audit.errors import AuditInputError

SUM_TOL = 1e-3
MAX_FEATURES = 65536


@dataclass(frozen=True)
class GivenArray:
    """One input file's values in dataset order, which rows it covers, and the file's fingerprint."""

    option: str  # "--pred-probs" or "--features"
    path: str
    values: np.ndarray  # (N, K) float64 probabilities or (N, D) float32 features, dataset order; NaN where not covered
    covered: np.ndarray  # (N,) bool
    fingerprint: str

    def record(self) -> dict:
        """What the manifest says of it."""
        return {"path": self.path, "fingerprint": self.fingerprint, "shape": list(self.values.shape),
                "rows_covered": int(self.covered.sum())}


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _read(path: Path, option: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(values (R, D), example ids (R,) or None)."""
    where = f"{option} {path}"
    if path.is_symlink() or not path.is_file():
        raise AuditInputError(f"{where}: not a regular file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise AuditInputError(f"{where}: not a readable .npy array ({str(e).splitlines()[0][:120]})") from None
        return _numeric(arr, where), None
    if suffix in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise AuditInputError(f"{where}: not a readable Parquet file ({str(e).splitlines()[0][:120]})") from None
        ids = None
        if "example_id" in table.column_names:
            ids = np.asarray(table.column("example_id").to_pylist(), dtype=object)
            if any(not isinstance(v, str) for v in ids):
                raise AuditInputError(f"{where}: example_id must be strings")
            table = table.drop(["example_id"])
        first = table.schema[0].type if table.num_columns else None
        if table.num_columns == 1 and (pa.types.is_list(first) or pa.types.is_fixed_size_list(first)
                                       or pa.types.is_large_list(first)):
            rows = table.column(0).to_pylist()
            lengths = {len(r) if r is not None else -1 for r in rows}
            if len(lengths) > 1 or -1 in lengths:
                raise AuditInputError(f"{where}: column {table.column_names[0]!r}: lists of different lengths or nulls")
            arr = np.asarray(rows, dtype=np.float64)
        else:
            bad = [f.name for f in table.schema if not (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]
            if bad:
                raise AuditInputError(f"{where}: column {bad[0]!r} is not numeric")
            if table.num_columns == 0:
                raise AuditInputError(f"{where}: no value columns")
            arr = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names])
        return _numeric(arr, where), ids
    raise AuditInputError(f"{where}: unknown format {suffix or '(no suffix)'}; use .npy or .parquet")


def _numeric(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise AuditInputError(f"{where}: need a 2-D numeric array, found {arr.dtype} {arr.shape}")
    arr = arr.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(arr).all(1))
    if len(bad):
        raise AuditInputError(f"{where}: row {bad[0]} is not finite ({len(bad)} such rows)")
    return arr


def load_given(path: str | Path, ds, option: str) -> GivenArray:
    """Read ``path`` for ``option`` (``--pred-probs`` or ``--features``) against dataset ``ds``
    (an :class:`audit.data.AuditDataset` after ``--image-size``, before injected noise is irrelevant:
    rows and ids do not change)."""
    path = Path(path).expanduser()
    where = f"{option} {path}"
    arr, ids = _read(path, option)
    n = len(ds.labels)
    train = np.flatnonzero(ds.split == "train")
    out = np.full((n, arr.shape[1]), np.nan)
    covered = np.zeros(n, bool)
    if ids is not None:
        pos = {str(e): i for i, e in enumerate(ds.example_ids)}
        rows = np.array([pos.get(str(e), -1) for e in ids], dtype=np.int64)
        unknown = np.flatnonzero(rows < 0)
        if len(unknown):
            raise AuditInputError(f"{where}: row {unknown[0]}: example_id {str(ids[unknown[0]])[:80]!r} is not "
                                  f"in the dataset ({len(unknown)} such rows)")
        uniq, counts = np.unique(rows, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1][0]
            raise AuditInputError(f"{where}: example_id {str(ds.example_ids[dup])!r} appears {counts[counts > 1][0]} times")
        out[rows], covered[rows] = arr, True
    elif len(arr) == n:
        out[:], covered[:] = arr, True
    elif len(arr) == len(train) and option == "--pred-probs":
        out[train], covered[train] = arr, True
    else:
        need = f"{n} (every example, dataset order)" + (f" or {len(train)} (the training rows)"
                                                        if option == "--pred-probs" else "")
        raise AuditInputError(f"{where}: {len(arr)} rows, need {need}, or an example_id column")
    if option == "--pred-probs":
        _check_probs(out, covered, ds, where)
        missing = train[~covered[train]]
    else:
        if arr.shape[1] > MAX_FEATURES:
            raise AuditInputError(f"{where}: {arr.shape[1]} feature columns, at most {MAX_FEATURES}")
        missing = np.flatnonzero(~covered)
    if len(missing):
        what = "training example" if option == "--pred-probs" else "example"
        raise AuditInputError(f"{where}: no row for {what} {str(ds.example_ids[missing[0]])!r} "
                              f"({len(missing)} missing)")
    # probabilities as given (cleanlab's scores of them must be cleanlab's own); features as float32
    values = out if option == "--pred-probs" else out.astype(np.float32)
    return GivenArray(option, str(path.resolve()), values, covered, _fingerprint(path))


def _check_probs(out: np.ndarray, covered: np.ndarray, ds, where: str) -> None:
    k = ds.num_classes
    if out.shape[1] != k:
        raise AuditInputError(f"{where}: {out.shape[1]} columns, but the dataset has {k} classes")
    rows = np.flatnonzero(covered)
    vals = out[rows]
    bad = np.flatnonzero(((vals < 0) | (vals > 1)).any(1))
    if len(bad):
        r = rows[bad[0]]
        raise AuditInputError(f"{where}: example {str(ds.example_ids[r])!r}: a probability outside [0, 1] "
                              f"({vals[bad[0]].min():.4g} .. {vals[bad[0]].max():.4g}); logits? apply softmax first")
    sums = vals.sum(1)
    bad = np.flatnonzero(np.abs(sums - 1) > SUM_TOL)
    if len(bad):
        r = rows[bad[0]]
        raise AuditInputError(f"{where}: example {str(ds.example_ids[r])!r}: probabilities sum to {sums[bad[0]]:.4g}, "
                              f"not 1 ({len(bad)} such rows)")


def train_order(values: np.ndarray, ds, canaries) -> np.ndarray:
    """Dataset-order values as the models' training rows: the real rows, then the canaries (each its
    source image's values: a canary is an exact copy of that image)."""
    tr = ds.split_indices("train")
    return np.concatenate([values[tr[canaries.real_rows]], values[tr[canaries.source]]])
