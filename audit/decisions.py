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

Each row is bound to what the reviewer saw (DESIGN.md, "Trust boundaries"): the example's ``given_label``
and the fingerprint of its pixels (``content``, the run's ``content_hash`` column where it has one), read
from the run's ``examples.parquet`` when the decision is recorded. A rerun into a reviewed directory (another
seed, noise rate or changed files) may change either; :meth:`DecisionStore.latest` then leaves that decision
out (it is *stale*: made about another label or image than the run now shows) and
:meth:`DecisionStore.stale` lists it with the reason, so nothing a reviewer confirmed is applied to a label
they never saw. The rows stay in the log. A decision for an example the run does not have is refused.

The file is input too: a log carrying triggers, views or tables no store creates (an ``AFTER INSERT``
trigger could delete every new decision while :meth:`DecisionStore.record` reports it saved) is refused,
and every recorded row is read back before ``record`` returns.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from contextlib import closing, contextmanager
from functools import lru_cache
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
    based_on INTEGER,
    given_label INTEGER,
    content TEXT
);
CREATE INDEX IF NOT EXISTS decisions_example ON decisions (example_id, seq);
"""
# Columns added after the first release: an older log gains them (NULL: not bound) when next written.
_ADDED_COLUMNS = {"given_label": "INTEGER", "content": "TEXT"}
_OBJECTS = {("table", "decisions"), ("table", "sqlite_sequence"), ("index", "decisions_example")}
_LOG_COLUMNS = ["seq", "example_id", "decision", "new_label", "reviewer", "decided_at", "based_on", "given_label",
                "content"]
LATEST_COLUMNS = ["example_id", "decision", "new_label", "reviewer", "decided_at", "seq"]
_BOUND_COLUMNS = LATEST_COLUMNS + ["given_label", "content"]
STALE_COLUMNS = _BOUND_COLUMNS + ["stale_reason"]
EXAMPLES = "examples.parquet"


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
        self.run_dir = run_dir
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
        (reading a run nobody reviewed writes nothing into it). Reading a run directory that cannot be
        written (a read-only mount, a received archive) opens the file read-only. A file that is not a
        decision log (not SQLite, another schema, objects no store creates) is an
        :class:`AuditInputError` naming it; a full disk or a file that cannot be opened says so instead."""
        try:
            if not create and not self.path.exists():
                with closing(sqlite3.connect(":memory:", isolation_level=None)) as con:
                    con.executescript(_SCHEMA)
                    yield con
                return
            if not create and not os.access(self.run_dir, os.W_OK):
                # WAL needs a -shm file beside the log; in a directory nobody may write, read it as immutable
                uri = f"{self.path.resolve().as_uri()}?mode=ro&immutable=1"
                con_cm = closing(sqlite3.connect(uri, uri=True, isolation_level=None))
            else:
                con_cm = closing(sqlite3.connect(self.path, timeout=30, isolation_level=None))
            with con_cm as con:
                self._check_objects(con)
                if create and not self._ready:
                    con.execute("PRAGMA synchronous=NORMAL")
                    self._initialise(con)
                yield con
        except sqlite3.DatabaseError as e:
            msg = str(e)
            if "locked" in msg or "busy" in msg:
                raise
            if "full" in msg:
                raise AuditError(f"{self.path}: the disk is full; the decision was not saved ({e})") from None
            if "readonly" in msg or "unable to open" in msg or "disk I/O" in msg:
                raise AuditInputError(f"{self.path}: cannot be written or opened here ({e}); the log itself is "
                                      "untouched") from None
            raise AuditInputError(f"{self.path}: not a benign-audit decision log ({e})") from None

    def _check_objects(self, con: sqlite3.Connection) -> None:
        """Refuse a log with anything a store does not create: triggers, views, other tables or indexes,
        or a ``decisions`` table with other columns."""
        rows = con.execute("SELECT type, name FROM sqlite_master").fetchall()
        extra = [(t, n) for t, n in rows if (t, n) not in _OBJECTS]
        if extra:
            t, n = extra[0]
            raise AuditInputError(f"{self.path}: carries a {t} {str(n)[:60]!r} that no benign-audit store creates "
                                  "(it could rewrite or drop decisions); not a decision log this tool will use")
        cols = [r[1] for r in con.execute("PRAGMA table_info(decisions)")]
        if cols and not set(cols) <= set(_LOG_COLUMNS) | {"seq"}:
            odd = sorted(set(cols) - set(_LOG_COLUMNS))
            raise AuditInputError(f"{self.path}: its decisions table has columns no store writes ({', '.join(odd)})")
        self._columns = cols

    def _initialise(self, con: sqlite3.Connection) -> None:
        """WAL mode (persistent in the file) and the schema, once per store. Switching the journal
        mode can fail with "database is locked" at once, without waiting for the busy timeout, when
        several writers create the file together, so it is retried with back-off."""
        for attempt in range(100):
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(_SCHEMA)
                have = {r[1] for r in con.execute("PRAGMA table_info(decisions)")}
                for col, kind in _ADDED_COLUMNS.items():
                    if col not in have:  # an older log: binding columns added, its rows stay unbound
                        con.execute(f"ALTER TABLE decisions ADD COLUMN {col} {kind}")
                self._columns = [r[1] for r in con.execute("PRAGMA table_info(decisions)")]
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
        The row is bound to the example's current ``given_label`` and ``content`` (module docstring).
        """
        new_label = self._check(example_id, decision, new_label, reviewer, based_on)
        reviewer = (reviewer or "").strip() or "anonymous"
        given, content = self._binding(example_id)
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        with self._connect(create=True) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                prev = con.execute(
                    "SELECT seq, decision, new_label, reviewer, decided_at FROM decisions "
                    "WHERE example_id=? AND decision != 'skip' ORDER BY seq DESC LIMIT 1", (example_id,)).fetchone()
                cur = con.execute(
                    "INSERT INTO decisions (example_id, decision, new_label, reviewer, decided_at, based_on, "
                    "given_label, content) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (example_id, decision, new_label, reviewer, now, based_on, given, content))
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            back = con.execute("SELECT example_id, decision FROM decisions WHERE seq=?", (cur.lastrowid,)).fetchone()
        if back != (example_id, decision):
            raise AuditError(f"{self.path}: decision {cur.lastrowid} was not found after writing it; not saved")
        out = {"seq": cur.lastrowid, "example_id": example_id, "decision": decision, "new_label": new_label,
               "reviewer": reviewer, "decided_at": now, "based_on": based_on, "given_label": given,
               "content": content, "conflict": None}
        if decision != "skip" and prev is not None and prev[0] != based_on:
            other = dict(zip(("seq", "decision", "new_label", "reviewer", "decided_at"), prev))
            other["agrees"] = other["decision"] == decision and other["new_label"] == new_label
            out["conflict"] = other
        return out

    def _examples(self) -> pd.DataFrame | None:
        """``example_id`` (index), ``given_label`` and ``content_hash`` (where the run has it) of the run's
        ``examples.parquet``, cached by the file's identity; None when the directory has none."""
        path = self.run_dir / EXAMPLES
        try:
            st = path.stat()
        except OSError:
            return None
        return _binding_table(str(path), st.st_mtime_ns, st.st_size)

    def _binding(self, example_id: str) -> tuple[int | None, str | None]:
        """(given_label, content) of ``example_id`` in this run; (None, None) without an examples table."""
        table = self._examples()
        if table is None:
            return None, None
        if example_id not in table.index:
            raise AuditInputError(f"example {example_id[:80]!r}: not in {self.run_dir / EXAMPLES}; a decision must "
                                  "name an example of this run")
        row = table.loc[example_id]
        content = row.get("content_hash")
        return int(row["given_label"]), (None if content is None or pd.isna(content) else str(content))

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
            rows = con.execute(f"SELECT {self._select(_LOG_COLUMNS)} FROM decisions {where} ORDER BY seq",
                               params).fetchall()
        df = pd.DataFrame(rows, columns=_LOG_COLUMNS)
        for c in ("new_label", "based_on", "given_label"):
            df[c] = df[c].astype("Int64")
        return df

    def _select(self, columns: list[str]) -> str:
        """``columns`` for a SELECT, NULL for the binding columns an older log does not have."""
        have = set(getattr(self, "_columns", None) or _LOG_COLUMNS)
        return ", ".join(c if c in have else f"NULL AS {c}" for c in columns)

    def latest(self, *, bound: bool = True) -> pd.DataFrame:
        """The effective decision per example, one row each (columns :data:`LATEST_COLUMNS`, oldest
        decision first). An ``undo`` reverts to the decision before it; ``skip`` is not a decision
        about the label and is left out; an example whose decisions were all undone has no row.
        With ``bound`` (the default), decisions made about another label or image than the run now
        shows, or about an example it no longer has, are left out (:meth:`stale` lists them)."""
        out = self._effective()
        if bound:
            out = out[self._stale_reason(out) == ""].reset_index(drop=True)
        return out[LATEST_COLUMNS]

    def stale(self) -> pd.DataFrame:
        """Effective decisions the run's current examples no longer match (columns :data:`STALE_COLUMNS`):
        ``stale_reason`` is ``label changed (was L, now M)``, ``image changed`` or ``example not in this run``."""
        out = self._effective()
        out["stale_reason"] = self._stale_reason(out)
        return out[out["stale_reason"] != ""].reset_index(drop=True)

    def _stale_reason(self, dec: pd.DataFrame) -> pd.Series:
        table = self._examples()
        reason = pd.Series("", index=dec.index, dtype=object)
        if table is None or dec.empty:
            return reason
        present = dec["example_id"].isin(table.index).to_numpy()
        reason[~present] = "example not in this run"
        cur = table.reindex(dec["example_id"])
        now = cur["given_label"].to_numpy()
        was = dec["given_label"]
        changed = present & was.notna().to_numpy() & (was.fillna(-1).to_numpy(np.int64) != np.nan_to_num(now, nan=-1))
        reason[changed] = [f"label changed (was {int(w)}, now {int(n)})" for w, n in zip(was[changed], now[changed])]
        if "content_hash" in cur.columns:
            c_now = cur["content_hash"].astype(object).to_numpy()
            c_was = dec["content"].astype(object).to_numpy()
            img = present & ~changed & pd.notna(c_was) & pd.notna(c_now) & (c_was != c_now)
            reason[img] = "image changed"
        return reason

    def _effective(self) -> pd.DataFrame:
        stacks: dict[str, list] = {}
        with self._connect() as con:
            rows = con.execute(f"SELECT {self._select(_BOUND_COLUMNS)} FROM decisions "
                               "WHERE decision != 'skip' ORDER BY seq").fetchall()
        for r in rows:
            stack = stacks.setdefault(r[0], [])
            if r[1] == "undo":
                if stack:
                    stack.pop()
            else:
                stack.append(r)
        effective = [stack[-1] for stack in stacks.values() if stack]
        out = pd.DataFrame(sorted(effective, key=lambda r: r[5]), columns=_BOUND_COLUMNS)
        self._check_rows(out)
        out["new_label"] = out["new_label"].astype("Int64")
        out["given_label"] = out["given_label"].astype("Int64")
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


@lru_cache(maxsize=8)
def _binding_table(path: str, mtime_ns: int, size: int) -> pd.DataFrame:
    """The binding columns of one ``examples.parquet`` version (keyed by path, mtime and size)."""
    import pyarrow.parquet as pq

    names = set(pq.read_schema(path).names)
    cols = [c for c in ("example_id", "given_label", "content_hash") if c in names]
    if "example_id" not in names or "given_label" not in names:
        raise AuditInputError(f"{path}: no example_id/given_label columns; not a run's examples table")
    df = pd.read_parquet(path, columns=cols)
    return df.drop_duplicates("example_id", keep="first").set_index("example_id")
