"""The cleaned label list: one row per training example, written as CSV or Parquet, and beside it the
flagged test labels, listed for a person to check and never removed automatically.

Label rule (``final_label`` and ``label_source``):

=================================  ==========================  ============================
row                                ``final_label``             ``label_source``
=================================  ==========================  ============================
not flagged, no decision           given label                 ``given``
flagged, no decision               suggested label (or         ``suggested``
                                   dropped with drop_flagged)
reviewer decided ``keep``          given label                 ``reviewer``
reviewer decided ``relabel``       the reviewer's class        ``reviewer``
reviewer decided ``remove``        (row dropped)               ``reviewer``
=================================  ==========================  ============================

Decisions count only with ``use_decisions``; the newest effective decision per example wins
(:meth:`audit.decisions.DecisionStore.latest`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from audit.errors import AuditInputError
from audit.io import atomic_write_bytes, read_parquet_metadata, write_parquet

EXPORT_COLUMNS = ["example_id", "index", "given_label", "suggested_label", "issue_score", "is_label_issue",
                  "final_label"]
PROVENANCE_COLUMNS = ["label_source", "decision", "reviewer", "decided_at"]
SIGNAL_COLUMNS = ["category", "signals_fired", "category_reason", "evidence_confidence", "path", "clean_label",
                  "is_injected_noise"]
TEST_COLUMNS = ["example_id", "index", "given_label", "suggested_label", "issue_score", "is_label_issue",
                "reviewed_label"]


def load_examples(run_dir: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    path = Path(run_dir) / "examples.parquet"
    if not path.exists():
        raise AuditInputError(f"{path}: no such file (is {run_dir} a finished run directory?)")
    return pd.read_parquet(path, columns=columns)


def _with_decisions(df: pd.DataFrame, run_dir: str | Path) -> pd.DataFrame:
    """``df`` with the newest effective decision per example merged in (``decision``, ``new_label``,
    ``reviewer``, ``decided_at``; empty where none)."""
    from audit.decisions import DecisionStore

    dec = DecisionStore(Path(run_dir)).latest().drop(columns=["seq"])
    out = df.merge(dec, how="left", on="example_id")
    out["decision"] = out["decision"].fillna("")
    out["reviewer"] = out["reviewer"].fillna("")
    out["decided_at"] = out["decided_at"].fillna("")
    return out


def cleaned_labels(run_dir: str | Path, *, drop_flagged: bool = False, use_decisions: bool = False,
                   examples: pd.DataFrame | None = None) -> pd.DataFrame:
    """Training rows with ``final_label``: the suggested label where flagged, the given one elsewhere.

    With ``drop_flagged``, flagged rows are removed instead of relabelled. With ``use_decisions``, a
    person's review decisions (the newest per example) override the automatic rule: ``keep`` keeps
    the given label, ``relabel`` sets the chosen class, ``remove`` drops the row; provenance columns
    ``label_source``, ``decision``, ``reviewer`` and ``decided_at`` are added. The signals behind
    each row (``category``, ``signals_fired``, ...) follow where the run has them. Only training rows:
    test labels are listed by :func:`flagged_test_labels`, never removed.

    ``examples``: the run's ``examples.parquet`` if already loaded (not modified); read otherwise.
    """
    df = load_examples(run_dir) if examples is None else examples
    df = df[df["split"] == "train"].copy()
    flagged = df["is_label_issue"].to_numpy(bool)
    df["final_label"] = np.where(flagged, df["suggested_label"], df["given_label"]).astype(np.int64)
    df["label_source"] = np.where(flagged, "suggested", "given")
    keep = ~flagged if drop_flagged else np.ones(len(df), bool)
    cols = list(EXPORT_COLUMNS)
    if use_decisions:
        df = _with_decisions(df, run_dir)
        d = df["decision"]
        relabel = (d == "relabel").to_numpy()
        kept = (d == "keep").to_numpy()
        df.loc[relabel, "final_label"] = df.loc[relabel, "new_label"].astype(np.int64)
        df.loc[kept, "final_label"] = df.loc[kept, "given_label"]
        df.loc[d.isin(["keep", "relabel", "remove"]).to_numpy(), "label_source"] = "reviewer"
        keep = np.where(d == "remove", False, np.where(relabel | kept, True, keep))
        cols += PROVENANCE_COLUMNS
    else:
        cols += ["label_source"]
    cols += [c for c in SIGNAL_COLUMNS if c in df.columns]
    out = df.loc[keep, cols].reset_index(drop=True)
    out["final_label"] = out["final_label"].astype(np.int64)
    return out


def flagged_test_labels(run_dir: str | Path, *, use_decisions: bool = False,
                        examples: pd.DataFrame | None = None) -> pd.DataFrame:
    """Test rows a person should look at: every flagged test example, and with ``use_decisions``
    every test example a reviewer decided on. Nothing here is removed: ``reviewed_label`` is the
    reviewer's class after ``relabel``, the given label otherwise, and a ``remove`` decision is listed
    (``decision`` = ``remove``) for the person to act on. ``examples`` as in :func:`cleaned_labels`."""
    df = load_examples(run_dir) if examples is None else examples
    df = df[df["split"] == "test"].copy()
    cols = list(TEST_COLUMNS)
    df["reviewed_label"] = df["given_label"].astype(np.int64)
    show = df["is_label_issue"].to_numpy(bool)
    if use_decisions:
        df = _with_decisions(df, run_dir)
        relabel = (df["decision"] == "relabel").to_numpy()
        df.loc[relabel, "reviewed_label"] = df.loc[relabel, "new_label"].astype(np.int64)
        show = show | (df["decision"] != "").to_numpy()
        cols += ["decision", "reviewer", "decided_at"]
    cols += [c for c in SIGNAL_COLUMNS if c in df.columns]
    cols += [c for c in ("pred_natural", "pred_pgd", "pred_trades") if c in df.columns]
    out = df.loc[show, cols].sort_values("issue_score", ascending=False, kind="stable").reset_index(drop=True)
    out["reviewed_label"] = out["reviewed_label"].astype(np.int64)
    return out


def flagged_test_path(out: str | Path) -> Path:
    """Where :func:`export_labels` lists the flagged test labels: ``labels.csv`` -> ``labels.flagged-test.csv``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.flagged-test{out.suffix}")


