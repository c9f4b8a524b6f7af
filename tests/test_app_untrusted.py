"""The review app treats a run directory as input (DESIGN.md, "Trust boundaries"; issues 22 and 26): links
and odd files in the run are not followed or written through, tables and logs that are not what the pipeline
writes are said rather than raised, a decision never borrows another example's row, decisions made on
another label or image are listed and not applied, and every relabel key says which class it picks."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from streamlit.testing.v1 import AppTest

from audit.decisions import DecisionStore

from apphelpers import DECISIONS, PAIRS, REVIEW, flagged_train, open_app, set_columns

PAGES = (None, REVIEW, PAIRS, DECISIONS)


def texts(at: AppTest, kind: str) -> list[str]:
    """The values of every element of ``kind`` (warning, info, error, caption, ...), Markdown escapes removed."""
    return [str(e.value).replace("\\", "") for e in getattr(at, kind)]


def set_column(run: Path, name: str, values) -> None:
    """Replace one column of the run's examples table, its schema metadata kept."""
    set_columns(run, {name: values})


def write_pairs(run: Path, df: pd.DataFrame) -> None:
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), run / "pairs.parquet")


def sql(run: Path, statement: str, params=()) -> None:
    with sqlite3.connect(run / "decisions.sqlite") as con:
        con.execute(statement, params)


# -- 1. links and odd files in the run directory ----------------------------------------------------------
VERIFY = {"eps": 0.1, "small_eps": 0.025, "apply": "suggested", "seeds": [0],
          "variants": {"given": {"n_train": 4242, "results": {"natural": {
              "clean_accuracy": {"mean": 0.9, "low": 0.88, "high": 0.92},
              "adv_accuracy": {"mean": 0.5, "low": None, "high": None},
              "adv_accuracy_small": {"mean": 0.8, "low": 0.7, "high": 0.9}}}}},
          "gain_recovered": {"adv_accuracy": None, "adv_accuracy_small": None}}


def test_a_verify_json_link_or_pipe_is_not_followed(review_run, tmp_path):
    run, _ = review_run
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps(VERIFY))  # would show 4242 training rows if the link were followed
    (run / "verify.json").symlink_to(outside)
    at = open_app()
    assert any("verify.json" in w and "symbolic link" in w for w in texts(at, "warning"))
    assert not any("variant" in d.value.columns for d in at.dataframe)
    (run / "verify.json").unlink()
    os.mkfifo(run / "verify.json")  # reading a pipe would hang the page
    at = open_app()
    assert any("verify.json" in w and "not a regular file" in w for w in texts(at, "warning"))
    (run / "verify.json").unlink()
    (run / "verify.json").write_text(json.dumps(VERIFY))  # the real file is still shown
    at = open_app()
    table = next(d.value for d in at.dataframe if "variant" in d.value.columns)
    assert table.iloc[0]["train rows"] == "4242"


