"""The issue types beyond label errors (:mod:`audit.issues`) as the app lists them: plain functions of the
examples table and the manifest (no Streamlit here).

Every type has one shape in ``examples.parquet``: ``<name>_score`` (higher = worse), ``is_<name>_issue`` and
``<name>_reason``; near duplicates add ``duplicate_group`` (-1 when none) and leaks ``leak_partner`` (the
training ``example_id``). A run made before the types existed has none of these columns: every function
here then finds no type and no row. The table is input (a run directory may come from anyone): a column
that does not hold what the pipeline writes reads as "not flagged" / missing, never as an error.

Descriptions come from :data:`audit.issues.ISSUE_TYPES` (kept once beside each type's code), never
re-worded here.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import pandas as pd

from audit.issues import ISSUE_TYPES
from audit.issues import ROW_TYPES as TYPES

LABEL = "label"  # the review queue's default: label issues (``is_label_issue``)
DUPLICATE, LEAK, IMBALANCE = "near_duplicate", "leak", "class_imbalance"
SPLIT_WORDS = {("train",): "training images", ("test",): "test images", ("train", "test"): "training and test images"}


_MEMO: dict = {}


def _memo(df: pd.DataFrame, what: str, compute):
    """``compute()`` once per table object (the app's examples table is loaded once per file version, shared
    and never changed): the groups and orders are asked for several times per page."""
    key = (id(df), what)
    hit = _MEMO.get(key)
    if hit is not None and hit[0]() is df:
        return hit[1]
    value = compute()
    if len(_MEMO) > 64:
        _MEMO.clear()
    _MEMO[key] = (weakref.ref(df), value)
    return value


def description(name: str) -> str:
    """The type's one-line description, as its code keeps it ("" for a name that is no type)."""
    t = ISSUE_TYPES.get(str(name))
    return t.description if t is not None else ""


def judged(name: str) -> str:
    """Which rows the type judges, in words ("training images", "test images", ...)."""
    t = ISSUE_TYPES.get(str(name))
    return SPLIT_WORDS.get(tuple(t.splits), ", ".join(t.splits)) if t is not None else ""


def types_in(df: pd.DataFrame) -> list[str]:
    """The issue types whose flag column the table has, in the registry's order (none for an older run)."""
    return [n for n in TYPES if f"is_{n}_issue" in df.columns]


def _bool(s: pd.Series) -> np.ndarray:
    """A flag column as bool: True only where it holds True (or a non-zero number); anything else False."""
    if pd.api.types.is_bool_dtype(s):
        return s.fillna(False).to_numpy(bool)
    if pd.api.types.is_numeric_dtype(s):
        v = s.to_numpy(float, na_value=np.nan)
        return np.nan_to_num(v, nan=0.0) != 0
    return s.map(lambda x: x is True or (isinstance(x, (bool, np.bool_)) and bool(x))).to_numpy(bool)


def flags(df: pd.DataFrame, name: str) -> np.ndarray:
    """``is_<name>_issue`` as a bool array (all False when the column is missing)."""
    col = f"is_{name}_issue"
    return _bool(df[col]) if col in df.columns else np.zeros(len(df), bool)


def scores(df: pd.DataFrame, name: str) -> np.ndarray:
    """``<name>_score`` as floats (NaN where missing or not a number)."""
    col = f"{name}_score"
    if col not in df.columns:
        return np.full(len(df), np.nan)
    s = df[col]
    if pd.api.types.is_bool_dtype(s):
        return np.full(len(df), np.nan)
    return pd.to_numeric(s, errors="coerce").to_numpy(float, na_value=np.nan)


def text_column(df: pd.DataFrame, col: str) -> np.ndarray:
    """A text column as str (empty where missing or not text)."""
    if col not in df.columns:
        return np.full(len(df), "", dtype=object)
    return df[col].map(lambda x: x if isinstance(x, str) else "").to_numpy(object)


def reasons(df: pd.DataFrame, name: str) -> np.ndarray:
    """``<name>_reason`` as text."""
    return text_column(df, f"{name}_reason")


def counts(df: pd.DataFrame) -> dict[str, int]:
    """Flagged rows per type the table has (the page's and the Overview's counts: the table's own)."""
    return {n: int(flags(df, n).sum()) for n in types_in(df)}


def _worst_first(df: pd.DataFrame, rows: np.ndarray, name: str) -> np.ndarray:
    """``rows`` by the type's score, high to low (missing last), ties by ``example_id``."""
    s = np.nan_to_num(scores(df, name)[rows], nan=-np.inf)
    ids = df["example_id"].to_numpy()[rows].astype(str)
    return rows[np.lexsort((ids, -s))]


@dataclass(frozen=True)
class Group:
    """One near-duplicate group: its id, its rows (by ``example_id``), and whether their labels disagree."""

    group: int
    rows: np.ndarray
    conflicting: bool