def _write(df: pd.DataFrame, out: Path, run_dir: str | Path, meta: dict) -> None:
    if out.suffix == ".csv":
        atomic_write_bytes(out, df.to_csv(index=False).encode())
    else:
        run_meta = read_parquet_metadata(Path(run_dir) / "examples.parquet")
        write_parquet(out, df, {"source_run": str(run_dir), "class_names": run_meta.get("class_names"), **meta})


def export_labels(run_dir: str | Path, out: str | Path, *, test_out: str | Path | None = None,
                  **kwargs) -> pd.DataFrame:
    """Write :func:`cleaned_labels` to ``out`` (``.csv`` or ``.parquet``) and :func:`flagged_test_labels`
    to ``test_out`` (default :func:`flagged_test_path`), both atomically; return the cleaned labels.

    ``kwargs``: ``drop_flagged``, ``use_decisions`` as in :func:`cleaned_labels`.
    """
    out = Path(out)
    test_out = flagged_test_path(out) if test_out is None else Path(test_out)
    for p, opt in ((out, "--out"), (test_out, "--test-out")):
        if p.suffix not in (".csv", ".parquet"):
            raise AuditInputError(f"{opt} {p}: must end in .csv or .parquet")
    if test_out.resolve() == out.resolve():
        raise AuditInputError(f"--test-out {test_out}: must differ from --out")
    df = cleaned_labels(run_dir, **kwargs)
    test = flagged_test_labels(run_dir, use_decisions=kwargs.get("use_decisions", False))
    _write(df, out, run_dir, {"split": "train", **kwargs})
    _write(test, test_out, run_dir, {"split": "test", "flagged_test_labels": True, **kwargs})
    return df
