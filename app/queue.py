"""The review queue as plain functions of the examples table and the decisions (no Streamlit here).

A queue is an array of row positions into ``examples.parquet``, most suspicious first; the app shows
one page of it at a time and moves to the next example after each decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from app import issue_types

CATEGORIES = ("mislabelled", "ambiguous", "atypical", "ok")
STATUSES = ("to review", "decided", "all")
# Which examples to review: the flagged queue, or the random samples that keep the app's estimates
# honest (audit.calibration): random flagged checks (the precision of the flags below the part of the
# queue reviewed so far) and a random sample of unflagged training examples (what the flags miss).
SAMPLES = {"flagged queue": None, "random checks": True, "unflagged sample": False}
SAMPLE_SIZE = 50
SORTS = {
    "issue score": ("issue_score", False),
    "evidence confidence": ("evidence_confidence", False),
    "given label": ("given_label", True),
}


@dataclass(frozen=True)
class Filters:
    """What the person asked to see. Empty tuples mean "no restriction"."""

    split: str = "train"
    flagged_only: bool = True
    categories: tuple[str, ...] = ()
    classes: tuple[int, ...] = ()
    signals: tuple[str, ...] = ()
    score: tuple[float, float] = (0.0, 1.0)
    status: str = "to review"
    sort: str = "issue score"
    sample: str = "flagged queue"
    # "label" (label issues, the default) or an issue type (app.issue_types): its flagged rows, both splits,
    # in the type's own order; only the classes and status filters apply
    issue_type: str = issue_types.LABEL
    extra: dict = field(default_factory=dict, compare=False)


def signal_names(df: pd.DataFrame) -> list[str]:
    """Signals in the run, from the ``is_<name>_issue`` columns (cleanlab Datalab's naming), less the issue
    types beyond label errors (:mod:`app.issue_types`), which share the shape but are no label signal."""
    types = set(issue_types.TYPES)
    return [c[3:-6] for c in df.columns if c.startswith("is_") and c.endswith("_issue") and c != "is_label_issue"
            and c[3:-6] not in types]


def nothing_flagged(df: pd.DataFrame, split: str) -> bool:
    """Whether no row of ``split`` is flagged (the queue then lists the top-ranked rows instead)."""
    return not bool(df.loc[df["split"] == split, "is_label_issue"].to_numpy(bool).any())


def review_queue(df: pd.DataFrame, decided_ids: pd.Index | np.ndarray | list, f: Filters) -> np.ndarray:
    """Row positions of ``df`` that pass ``f``, sorted (default: ``issue_score`` high to low, ties by
    ``example_id``). ``decided_ids``: example ids with an effective decision. With ``f.sample`` a
    random sample (:data:`SAMPLES`), its rows in the sample's own order, filtered by status only."""
    if SAMPLES.get(f.sample) is not None:
        return _sample_rows(df, decided_ids, f)
    if f.issue_type != issue_types.LABEL:
        return _issue_type_queue(df, decided_ids, f)
    m = np.array(df["split"].to_numpy() == f.split, dtype=bool)
    if f.flagged_only and nothing_flagged(df, f.split):
        pass  # never a silent zero: with nothing flagged the queue is the top-ranked examples
    elif f.flagged_only:
        m &= df["is_label_issue"].to_numpy(bool)
    if f.categories and "category" in df.columns:
        m &= df["category"].isin(f.categories).to_numpy()
    if f.classes:
        m &= df["given_label"].isin(f.classes).to_numpy()
    if f.signals:
        fired = np.zeros(len(df), bool)
        for s in f.signals:
            col = f"is_{s}_issue"
            if col in df.columns:
                fired |= df[col].to_numpy(bool)
        m &= fired
    lo, hi = f.score
    score = df["issue_score"].to_numpy(float)
    m &= (score >= lo - 1e-12) & (score <= hi + 1e-12)
    if f.status != "all":
        is_decided = df["example_id"].isin(pd.Index(decided_ids)).to_numpy()
        m &= is_decided if f.status == "decided" else ~is_decided
    rows = np.flatnonzero(m)
    col, ascending = SORTS.get(f.sort, SORTS["issue score"])
    if col not in df.columns:
        col, ascending = "issue_score", False
    key = df[col].to_numpy()[rows].astype(float)
    key = np.nan_to_num(key, nan=-np.inf if not ascending else np.inf)
    ids = df["example_id"].to_numpy()[rows].astype(str)
    order = np.lexsort((ids, key if ascending else -key))
    return rows[order]


def _issue_type_queue(df: pd.DataFrame, decided_ids, f: Filters) -> np.ndarray:
    """The flagged rows of issue type ``f.issue_type`` (both splits, in the type's order), by class and status."""
    rows = issue_types.ordered_rows(df, f.issue_type)
    if f.classes:
        rows = rows[df["given_label"].iloc[rows].isin(f.classes).to_numpy()]
    if f.status != "all":
        is_decided = df["example_id"].iloc[rows].isin(pd.Index(decided_ids)).to_numpy()
        rows = rows[is_decided if f.status == "decided" else ~is_decided]
    return rows


def sample_rows(df: pd.DataFrame, sample: str) -> np.ndarray:
    """Row positions of the whole random sample ``sample`` (a key of :data:`SAMPLES` other than the
    flagged queue), in the sample's own order, decided or not: training rows only."""
    from audit.calibration import random_sample

    ids = random_sample(df, size=SAMPLE_SIZE, seed=0, flagged=SAMPLES[sample])
    rows = pd.Index(df["example_id"].astype(str)).get_indexer(ids)
    return rows[rows >= 0]


def _sample_rows(df: pd.DataFrame, decided_ids, f: Filters) -> np.ndarray:
    rows = sample_rows(df, f.sample)
    if f.status != "all":
        is_decided = df["example_id"].iloc[rows].isin(pd.Index(decided_ids)).to_numpy()
        rows = rows[is_decided if f.status == "decided" else ~is_decided]
    return rows


def _position(queue_ids: np.ndarray, current: str | None) -> int:
    if current is None or not len(queue_ids):
        return -1
    hit = np.flatnonzero(np.asarray(queue_ids).astype(str) == str(current))
    return int(hit[0]) if len(hit) else -1


def next_after(queue_ids: np.ndarray, current: str | None) -> str | None:
    """The example to show after ``current`` is decided: the one after it in the queue, wrapping
    around to the start (so skipped examples come back), never ``current`` itself; None when the
    queue holds nothing else."""
    ids = np.asarray(queue_ids).astype(str)
    pos = _position(ids, current)
    rest = np.concatenate([ids[pos + 1:], ids[:pos]]) if pos >= 0 else ids
    return str(rest[0]) if len(rest) else None


def previous_before(queue_ids: np.ndarray, current: str | None) -> str | None:
    """The example before ``current`` in the queue (None at the start)."""
    ids = np.asarray(queue_ids).astype(str)
    pos = _position(ids, current)
    if pos < 0:
        return str(ids[-1]) if len(ids) else None
    return str(ids[pos - 1]) if pos > 0 else None


def page_of(queue_ids: np.ndarray, current: str | None, page_size: int) -> int:
    """0-based page holding ``current`` (0 when it is not in the queue)."""
    pos = _position(queue_ids, current)
    return pos // page_size if pos >= 0 else 0