def _group_ids(df: pd.DataFrame) -> np.ndarray:
    if "duplicate_group" not in df.columns or pd.api.types.is_bool_dtype(df["duplicate_group"]):
        return np.full(len(df), -1, np.int64)
    g = pd.to_numeric(df["duplicate_group"], errors="coerce").to_numpy(float, na_value=np.nan)
    ok = np.isfinite(g) & (g >= 0) & (g == np.round(g)) & (g < 2**62)
    return np.where(ok, np.nan_to_num(g, nan=-1.0), -1).astype(np.int64)


def duplicate_groups(df: pd.DataFrame) -> list[Group]:
    """The near-duplicate groups of the flagged rows: groups whose labels disagree first, then the largest,
    then by group id; members by ``example_id``. A flagged row without a group stands alone."""
    return _memo(df, "groups", lambda: _duplicate_groups(df))


def _duplicate_groups(df: pd.DataFrame) -> tuple[Group, ...]:
    flag = flags(df, DUPLICATE)
    if not flag.any():
        return ()
    gid = _group_ids(df)
    labels = pd.to_numeric(df["given_label"], errors="coerce").to_numpy(float, na_value=np.nan)
    ids = df["example_id"].to_numpy().astype(str)
    out = []
    rows = np.flatnonzero(flag)
    grouped = rows[gid[rows] >= 0]
    grouped = grouped[np.lexsort((ids[grouped], gid[grouped]))]  # by group, then id: one pass splits them
    starts = np.flatnonzero(np.r_[True, np.diff(gid[grouped]) != 0]) if len(grouped) else np.array([], int)
    for members in np.split(grouped, starts[1:]) if len(grouped) else []:
        lab = labels[members]
        out.append(Group(int(gid[members[0]]), members, bool(np.nanmax(lab) != np.nanmin(lab))
                         if np.isfinite(lab).any() else False))
    for r in rows[gid[rows] < 0]:
        out.append(Group(-1, np.array([r]), False))
    out.sort(key=lambda x: (not x.conflicting, -len(x.rows), x.group < 0, x.group, ids[x.rows[0]]))
    for g in out:
        g.rows.setflags(write=False)
    return tuple(out)


def leak_pairs(df: pd.DataFrame) -> tuple[tuple[int, int, str], ...]:
    """(test row, training row or -1 when the table does not hold it, partner id as recorded) of every
    flagged leak, highest ``leak_score`` first."""
    return _memo(df, "leaks", lambda: _leak_pairs(df))


def _leak_pairs(df: pd.DataFrame) -> tuple[tuple[int, int, str], ...]:
    rows = _worst_first(df, np.flatnonzero(flags(df, LEAK)), LEAK)
    partner = text_column(df, "leak_partner")
    index = pd.Index(df["example_id"].astype(str))
    pos = index.get_indexer(partner[rows].astype(str)) if len(rows) else np.array([], int)
    split = df["split"].to_numpy().astype(str)
    out = []
    for r, p in zip(rows, pos):
        p = int(p) if p >= 0 and split[p] == "train" else -1  # a partner is a training row, or none
        out.append((int(r), p, str(partner[r])))
    return tuple(out)


def ordered_rows(df: pd.DataFrame, name: str) -> np.ndarray:
    """The flagged rows of type ``name`` in the order the app lists them: near duplicates group by group
    (:func:`duplicate_groups`), the others worst first (read-only)."""
    return _memo(df, f"order {name}", lambda: _ordered_rows(df, name))


def _ordered_rows(df: pd.DataFrame, name: str) -> np.ndarray:
    if name == DUPLICATE:
        groups = duplicate_groups(df)
        rows = np.concatenate([g.rows for g in groups]).astype(np.int64) if groups else np.array([], np.int64)
    else:
        rows = _worst_first(df, np.flatnonzero(flags(df, name)), name)
    rows.setflags(write=False)
    return rows


def order_text(name: str) -> str:
    return "group by group, conflicting labels first" if name == DUPLICATE else "worst first"


def row_issues(df: pd.DataFrame, i: int) -> list[tuple[str, str]]:
    """(type, reason) of every type that flags row ``i``."""
    out = []
    for n in types_in(df):
        if flags(df.iloc[[i]], n)[0]:
            out.append((n, reasons(df.iloc[[i]], n)[0]))
    return out


# -- the manifest's side -----------------------------------------------------------------------------
def manifest_types(man: dict) -> dict:
    """``manifest["issue_types"]`` when it is a mapping of mappings (an older or odd manifest: empty)."""
    it = man.get("issue_types") if isinstance(man, dict) else None
    if not isinstance(it, dict):
        return {}
    return {k: v for k, v in it.items() if isinstance(k, str) and isinstance(v, dict)}


