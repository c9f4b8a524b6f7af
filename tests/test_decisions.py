"""The decision log: append-only, newest effective decision wins, undo and skip, conflicts between
sessions reported without losing either decision, safe under concurrent writers."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from audit.decisions import DB_NAME, DecisionStore
from audit.errors import AuditInputError


def test_newest_decision_wins_and_survives_a_new_store(tmp_path):
    s = DecisionStore(tmp_path)
    a = s.record("ex-1", "keep", reviewer="ann")
    s.record("ex-2", "relabel", reviewer="ann", new_label=3)
    s.record("ex-1", "relabel", reviewer="ann", new_label=7, based_on=a["seq"])
    latest = DecisionStore(tmp_path).latest().set_index("example_id")  # a new process would see the same
    assert latest.loc["ex-1", ["decision", "new_label", "reviewer"]].tolist() == ["relabel", 7, "ann"]
    assert latest.loc["ex-2", "new_label"] == 3
    assert len(DecisionStore(tmp_path).log()) == 3
    with sqlite3.connect(tmp_path / DB_NAME) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_undo_reverts_to_the_decision_before_and_skip_is_not_a_decision(tmp_path):
    s = DecisionStore(tmp_path)
    s.record("ex", "remove", reviewer="ann")
    s.record("ex", "keep", reviewer="bob", based_on=1)
    s.record("ex", "skip", reviewer="cat")
    assert s.latest().set_index("example_id").at["ex", "decision"] == "keep"
    s.record("ex", "undo", reviewer="bob", based_on=2)
    assert s.latest().set_index("example_id").at["ex", "decision"] == "remove"
    s.record("ex", "undo", reviewer="bob", based_on=4)
    assert len(s.latest()) == 0
    s.record("ex", "undo", reviewer="bob", based_on=5)  # nothing left to undo: harmless
    assert len(s.latest()) == 0
    assert s.log()["decision"].tolist() == ["remove", "keep", "skip", "undo", "undo", "undo"]
    assert s.last_seq("ex") == 6 and s.version() == 6


def test_conflict_reported_and_both_rows_kept(tmp_path):
    s = DecisionStore(tmp_path)
    seen = s.last_seq("ex")  # both sessions open the example: nothing decided yet
    first = s.record("ex", "keep", reviewer="ann", based_on=seen)
    second = s.record("ex", "remove", reviewer="bob", based_on=seen)
    assert first["conflict"] is None
    c = second["conflict"]
    assert c["reviewer"] == "ann" and c["decision"] == "keep" and c["seq"] == first["seq"] and not c["agrees"]
    third = s.record("ex", "remove", reviewer="cat", based_on=first["seq"])
    assert third["conflict"]["agrees"] and third["conflict"]["reviewer"] == "bob"
    # no conflict when based on what is newest; a skip neither conflicts nor causes one
    s.record("ex", "skip", reviewer="dan")
    assert s.record("ex", "keep", reviewer="ann", based_on=third["seq"])["conflict"] is None
    assert s.record("ex", "skip", reviewer="dan", based_on=None)["conflict"] is None
    assert len(s.log()) == 6


def test_bad_decisions_are_input_errors(tmp_path):
    s = DecisionStore(tmp_path)
    with pytest.raises(AuditInputError, match="must be one of"):
        s.record("ex", "delete")
    with pytest.raises(AuditInputError, match="new_label"):
        s.record("ex", "relabel")
    with pytest.raises(AuditInputError, match="no such run directory"):
        DecisionStore(tmp_path / "missing")
    assert len(s.log()) == 0


def test_concurrent_writers_lose_nothing(tmp_path):
    DecisionStore(tmp_path)
    errors = []

    def work(who):
        try:
            s = DecisionStore(tmp_path)
            for i in range(25):
                s.record(f"ex-{i % 5}", "keep", reviewer=who)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(f"r{t}",)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    log = DecisionStore(tmp_path).log()
    assert len(log) == 100 and log["seq"].is_unique
    assert sorted(log.groupby("reviewer").size().tolist()) == [25, 25, 25, 25]


def test_reading_writes_nothing_until_the_first_decision(tmp_path):
    s = DecisionStore(tmp_path)
    assert len(s.log()) == 0 and len(s.latest()) == 0 and s.version() == 0 and s.last_seq("ex") is None
    assert not (tmp_path / DB_NAME).exists()
    s.record("ex", "keep")
    assert (tmp_path / DB_NAME).exists() and len(DecisionStore(tmp_path).log()) == 1


def test_the_store_checks_labels_against_the_run_classes(tmp_path):
    import json

    (tmp_path / "manifest.json").write_text(json.dumps({"dataset": {"class_names": [str(i) for i in range(10)]}}))
    s = DecisionStore(tmp_path)
    assert s.num_classes == 10
    for bad in (999, 10, -5, True, 2.5, "3", float("nan")):
        with pytest.raises(AuditInputError, match="not a class of this run"):
            s.record("ex", "relabel", new_label=bad)
    assert s.record("ex", "relabel", new_label=9)["new_label"] == 9
    assert s.record("ex", "relabel", new_label=3.0)["new_label"] == 3  # an integral float is that class
    assert DecisionStore(tmp_path, num_classes=4).num_classes == 4
    with pytest.raises(AuditInputError, match="not a class"):
        DecisionStore(tmp_path, num_classes=4).record("ex", "relabel", new_label=9)
    for kind in ("delete", "", None, "KEEP"):
        with pytest.raises(AuditInputError, match="must be one of"):
            s.record("ex", kind)
    for eid in (None, 5, "", "x" * 2000):
        with pytest.raises(AuditInputError, match="example_id"):
            s.record(eid, "keep")
    with pytest.raises(AuditInputError, match="reviewer"):
        s.record("ex", "keep", reviewer="r" * 500)
    assert len(s.log()) == 2


def test_without_a_manifest_any_non_negative_label_below_the_bound(tmp_path):
    from audit.rundir import MAX_CLASSES

    s = DecisionStore(tmp_path)
    assert s.num_classes is None
    s.record("ex", "relabel", new_label=12)
    for bad in (-1, MAX_CLASSES, 10**30):
        with pytest.raises(AuditInputError, match="not a class"):
            s.record("ex", "relabel", new_label=bad)


def test_a_file_that_is_not_a_decision_log_is_an_input_error(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"garbage, not SQLite" * 20)
    with pytest.raises(AuditInputError, match="not a benign-audit decision log"):
        DecisionStore(tmp_path).latest()
