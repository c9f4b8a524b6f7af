"""Shared by the reproductions: seeds-to-bands summaries, band plots, CPU threads, atomic CSV writes."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from audit.io import atomic_write_bytes


def ci95(values) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval of the mean (Student t; 0 for one value)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), 0.0
    from scipy.stats import t

    return float(v.mean()), float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def summarize(df: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per group of ``by``: ``<metric>_mean`` and ``<metric>_ci95`` over seeds, and ``seeds``."""
    rows = []
    for key, g in df.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row["seeds"] = len(g)
        for m in metrics:
            row[f"{m}_mean"], row[f"{m}_ci95"] = ci95(g[m])
        rows.append(row)
    return pd.DataFrame(rows)


def write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write_bytes(path, df.to_csv(index=False, float_format="%.5g").encode())


def band(ax, x, mean, half, *, color, label, ls="-", marker="o"):
    """A line with markers and a shaded 95% band."""
    x, mean, half = (np.asarray(a, float) for a in (x, mean, half))
    ax.plot(x, mean, ls=ls, marker=marker, ms=4, color=color, label=label, lw=1.8)
    ax.fill_between(x, np.clip(mean - half, 0, 1), np.clip(mean + half, 0, 1), color=color, alpha=0.18, lw=0)


@contextmanager
def cpu_threads(n: int | None):
    """Run with ``n`` torch CPU threads (None or 0: :func:`audit.config.default_threads`), restoring
    the previous number after.

    One thread is much faster than two on a machine whose cores other processes are using (OpenMP
    threads spin waiting for each other)."""
    import torch

    from audit.config import default_threads

    before = torch.get_num_threads()
    torch.set_num_threads(int(n) if n else default_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)