def _number(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if np.isfinite(x) else None


def threshold(man: dict, name: str) -> float | None:
    """The threshold the run flagged ``name`` at (a number from the manifest), or None."""
    return _number(manifest_types(man).get(name, {}).get("threshold"))


def threshold_rule(man: dict, name: str) -> str:
    """How the threshold was set, when the manifest says it in words (text from data)."""
    v = manifest_types(man).get(name, {}).get("threshold_rule")
    return v if isinstance(v, str) else ""


def type_table(df: pd.DataFrame, man: dict) -> pd.DataFrame:
    """One row per type the table has: its name, the flagged count (the table's), which rows it judges,
    its threshold and its description."""
    n = counts(df)
    return pd.DataFrame({"issue type": list(n), "flagged": list(n.values()),
                         "judges": [judged(t) for t in n],
                         "threshold": [threshold(man, t) for t in n],
                         "description": [description(t) for t in n]})


def class_summary(df: pd.DataFrame, man: dict, class_names) -> pd.DataFrame:
    """Per class: training count (the table's), its ratio to the median class, the natural model's test
    accuracy (the table's ``correct_natural``, else the manifest's) and flags ("rare" where the table
    flags its training rows ``class_imbalance``, "under-performing" where the manifest says so). Flagged
    classes first, then by class index."""
    k = len(class_names)
    labels = pd.to_numeric(df["given_label"], errors="coerce").to_numpy(float, na_value=np.nan)
    ok = np.isfinite(labels) & (labels >= 0) & (labels < k)
    lab = np.where(ok, labels, -1).astype(np.int64)
    split = df["split"].to_numpy().astype(str)
    tr, te = ok & (split == "train"), ok & (split == "test")
    count = np.bincount(lab[tr], minlength=k)[:k]
    med = float(np.median(count)) if k else 0.0
    ratio = count / med if med > 0 else np.full(k, np.nan)
    acc = np.full(k, np.nan)
    if "correct_natural" in df.columns and te.any():
        c = pd.to_numeric(df["correct_natural"], errors="coerce").to_numpy(float, na_value=np.nan)
        good = te & np.isfinite(c)
        n_te = np.bincount(lab[good], minlength=k)[:k]
        right = np.bincount(lab[good], weights=c[good], minlength=k)[:k]
        acc = np.where(n_te > 0, right / np.maximum(n_te, 1), np.nan)
    ci = manifest_types(man).get(IMBALANCE, {})
    per_class = ci.get("per_class") if isinstance(ci.get("per_class"), list) else []
    under = np.zeros(k, bool)
    for e in per_class:
        if not isinstance(e, dict):
            continue
        c = e.get("class")
        if isinstance(c, int) and not isinstance(c, bool) and 0 <= c < k:
            under[c] = e.get("under_performing") is True
            if not np.isfinite(acc[c]) and _number(e.get("test_accuracy_natural")) is not None:
                acc[c] = _number(e.get("test_accuracy_natural"))
    rare = np.zeros(k, bool)
    if f"is_{IMBALANCE}_issue" in df.columns:
        f = flags(df, IMBALANCE) & tr
        rare[np.unique(lab[f])] = True
    words = [", ".join(w for w, on in (("rare", r), ("under-performing", u)) if on) for r, u in zip(rare, under)]
    out = pd.DataFrame({"class": [str(c) for c in class_names], "train": count, "ratio to median": ratio,
                        "test accuracy": acc, "flags": words})
    order = np.lexsort((np.arange(k), ~(rare | under)))
    return out.iloc[order].reset_index(drop=True)


def accuracy_owner(man: dict) -> str:
    """Whose test accuracy the class balance reads: the natural model's, or, for a run that trained none
    (``--models none``), the user's model's (its probabilities' top class)."""
    cfg = man.get("config") if isinstance(man.get("config"), dict) else {}
    return "your model's" if cfg.get("models") == [] else "the natural model's"


def class_lines(df: pd.DataFrame, man: dict, class_names) -> list[str]:
    """The class balance in sentences (plain text: names come from data): the median class size, the rare
    classes and the under-performing ones."""
    t = class_summary(df, man, class_names)
    if not len(t):
        return []
    med = float(np.median(t["train"])) if len(t) else 0.0
    rare = [c for c, f in zip(t["class"], t["flags"]) if "rare" in f]
    under = [c for c, f in zip(t["class"], t["flags"]) if "under-performing" in f]
    ci = manifest_types(man).get(IMBALANCE, {})
    thr = _number(ci.get("threshold"))
    overall = _number(ci.get("overall_test_accuracy_natural"))
    below = f" (fewer than {thr:.0%} of the median)" if thr is not None else ""
    lines = [f"Median class: {med:,.0f} training images. Rare classes{below}: {', '.join(rare) if rare else 'none'}."]
    if IMBALANCE in manifest_types(man) or under:
        vs = f" (overall {overall:.1%})" if overall is not None else ""
        lines.append(f"Under-performing classes, well below {accuracy_owner(man)} overall test accuracy"
                     f"{vs}: {', '.join(under) if under else 'none'}.")
    return lines
