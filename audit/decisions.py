"""Review decisions: an append-only SQLite log (WAL mode) inside the run directory.

Each row is one decision by one reviewer at one time; the newest row per example wins. Rows are
written when the person decides, never held only in a browser session.
"""

from __future__ import annotations

import sqlite3

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from audit.errors import AuditInputError

DECISIONS = ("keep", "relabel", "remove", "skip", "undo")
DB_NAME = "decisions.sqlite"

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


class DecisionStore:
    """The decision log of one run directory."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / DB_NAME
        with self._connect() as con:
            con.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    def record(self, example_id: str, decision: str, *, reviewer: str = "anonymous", new_label: int | None = None,
               based_on: int | None = None) -> dict:
        """Append a decision. ``based_on`` is the ``seq`` of the latest decision the reviewer saw for
        this example (None if none); when someone else decided since, the new row is still written
        (nothing is lost) and the returned dict has ``conflict`` with the other decision."""
        if decision not in DECISIONS:
            raise AuditInputError(f"decision {decision!r}: must be one of {', '.join(DECISIONS)}")
        if decision == "relabel" and new_label is None:
            raise AuditInputError("decision 'relabel' needs new_label")
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            prev = con.execute(
                "SELECT seq, decision, new_label, reviewer, decided_at FROM decisions WHERE example_id=? "
                "ORDER BY seq DESC LIMIT 1", (example_id,)).fetchone()
            cur = con.execute(
                "INSERT INTO decisions (example_id, decision, new_label, reviewer, decided_at, based_on) "
                "VALUES (?, ?, ?, ?, ?, ?)", (example_id, decision, new_label, reviewer, now, based_on))
            con.execute("COMMIT")
        out = {"seq": cur.lastrowid, "example_id": example_id, "decision": decision, "new_label": new_label,
               "reviewer": reviewer, "decided_at": now, "conflict": None}
        if prev is not None and prev[0] != based_on:
            out["conflict"] = dict(zip(("seq", "decision", "new_label", "reviewer", "decided_at"), prev))
        return out

    def log(self) -> pd.DataFrame:
        """Every row, oldest first."""
        with self._connect() as con:
            return pd.read_sql_query("SELECT * FROM decisions ORDER BY seq", con)

    def latest(self) -> pd.DataFrame:
        """The newest effective decision per example (an ``undo`` reverts to the one before it;
        ``skip`` is not a decision about the label and is left out)."""
        log = self.log()
        cols = ["example_id", "decision", "new_label", "reviewer", "decided_at", "seq"]
        rows = []
        for ex, g in log.groupby("example_id", sort=False):
            stack = []
            for r in g.itertuples(index=False):
                if r.decision == "undo":
                    if stack:
                        stack.pop()
                elif r.decision != "skip":
                    stack.append(r)
            if stack:
                r = stack[-1]
                rows.append([r.example_id, r.decision, r.new_label, r.reviewer, r.decided_at, r.seq])
        return pd.DataFrame(rows, columns=cols)

    def last_seq(self, example_id: str) -> int | None:
        with self._connect() as con:
            row = con.execute("SELECT MAX(seq) FROM decisions WHERE example_id=?", (example_id,)).fetchone()
        return row[0]


