"""Compare two run directories value by value: examples.parquet, pairs.parquet and dynamics.npz.

    python benchmarks/compare_runs.py RUN_A RUN_B

Prints, per table, whether every column is identical (NaNs equal), else the columns that differ and
the largest absolute difference. Exit code 0 when identical, 1 otherwise. Used to show that a
refactor or another engine leaves the results unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd


def _same(a, b) -> tuple[bool, str]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False, f"shape {a.shape} vs {b.shape}"
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        a, b = a.astype(np.float64), b.astype(np.float64)
        eq = (a == b) | (np.isnan(a) & np.isnan(b))
        return bool(eq.all()), "" if eq.all() else f"max |diff| {np.nanmax(np.abs(a - b)):.3g}"
    eq = np.array([str(x) == str(y) for x, y in zip(a.ravel(), b.ravel())])
    return bool(eq.all()), "" if eq.all() else f"{int((~eq).sum())} values differ"


def compare_frames(name: str, a: pd.DataFrame, b: pd.DataFrame) -> bool:
    ok = True
    cols = sorted(set(a.columns) | set(b.columns))
    for c in cols:
        if c not in a or c not in b:
            print(f"{name}: column {c} only in {'B' if c not in a else 'A'}")
            ok = False
            continue
        same, why = _same(a[c].to_numpy(dtype=object if a[c].dtype == object else None),
                          b[c].to_numpy(dtype=object if b[c].dtype == object else None))
        if not same:
            print(f"{name}: {c}: {why}")
            ok = False
    print(f"{name}: {len(a)} rows x {len(cols)} columns {'identical' if ok else 'DIFFER'}")
    return ok


def main(a: str, b: str) -> int:
    ok = True
    for t in ("examples.parquet", "pairs.parquet"):
        ok &= compare_frames(t, pd.read_parquet(Path(a) / t), pd.read_parquet(Path(b) / t))
    with np.load(Path(a) / "dynamics.npz") as za, np.load(Path(b) / "dynamics.npz") as zb:
        keys = sorted(set(za.files) | set(zb.files))
        bad = [k for k in keys if k not in za.files or k not in zb.files or not _same(za[k], zb[k])[0]]
        print(f"dynamics.npz: {len(keys)} arrays {'identical' if not bad else 'DIFFER: ' + ', '.join(bad)}")
        ok &= not bad
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
