"""Artifacts that describe themselves, written atomically (temporary name, then rename); no pickle."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = "1"


def _cannot_write(path: Path, e: OSError):
    """The one-line error for a write that failed (a full disk, a read-only folder): the target named,
    the OS's reason, and that nothing was half-written (the temporary file is removed)."""
    import errno

    from audit.errors import AuditError, AuditInputError

    why = e.strerror or type(e).__name__
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return AuditInputError(f"{path}: cannot write there ({why}); choose another place")
    return AuditError(f"{path}: cannot write ({why}); nothing was half-written and finished stages are kept: "
                      "free some space and rerun")


def _tmp_path(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _cannot_write(path, e) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; artifacts are ordinary files
    return Path(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        raise _cannot_write(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_parquet(path: str | os.PathLike, df: pd.DataFrame, metadata: dict[str, Any]) -> None:
    """Write ``df`` with ``metadata`` (JSON-encoded under ``b"benign_audit"``) in the schema, atomically."""
    path = Path(path)
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"benign_audit"] = json.dumps({"schema_version": SCHEMA_VERSION, **metadata}, default=_json_default).encode()
    table = table.replace_schema_metadata(meta)
    tmp = _tmp_path(path)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except OSError as e:
        raise _cannot_write(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)


def read_parquet_metadata(path: str | os.PathLike) -> dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"benign_audit")
    return json.loads(raw) if raw else {}


def save_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """A plain ``.npz`` (no object arrays, so it loads with ``allow_pickle=False``), atomically."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)
    except OSError as e:
        raise _cannot_write(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