def test_read_run_file_refuses_links_and_big_files(tmp_path):
    from app.data import file_problem, read_run_file
    from audit.errors import AuditInputError

    (tmp_path / "real.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    (tmp_path / "dir.json").mkdir()
    assert read_run_file(tmp_path / "real.json") == b"{}"
    assert read_run_file(tmp_path / "missing.json") is None and file_problem(tmp_path / "missing.json") is None
    for name, why in (("link.json", "symbolic link"), ("dir.json", "not a regular file")):
        with pytest.raises(AuditInputError, match=why):
            read_run_file(tmp_path / name)
    with pytest.raises(AuditInputError, match="larger than"):
        read_run_file(tmp_path / "real.json", max_bytes=1)


def _write_export(at: AppTest) -> list[str]:
    at.button(key="write_export").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return texts(at, "error")


def test_write_to_exports_never_writes_through_a_link(review_run, tmp_path):
    run, _ = review_run
    outside = tmp_path / "outside"
    outside.mkdir()
    (run / "exports").symlink_to(outside)
    at = open_app(DECISIONS)
    errors = _write_export(at)
    assert any("exports" in e and "symbolic link" in e for e in errors)
    assert list(outside.iterdir()) == []  # nothing written where the link points

    (run / "exports").unlink()
    (run / "exports").write_text("a file, not a folder")
    assert any("not a folder" in e for e in _write_export(at))
    assert (run / "exports").read_text() == "a file, not a folder"

    (run / "exports").unlink()
    (run / "exports").mkdir()
    target = tmp_path / "victim.csv"
    target.write_text("precious")
    (run / "exports" / "labels.reviewed.csv").symlink_to(target)
    assert any("labels.reviewed.csv" in e and "symbolic link" in e for e in _write_export(at))
    assert target.read_text() == "precious"

    (run / "exports" / "labels.reviewed.csv").unlink()  # a real folder: written, no temporary file left
    assert _write_export(at) == []
    assert any(s.startswith("Wrote") for s in texts(at, "success"))
    names = sorted(p.name for p in (run / "exports").iterdir())
    assert names == ["labels.reviewed.csv", "labels.reviewed.flagged-test.csv"]


def test_export_target_outside_the_run_is_refused(tmp_path):
    from app.views.decisions import export_target_problem

    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir()
    elsewhere.mkdir()
    assert export_target_problem(run) is None  # no exports/ yet: it will be made inside
    (run / "exports").symlink_to(elsewhere)
    assert "symbolic link" in export_target_problem(run)
    (run / "exports").unlink()
    inner = tmp_path / "run-link"
    inner.symlink_to(run)  # a run reached through a link of its own is fine: exports/ is inside it
    assert export_target_problem(inner) is None


# -- 2. tables and logs read back are input ------------------------------------------------------------------
def test_pairs_naming_unknown_examples_are_left_out_and_said(review_run):
    run, _ = review_run
    pairs = pd.read_parquet(run / "pairs.parquet")
    ex = pd.read_parquet(run / "examples.parquet")
    bad = pairs.copy()
    bad.loc[bad.index[0], "train_id"] = "no-such-train"
    bad.loc[bad.index[1], "test_id"] = "no-such-test"
    write_pairs(run, bad)
    at = open_app(PAIRS)
    warnings = texts(at, "warning")
    assert any("pairs.parquet" in w and "train_id" in w and "no-such-train" in w for w in warnings), warnings
    assert any("pairs.parquet" in w and "test_id" in w for w in warnings)
    assert at.get("image")  # the rest is shown
    from app import data

    shown = data.pairs(run)
    assert len(shown) == len(pairs) - 2
    assert shown["train_id"].isin(ex["example_id"]).all() and shown["test_id"].isin(ex["example_id"]).all()


def test_pairs_with_text_numbers_or_without_optional_columns_render(review_run):
    run, _ = review_run
    pairs = pd.read_parquet(run / "pairs.parquet")
    texty = pairs.assign(similarity=pairs["similarity"].map(lambda x: f"{x:.2f}"),
                         influence=["lots"] * len(pairs))
    write_pairs(run, texty)
    at = open_app(PAIRS)  # RunDir refuses the column, or the page reads it as missing: said either way
    assert any("pairs.parquet" in w and ("similarity" in w or "influence" in w) for w in texts(at, "warning"))

    older = pairs.drop(columns=[c for c in ("reason", "fz_influence", "fz_influence_se") if c in pairs.columns])
    write_pairs(run, older)
    at = open_app(PAIRS)
    assert at.get("image")  # an older run's pairs: one list of every test error
    assert not any("pairs.parquet" in w for w in texts(at, "warning"))


def test_wrongly_shaped_dynamics_are_ignored_and_said(review_run):
    run, _ = review_run
    with np.load(run / "dynamics.npz") as z:
        arrays = {k: z[k] for k in z.files}
    model = [str(m) for m in arrays["models"]][0]
    margin = arrays[f"margin_{model}"]
    arrays[f"margin_{model}"] = margin[:, :5]  # fewer columns than example ids
    np.savez(run / "dynamics.npz", **arrays)
    at = open_app(REVIEW)
    assert any("dynamics.npz" in w and f"margin_{model}" in w for w in texts(at, "warning"))

    arrays[f"margin_{model}"] = np.full(margin.shape, "x")  # text, not numbers
    np.savez(run / "dynamics.npz", **arrays)
    at = open_app(REVIEW)
    assert any("dynamics.npz" in w and "not shown" in w for w in texts(at, "warning"))

    arrays["example_ids"] = np.zeros((2, 2))
    np.savez(run / "dynamics.npz", **arrays)
    at = open_app(REVIEW)
    assert any("dynamics.npz" in w and "example_ids" in w for w in texts(at, "warning"))
    assert any("No training dynamics" in c for c in texts(at, "caption"))


def test_decision_times_without_a_zone_or_not_times_are_shown(review_run):
    run, _ = review_run
    order = flagged_train(run)["example_id"].tolist()
    store = DecisionStore(run)
    store.record(order[0], "keep", reviewer="ann")
    store.record(order[1], "remove", reviewer="bob")
    sql(run, "UPDATE decisions SET decided_at=? WHERE example_id=?", ("2024-05-01T12:30:00", order[0]))
    sql(run, "UPDATE decisions SET decided_at=? WHERE example_id=?", ("yesterday **bold**", order[1]))
    at = open_app(DECISIONS)
    table = at.dataframe[0].value.set_index("example_id")
    assert table.at[order[0], "decided_at"] == "2024-05-01 12:30:00"  # read as UTC
    assert table.at[order[1], "decided_at"] == "yesterday **bold**"  # the raw text, in a plain-text cell
    at = open_app(REVIEW, example=order[0])
    assert any("2024-05-01 12:30 UTC" in s for s in texts(at, "success"))
    hist = next(d.value for d in at.dataframe if "reviewer" in d.value.columns)
    assert hist["decided at (UTC)"].tolist() == ["2024-05-01 12:30:00"]
    at = open_app(REVIEW, example=order[1])
    assert any("yesterday" in s for s in texts(at, "success"))
    assert not any("**bold**" in s.value for s in at.success)  # escaped where it reaches Markdown


def test_time_helpers():
    from datetime import datetime, timezone

    from app import ui

    assert ui.when("2024-05-01T12:30:00") == "2024-05-01 12:30:00"
    assert ui.when("2024-05-01T14:30:00+02:00") == "2024-05-01 12:30:00"
    assert ui.when("not a time") == "not a time" and ui.when(None) == "None"
    assert ui.parse_time("2024-05-01T12:30:00").tzinfo is not None
    assert ui.ago(datetime.now(timezone.utc).replace(tzinfo=None).isoformat()) == "just now"
    assert ui.ago("[x](javascript:1)") == ui.md("[x](javascript:1)")


def _ghost(run: Path, example_id: str = "ghost-example") -> None:
    """A decision in the log for an example the run does not have (``record`` refuses one: written directly)."""
    DecisionStore(run).record(flagged_train(run)["example_id"].iloc[0], "keep", reviewer="ann")  # makes the log
    sql(run, "INSERT INTO decisions (example_id, decision, new_label, reviewer, decided_at, given_label) "
             "VALUES (?, 'relabel', 3, 'eve', '2024-01-01T00:00:00+00:00', 1)", (example_id,))


def test_a_decision_for_an_example_not_in_the_run_is_listed_never_joined(review_run):
    run, _ = review_run
    _ghost(run)
    at = open_app(DECISIONS)
    table = at.dataframe[0].value
    assert "ghost-example" not in set(table["example_id"])  # not applied...
    stale = next(d.value for d in at.dataframe if "reason" in d.value.columns)
    row = stale.set_index("example").loc["ghost-example"]  # ...but listed, as not in this run
    assert row["reason"] == "not in this run" and row["reviewer"] == "eve" and row["when"] == "2024-01-01 00:00:00"
    assert any("example not in this run" in w for w in texts(at, "warning"))
    for page in PAGES:
        open_app(page)


def test_decisions_table_joins_by_id(review_run, monkeypatch):
    """Even when a decision for a missing example reaches the table (a store that does not bind), it gets
    no other example's split, labels or score."""
    from app import data, ui
    from app.views import decisions

    run, man = review_run
    ex = pd.read_parquet(run / "examples.parquet")
    real = ex.iloc[3]
    fake = pd.DataFrame({"example_id": ["ghost", real.example_id], "decision": ["keep", "keep"],
                         "new_label": pd.array([None, None], dtype="Int64"), "reviewer": ["eve", "ann"],
                         "decided_at": ["2024-01-01T00:00:00", "2024-01-02T00:00:00"], "seq": [1, 2]})
    monkeypatch.setattr(data, "latest_decisions", lambda _run: fake)
    r = ui.Run(run, man, tuple(man["dataset"]["class_names"]), ("natural",))
    t = decisions.decisions_table(r).set_index("example_id")
    assert t.at["ghost", "split"] == "not in this run" and t.at["ghost", "given"] == "–"
    assert t.at["ghost", "final"] == "–" and np.isnan(t.at["ghost", "issue_score"])
    assert t.at[real.example_id, "split"] == real.split
    assert t.at[real.example_id, "issue_score"] == pytest.approx(real.issue_score)


def test_an_examples_table_without_rows_says_so_on_every_page(review_run):
    run, _ = review_run
    t = pq.read_table(run / "examples.parquet")
    pq.write_table(t.slice(0, 0), run / "examples.parquet")
    for page in PAGES:
        at = open_app(page)
        assert any("examples.parquet" in i and "no examples" in i for i in texts(at, "info")), page
        assert not at.error


def test_refused_tables_and_text_in_numeric_columns_render(review_run):
    run, _ = review_run
    n = len(pq.read_table(run / "examples.parquet"))
    set_column(run, "evidence_confidence", ["high"] * n)  # an optional column read as a number
    for page in (REVIEW, None):  # read as missing (a warning), or refused by RunDir (an error): said either way
        at = open_app(page)
        said = texts(at, "warning") + texts(at, "error")
        assert any("examples.parquet" in w and "evidence_confidence" in w for w in said), said
    set_column(run, "example_id", ["same"] * n)  # RunDir refuses the table: its message, no traceback
    for page in PAGES:
        at = open_app(page)
        assert any("examples.parquet" in e for e in texts(at, "error")), page


# -- 3. decisions made on another label or image ------------------------------------------------------------
def test_stale_decisions_are_listed_not_applied_and_back_in_the_queue(review_run):
    run, _ = review_run
    fl = flagged_train(run)
    order = fl["example_id"].tolist()
    n = len(pq.read_table(run / "examples.parquet"))
    set_column(run, "content_hash", [f"h{i}" for i in range(n)])
    store = DecisionStore(run)
    store.record(order[0], "keep", reviewer="ann")
    store.record(order[1], "remove", reviewer="ann")
    store.record(order[2], "keep", reviewer="ann")
    at = open_app(REVIEW)
    assert at.session_state["current"] == order[3]
    # a rerun with another seed: order[0]'s label changed, order[1]'s image changed, order[2] unchanged
    ex = pq.read_table(run / "examples.parquet").to_pandas()
    i0, i1 = ex.index[ex.example_id == order[0]][0], ex.index[ex.example_id == order[1]][0]
    given = ex["given_label"].to_numpy().copy()
    given[i0] = (given[i0] + 1) % 10
    set_column(run, "given_label", pa.array(given, type=pq.read_schema(run / "examples.parquet").field(
        "given_label").type))
    hashes = [f"h{i}" for i in range(n)]
    hashes[i1] = "another image"
    set_column(run, "content_hash", hashes)
    assert DecisionStore(run).latest()["example_id"].tolist() == [order[2]]

    want = ("2 decisions were made on another label or image than this run shows (1 label changed, 1 image "
            "changed): they are kept in the log, not applied, and these examples are back in the review queue.")
    at = open_app()
    assert want in texts(at, "warning")
    assert at.metric[4].value.startswith("1 /")  # reviewed: only the decision still in effect
    at = open_app(DECISIONS)
    assert want in texts(at, "warning")
    assert at.dataframe[0].value["example_id"].tolist() == [order[2]]
    stale = next(d.value for d in at.dataframe if "reason" in d.value.columns)
    assert list(stale.columns) == ["example", "decision", "reviewer", "when", "reason"]
    assert set(stale["example"]) == {order[0], order[1]}
    by = stale.set_index("example")
    assert by.at[order[0], "reason"].startswith("label changed") and by.at[order[1], "reason"] == "image changed"
    assert by.at[order[1], "decision"] == "removed" and by.at[order[0], "reviewer"] == "ann"
    at = open_app(REVIEW)  # both back in the queue, at its top again
    assert at.session_state["current"] == order[0]
    assert any("Not applied" in c for c in texts(at, "caption"))
    at.button(key="decide_keep").click().run()  # deciding again applies to what the run shows now
    assert not at.exception
    assert set(DecisionStore(run).latest()["example_id"]) == {order[0], order[2]}
    assert len(DecisionStore(run).stale()) == 1


# -- 4. relabel keys say which class they pick --------------------------------------------------------------
def _classes(run: Path, names: list[str]) -> None:
    man = json.loads((run / "manifest.json").read_text())
    man["dataset"]["class_names"] = names
    (run / "manifest.json").write_text(json.dumps(man))


def test_relabel_keys_show_the_class_they_pick(review_run):
    run, _ = review_run
    words = sorted(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    assert words[5] == "seven"
    _classes(run, words)
    at = open_app(REVIEW)
    captions = texts(at, "caption")
    assert any("5 · seven" in c and "0 · eight" in c for c in captions)
    assert any("not the class name" in c for c in captions)  # names that read as other keys: said outright
    g = int(flagged_train(run).iloc[0]["given_label"])
    c = 5 if g != 5 else 6
    b = at.button(key=f"relabel_{c}")
    assert b.label.startswith(words[c])  # the name first (tests/test_browser.py reads it so)
    assert b.proto.shortcut == str(c) and f"{c} · {words[c]}" in b.help.replace("\\", "")
    b.click().run()
    assert DecisionStore(run).log().iloc[-1]["new_label"] == c


def test_relabel_key_map_for_digit_names():
    from app import ui

    def run(names):
        return ui.Run(Path("."), {}, tuple(names), ("natural",))

    assert not run([str(i) for i in range(10)]).keys_misleading()
    shifted = run(sorted([str(i) for i in range(1, 11)]))  # "1", "10", "2", ...: key 1 relabels to "10"
    assert shifted.keys_misleading() and "1 → 10" in shifted.key_map_text()
    assert shifted.key_label(1) == "1 · 10"
    assert not run(["cat", "dog"]).keys_misleading()
    assert run(["cat", "dog"]).key_map_text() == "Keys follow the class index: 0 → cat, 1 → dog."
