"""Decisions that stay true, and a decision log that is input (issue #22 items 4, 6, 10).

A decision is bound to what the reviewer saw (the example's given label and pixels); a rerun into a
reviewed directory with another seed changes injected labels, and the decisions made about the old labels
are then stale: kept in the log, never applied, named by the rerun's summary and by export. A log carrying
a trigger is refused; a full disk and a read-only run directory say what they are.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest

from audit.decisions import DecisionStore
from audit.errors import AuditError, AuditInputError




def _train(run):
    ex = pd.read_parquet(run / "examples.parquet")
    return ex[ex.split == "train"].set_index("example_id")


def test_a_decision_names_an_example_of_the_run_and_is_bound_to_its_label(run_copy):
    tr = _train(run_copy)
    store = DecisionStore(run_copy)
    with pytest.raises(AuditInputError, match="not in .*examples.parquet"):
        store.record("no-such-example", "keep", reviewer="ann")
    ex = tr.index[0]
    out = store.record(ex, "keep", reviewer="ann")
    assert out["given_label"] == int(tr.at[ex, "given_label"])
    assert store.log()["given_label"].tolist() == [int(tr.at[ex, "given_label"])]
    assert store.latest()["example_id"].tolist() == [ex] and store.stale().empty


def test_a_changed_label_or_image_makes_the_decision_stale(run_copy):
    tr = _train(run_copy)
    a, b, c, d = tr.index[:4]
    assert tr["content_hash"].str.fullmatch(r"[0-9a-f]{32}").all()  # every row's pixels have a digest
    store = DecisionStore(run_copy)
    store.record(a, "keep", reviewer="ann")
    store.record(b, "relabel", reviewer="ann", new_label=(int(tr.at[b, "given_label"]) + 1) % 10)
    store.record(c, "remove", reviewer="ann")
    assert store.record(d, "keep", reviewer="ann")["content"] == tr.at[d, "content_hash"]
    ex = pd.read_parquet(run_copy / "examples.parquet")
    ex.loc[ex.example_id == a, "given_label"] = (int(tr.at[a, "given_label"]) + 2) % 10
    ex.loc[ex.example_id == d, "content_hash"] = "0" * 32  # the file behind d was replaced
    ex = ex[ex.example_id != c]
    ex.to_parquet(run_copy / "examples.parquet")
    stale = DecisionStore(run_copy).stale().set_index("example_id")["stale_reason"]
    assert stale[a].startswith("label changed (was ") and stale[c] == "example not in this run"
    assert stale[d] == "image changed"
    assert DecisionStore(run_copy).latest()["example_id"].tolist() == [b]
    assert len(DecisionStore(run_copy).latest(bound=False)) == 4 and len(DecisionStore(run_copy).log()) == 4


def test_a_rerun_with_another_seed_leaves_old_decisions_stale_and_says_so(run_copy, capsys):
    """The issue's case: 400 `keep`s on a run, a rerun into the directory with another noise seed; the
    keeps on rows whose injected label changed must not come back as reviewer-confirmed labels."""
    from audit.cli import main as cli

    tr = _train(run_copy)
    kept = tr.index[:400]
    store = DecisionStore(run_copy)
    for ex in kept:
        store.record(ex, "keep", reviewer="ann")
    assert cli(["run", "--dataset", "digits", "--models", "natural", "--noise", "0.1", "--seed", "1",
                "--out", str(run_copy), "--quiet"]) == 0
    out = capsys.readouterr().out
    after = _train(run_copy)
    changed = [ex for ex in kept if after.at[ex, "given_label"] != tr.at[ex, "given_label"]]
    assert len(changed) >= 20  # another seed flips other rows
    stale = DecisionStore(run_copy).stale()
    assert set(stale["example_id"]) == set(changed)
    assert f"{400 - len(changed):,} still match what the reviewer saw; {len(changed):,} no longer do" in out
    assert "audit verify" in out.split("next:")[-1]  # the same next steps as verify and export
    labels = run_copy.parent / "labels.csv"
    assert cli(["export", str(run_copy), "--out", str(labels)]) == 0
    assert f"{len(changed)} review decisions were made on another label or image" in capsys.readouterr().out
    a = pd.read_csv(labels).set_index("example_id")
    assert (a.loc[changed, "label_source"] == "given").all()  # not "reviewer": nobody saw these labels
    assert (a.loc[[e for e in kept if e not in set(changed)], "label_source"] == "reviewer").all()


def test_export_writes_class_names_beside_label_indices(run_copy, tmp_path):
    import json

    from audit.export import write_export

    man = json.loads((run_copy / "manifest.json").read_text())
    man["dataset"]["class_names"] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (run_copy / "manifest.json").write_text(json.dumps(man))
    tr = _train(run_copy)
    ex = tr.index[tr.is_label_issue][0]
    DecisionStore(run_copy).record(ex, "relabel", reviewer="ann", new_label=5)
    kept, _ = write_export(run_copy, tmp_path / "labels.csv")
    a = pd.read_csv(tmp_path / "labels.csv").set_index("example_id")
    names = np.array(man["dataset"]["class_names"])
    assert a.at[ex, "final_label"] == 5 and a.at[ex, "final_class"] == "five"
    assert (a["given_class"] == names[a["given_label"]]).all() and (a["suggested_class"] == names[a["suggested_label"]]).all()
    t = pd.read_csv(tmp_path / "labels.flagged-test.csv")
    assert (t["reviewed_class"] == names[t["reviewed_label"]]).all()


def test_a_log_with_a_trigger_is_refused(run_copy, capsys):
    from audit.cli import main as cli

    tr = _train(run_copy)
    DecisionStore(run_copy).record(tr.index[0], "keep", reviewer="ann")
    with sqlite3.connect(run_copy / "decisions.sqlite") as con:
        con.execute("CREATE TRIGGER eat AFTER INSERT ON decisions BEGIN DELETE FROM decisions; END")
    with pytest.raises(AuditInputError, match="carries a trigger 'eat'"):
        DecisionStore(run_copy).record(tr.index[1], "keep", reviewer="ann")
    assert cli(["export", str(run_copy), "--out", str(run_copy.parent / "l.csv")]) == 2
    err = capsys.readouterr().err
    assert "trigger 'eat'" in err and len(err.strip().splitlines()) == 1
    with sqlite3.connect(run_copy / "decisions.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 1  # the log was not touched


def test_a_full_disk_is_named_and_the_log_stays_valid(run_copy, monkeypatch):
    """SQLite's own "database or disk is full" (the file capped at its current size with
    ``max_page_count``): record() says the disk is full, never that the log is foreign."""
    import audit.decisions as decisions

    tr = _train(run_copy)
    store = DecisionStore(run_copy)
    store.record(tr.index[0], "keep", reviewer="ann")
    real = sqlite3.connect

    def capped(*a, **k):
        con = real(*a, **k)
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        con.execute(f"PRAGMA max_page_count={pages}")
        return con

    monkeypatch.setattr(decisions.sqlite3, "connect", capped)
    with pytest.raises(AuditError, match="disk is full; the decision was not saved") as e:
        for ex in tr.index[1:400]:
            DecisionStore(run_copy).record(ex, "keep", reviewer="ann" * 60)
    assert not isinstance(e.value, AuditInputError)
    monkeypatch.setattr(decisions.sqlite3, "connect", real)
    assert len(DecisionStore(run_copy).latest()) >= 1  # still a valid decision log


def test_a_read_only_run_directory_still_exports_its_decisions(run_copy, monkeypatch, tmp_path):
    """A run directory nobody may write (a read-only mount; as root, chmod does not stop writes, so the
    check that decides is made to answer "not writable"): the log is opened read-only and immutable."""
    import os

    import audit.decisions as decisions
    from audit.export import write_export

    tr = _train(run_copy)
    DecisionStore(run_copy).record(tr.index[0], "relabel", reviewer="ann",
                                   new_label=(int(tr.at[tr.index[0], "given_label"]) + 1) % 10)
    before = sorted(p.name for p in run_copy.iterdir())
    real = os.access
    monkeypatch.setattr(decisions.os, "access", lambda p, m: False if m == os.W_OK else real(p, m))
    kept, summary = write_export(run_copy, tmp_path / "labels.csv")
    assert kept.set_index("example_id").at[tr.index[0], "label_source"] == "reviewer"
    assert sorted(p.name for p in run_copy.iterdir()) == before  # an immutable read creates nothing
