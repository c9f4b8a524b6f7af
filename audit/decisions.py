"""Review decisions: an append-only SQLite log (WAL mode) inside the run directory.

Each row is one decision by one reviewer at one time; the newest row per example wins. Rows are
written when the person decides, never held only in a browser session, and never updated or deleted:
an ``undo`` is itself a row that reverts the example to the decision before it.

Decisions:

``keep``     the given label is right (the example stays, label unchanged)
``relabel``  the right label is ``new_label`` (a class index)
``remove``   the example should leave the training set (unrecognisable, out of distribution, duplicate)
``skip``     looked at, not decided; recorded for the audit trail, ignored by :meth:`DecisionStore.latest`
``undo``     revert this example's newest effective decision
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from audit.errors import AuditError, AuditInputError

DECISIONS = ("keep", "relabel", "remove", "skip", "undo")
EFFECTIVE = ("keep", "relabel", "remove")
DB_NAME = "decisions.sqlite"
MAX_ID_CHARS = 1024
MAX_REVIEWER_CHARS = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    example_id TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('keep', 'relabel', 'remove', 'skip', 'undo')),
    new_label INTEGER,
    reviewer TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    based_on INTEGER
);
CREATE INDEX IF NOT EXISTS decisions_example ON decisions (example_id, seq);
"""
_LOG_COLUMNS = ["seq", "example_id", "decision", "new_label", "reviewer", "decided_at", "based_on"]
LATEST_COLUMNS = ["example_id", "decision", "new_label", "reviewer", "decided_at", "seq"]


