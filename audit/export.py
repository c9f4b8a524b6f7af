"""The cleaned label list: one row per training example, written as CSV or Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from audit.errors import AuditInputError
from audit.io import atomic_write_bytes, read_parquet_metadata, write_parquet

EXPORT_COLUMNS = ["example_id", "index", "given_label", "suggested_label", "issue_score", "is_label_issue", "final_label"]


def load_examples(run_dir: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    path = Path(run_dir) / "examples.parquet"
    if not path.exists():
        raise AuditInputError(f"{path}: no such file (is {run_dir} a finished run directory?)")
    return pd.read_parquet(path, columns=columns)


def cleaned_labels(run_dir: str | Path, *, drop_flagged: bool = False, use_decisions: bool = False) -> pd.DataFrame:
    """Training rows with ``final_label``: the suggested label where flagged, the given one elsewhere.

    With ``drop_flagged``, flagged rows are removed instead of relabelled. With ``use_decisions``, a
    person's review decisions (the newest per example) override the automatic rule: ``keep`` keeps
    the given label, ``relabel`` sets the chosen class, ``remove`` drops the row; provenance columns
    ``decision``, ``reviewer`` and ``decided_at`` are added.
    """
    df = load_examples(run_dir)
    df = df[df["split"] == "train"].copy()
    flagged = df["is_label_issue"].to_numpy(bool)
    df["final_label"] = np.where(flagged, df["suggested_label"], df["given_label"]).astype(np.int64)
    keep = ~flagged if drop_flagged else np.ones(len(df), bool)
    cols = list(EXPORT_COLUMNS)
    if use_decisions:
        from audit.decisions import DecisionStore

        dec = DecisionStore(Path(run_dir)).latest()
        df = df.merge(dec, how="left", on="example_id")
        d = df["decision"].fillna("")
        relabel = d == "relabel"
        df.loc[relabel, "final_label"] = df.loc[relabel, "new_label"].astype(np.int64)
        df.loc[d == "keep", "final_label"] = df.loc[d == "keep", "given_label"]
        keep = np.where(d == "remove", False, np.where(d.isin(["keep", "relabel"]), True, keep))
        cols += ["decision", "reviewer", "decided_at"]
    cols += [c for c in ("category", "signals_fired", "clean_label", "is_injected_noise") if c in df.columns]
    return df.loc[keep, cols].reset_index(drop=True)


def export_labels(run_dir: str | Path, out: str | Path, **kwargs) -> pd.DataFrame:
    """Write :func:`cleaned_labels` to ``out`` (``.csv`` or ``.parquet``), atomically."""
    out = Path(out)
    if out.suffix not in (".csv", ".parquet"):
        raise AuditInputError(f"--out {out}: must end in .csv or .parquet")
    df = cleaned_labels(run_dir, **kwargs)
    if out.suffix == ".csv":
        atomic_write_bytes(out, df.to_csv(index=False).encode())
    else:
        meta = read_parquet_metadata(Path(run_dir) / "examples.parquet")
        write_parquet(out, df, {"source_run": str(run_dir), "class_names": meta.get("class_names"), **kwargs})
    return df