class DecisionStore:
    """The decision log of one run directory (``RUN/decisions.sqlite``, created by the first decision).

    Safe to use from several threads and processes at once: every call opens its own connection,
    writes take SQLite's write lock (``BEGIN IMMEDIATE``), and readers never block writers (WAL).
    """

    def __init__(self, run_dir: str | Path, num_classes: int | None = None):
        """``num_classes``: relabels must name a class in ``[0, num_classes)``; None reads the count from
        the run's ``manifest.json`` (any non-negative label below the loaders' class bound without one)."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise AuditInputError(f"{run_dir}: no such run directory")
        self.path = run_dir / DB_NAME
        for p in (self.path, *(self.path.with_name(self.path.name + s) for s in ("-wal", "-shm", "-journal"))):
            if p.is_symlink():
                raise AuditInputError(f"{p}: a symbolic link; the decision log must be a regular file in the run")
        self.num_classes = _class_count(run_dir) if num_classes is None else int(num_classes)
        self._ready = False
        if self.path.exists():
            with self._connect(create=True):
                pass

    @contextmanager
    def _connect(self, create: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection, or with the file missing and not ``create``, one to an empty in-memory log
        (reading a run nobody reviewed writes nothing into it). A file that is not a decision log
        (not SQLite, another schema) is an :class:`AuditInputError` naming it."""
        try:
            if not create and not self.path.exists():
                with closing(sqlite3.connect(":memory:", isolation_level=None)) as con:
                    con.executescript(_SCHEMA)
                    yield con
                return
            with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as con:
                con.execute("PRAGMA synchronous=NORMAL")
                if create and not self._ready:
                    self._initialise(con)
                yield con
        except sqlite3.DatabaseError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise
            raise AuditInputError(f"{self.path}: not a benign-audit decision log ({e})") from None

    def _initialise(self, con: sqlite3.Connection) -> None:
        """WAL mode (persistent in the file) and the schema, once per store. Switching the journal
        mode can fail with "database is locked" at once, without waiting for the busy timeout, when
        several writers create the file together, so it is retried with back-off."""
        for attempt in range(100):
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(_SCHEMA)
                self._ready = True
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                time.sleep(min(0.5, 0.01 * (attempt + 1)))
        raise AuditError(f"{self.path}: database stayed locked while being created")

    def record(self, example_id: str, decision: str, *, reviewer: str = "anonymous", new_label: int | None = None,
               based_on: int | None = None) -> dict:
        """Append a decision and return it as a dict (``seq``, ``decided_at``, ..., ``conflict``).

        ``based_on`` is the ``seq`` of the newest non-skip row the reviewer saw for this example
        (:meth:`last_seq` when the example was shown; None if it had none). When someone else wrote a
        non-skip row since, the new row is still written (nothing is lost) and ``conflict`` holds that
        other row (``seq``, ``decision``, ``new_label``, ``reviewer``, ``decided_at``) with ``agrees``:
        whether it made the same decision. A ``skip`` never conflicts and is never conflicted with.
        """
        new_label = self._check(example_id, decision, new_label, reviewer, based_on)
        reviewer = (reviewer or "").strip() or "anonymous"
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        with self._connect(create=True) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                prev = con.execute(
                    "SELECT seq, decision, new_label, reviewer, decided_at FROM decisions "
                    "WHERE example_id=? AND decision != 'skip' ORDER BY seq DESC LIMIT 1", (example_id,)).fetchone()
                cur = con.execute(
                    "INSERT INTO decisions (example_id, decision, new_label, reviewer, decided_at, based_on) "
                    "VALUES (?, ?, ?, ?, ?, ?)", (example_id, decision, new_label, reviewer, now, based_on))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        out = {"seq": cur.lastrowid, "example_id": example_id, "decision": decision, "new_label": new_label,
               "reviewer": reviewer, "decided_at": now, "based_on": based_on, "conflict": None}
        if decision != "skip" and prev is not None and prev[0] != based_on:
            other = dict(zip(("seq", "decision", "new_label", "reviewer", "decided_at"), prev))
            other["agrees"] = other["decision"] == decision and other["new_label"] == new_label
            out["conflict"] = other
        return out

    def _check(self, example_id, decision, new_label, reviewer, based_on) -> int | None:
        """The checked ``new_label`` (None unless ``relabel``); :class:`AuditInputError` on any bad argument."""
        if not isinstance(decision, str) or decision not in DECISIONS:
            raise AuditInputError(f"decision {decision!r}: must be one of {', '.join(DECISIONS)}")
        if not isinstance(example_id, str) or not example_id or len(example_id) > MAX_ID_CHARS:
            raise AuditInputError(f"decision without a valid example_id (a non-empty string of at most "
                                  f"{MAX_ID_CHARS} characters, got {str(example_id)[:60]!r})")
        if reviewer is not None and (not isinstance(reviewer, str) or len(reviewer) > MAX_REVIEWER_CHARS):
            raise AuditInputError(f"reviewer: a name of at most {MAX_REVIEWER_CHARS} characters")
        if based_on is not None and (not _is_int(based_on) or int(based_on) < 0):
            raise AuditInputError(f"based_on {based_on!r}: must be a decision's seq (an integer ≥ 0)")
        if decision != "relabel":
            return None
        if new_label is None:
            raise AuditInputError("decision 'relabel' needs new_label")
        return check_label(new_label, self.num_classes)

    def _check_rows(self, latest: pd.DataFrame) -> None:
        """Refuse effective rows that no store would have written (a tampered or foreign file)."""
        bad = latest[~latest["decision"].isin(EFFECTIVE)]
        if len(bad):
            raise AuditInputError(f"{self.path}: row seq {bad['seq'].iloc[0]}: unknown decision "
                                  f"{str(bad['decision'].iloc[0])[:40]!r}")
        for seq, label in latest.loc[latest["decision"] == "relabel", ["seq", "new_label"]].itertuples(index=False):
            try:
                check_label(label, self.num_classes)
            except AuditInputError as e:
                raise AuditInputError(f"{self.path}: row seq {seq}: {e}") from None

    def log(self, example_id: str | None = None) -> pd.DataFrame:
        """Every row (or every row of one example), oldest first; columns ``seq, example_id, decision,
        new_label`` (nullable Int64), ``reviewer, decided_at`` (ISO 8601 UTC), ``based_on``."""
        where, params = ("WHERE example_id=?", (example_id,)) if example_id is not None else ("", ())
        with self._connect() as con:
            rows = con.execute(f"SELECT {', '.join(_LOG_COLUMNS)} FROM decisions {where} ORDER BY seq",
                               params).fetchall()
        df = pd.DataFrame(rows, columns=_LOG_COLUMNS)
        for c in ("new_label", "based_on"):
            df[c] = df[c].astype("Int64")
        return df

    def latest(self) -> pd.DataFrame:
        """The effective decision per example, one row each (columns :data:`LATEST_COLUMNS`, oldest
        decision first). An ``undo`` reverts to the decision before it; ``skip`` is not a decision
        about the label and is left out; an example whose decisions were all undone has no row."""
        effective: dict[str, list] = {}
        stacks: dict[str, list] = {}
        with self._connect() as con:
            rows = con.execute("SELECT example_id, decision, new_label, reviewer, decided_at, seq FROM decisions "
                               "WHERE decision != 'skip' ORDER BY seq").fetchall()
        for r in rows:
            stack = stacks.setdefault(r[0], [])
            if r[1] == "undo":
                if stack:
                    stack.pop()
            else:
                stack.append(r)
        for ex, stack in stacks.items():
            if stack:
                effective[ex] = stack[-1]
        out = pd.DataFrame(sorted(effective.values(), key=lambda r: r[5]), columns=LATEST_COLUMNS)
        self._check_rows(out)
        out["new_label"] = out["new_label"].astype("Int64")
        out["seq"] = out["seq"].astype("int64")
        return out

    def last_seq(self, example_id: str) -> int | None:
        """``seq`` of the newest non-skip row of ``example_id`` (what :meth:`record`'s ``based_on`` wants)."""
        with self._connect() as con:
            row = con.execute("SELECT MAX(seq) FROM decisions WHERE example_id=? AND decision != 'skip'",
                              (example_id,)).fetchone()
        return row[0]

    def version(self) -> int:
        """The newest ``seq`` (0 when empty): changes whenever anyone writes, so callers can cache
        :meth:`latest` by it."""
        with self._connect() as con:
            row = con.execute("SELECT MAX(seq) FROM decisions").fetchone()
        return int(row[0] or 0)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_label(label, num_classes: int | None) -> int:
    """``label`` as an int if it is a class index in ``[0, num_classes)`` (without a class count:
    non-negative and below the loaders' bound), else :class:`AuditInputError`."""
    from audit.data.limits import MAX_CLASSES

    hi = MAX_CLASSES if num_classes is None else num_classes
    ok = _is_int(label) or (isinstance(label, float) and math.isfinite(label) and label.is_integer())
    if not ok or not 0 <= int(label) < hi:
        raise AuditInputError(f"relabel to {str(label)[:40]!r}: not a class of this run (an integer in 0..{hi - 1})")
    return int(label)


def _class_count(run_dir: Path) -> int | None:
    """How many classes ``run_dir/manifest.json`` names; None without a manifest."""
    path = run_dir / "manifest.json"
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_bytes())["dataset"]["class_names"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise AuditInputError(f"{path}: not a run manifest with dataset.class_names") from None
    if not isinstance(names, list) or not names:
        raise AuditInputError(f"{path}: dataset.class_names is not a non-empty list")
    return len(names)
