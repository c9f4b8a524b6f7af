"""The review app's logic through Streamlit's AppTest: pages render, a decision is persisted inside the
click, the next example follows, a second session's decision is reported as a conflict, undo, export
reflects decisions, one page of images at most, and the file-access rule."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from audit.commands.app import app_path
from audit.decisions import DecisionStore

from apphelpers import DECISIONS, REVIEW, flagged_train, open_app, pictures, raw_leaks, set_columns


def current_id(at: AppTest) -> str:
    return at.session_state["current"]


def test_app_renders_flagged_grid(digits_run, monkeypatch):
    out, man = digits_run
    monkeypatch.delenv("AUDIT_RUN_DIR", raising=False)
    monkeypatch.setattr(sys, "argv", ["streamlit_app.py"])
    monkeypatch.chdir(out.parent)  # where the default artifacts/digits does not exist (the quick start may have made one here)
    at = AppTest.from_file(str(app_path()), default_timeout=60)
    at.run()  # no run directory given: a clear message, no exception
    assert not at.exception
    assert any(r"no examples\.parquet" in e.value for e in at.error)  # the message quotes the path as text
    at = AppTest.from_file(str(app_path()), default_timeout=60)
    monkeypatch.setattr(sys, "argv", ["streamlit_app.py", str(out)])
    at.run()
    assert not at.exception
    assert at.title[0].value == "benign-audit"
    at.switch_page(REVIEW).run()
    assert not at.exception
    flagged = man["metrics"]["num_flagged_train"]
    assert any(str(flagged) in c.value for c in at.caption)
    # one page of thumbnails (24 by default), the zoomed example and its 10 neighbours: never more
    assert pictures(at) == min(24, flagged) + 1 + 10
    assert at.session_state["current"] == flagged_train(out)["example_id"].iloc[0]


def test_every_page_renders(review_run):
    run, man = review_run
    at = open_app()
    assert [m.label for m in at.metric][:2] == ["training examples", "flagged for review"]
    assert at.metric[1].value == str(man["metrics"]["num_flagged_train"])
    acc, per_class = at.dataframe[0].value, at.dataframe[1].value  # display-only tables carry no key
    assert list(per_class["class"]) == man["dataset"]["class_names"]
    assert per_class["flagged"].sum() == man["metrics"]["num_flagged_train"]
    assert list(acc["model"]) == ["natural", "PGD-AT"]
    assert acc["test, adversarial"].iloc[1] == pytest.approx(100 * man["metrics"]["pgd_test_adv_accuracy"])
    for page in ("views/pairs.py", DECISIONS):
        at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
    pairs = pd.read_parquet(run / "pairs.parquet")
    at.switch_page("views/pairs.py").run()
    n_tests = pairs[pairs.reason == "robust_error"].test_id.nunique()
    per_test = int(pairs.groupby("test_id").size().max())
    assert pictures(at) == min(6, n_tests) * (1 + per_test)


def test_decision_is_persisted_in_the_click_and_next_example_follows(review_run):
    run, _ = review_run
    order = flagged_train(run)["example_id"].tolist()
    at = open_app(REVIEW)
    assert current_id(at) == order[0]
    at.button(key="decide_keep").click().run()
    assert not at.exception
    log = DecisionStore(run).log()
    assert list(log[["example_id", "decision", "reviewer"]].itertuples(index=False, name=None)) == \
        [(order[0], "keep", "tester")]
    assert current_id(at) == order[1]  # the next one, at once
    assert at.query_params["example"] == order[1]
    # relabel to a chosen class by its key, then accept the suggestion of the third
    k = int(flagged_train(run).set_index("example_id").at[order[1], "given_label"] + 1) % 10
    at.button(key=f"relabel_{k}").click().run()
    at.button(key="decide_accept").click().run()
    latest = DecisionStore(run).latest().set_index("example_id")
    assert latest.at[order[1], "decision"] == "relabel" and latest.at[order[1], "new_label"] == k
    suggested = int(flagged_train(run).set_index("example_id").at[order[2], "suggested_label"])
    assert latest.at[order[2], "new_label"] == suggested
    # a fresh session (a browser reload, a server restart) sees them: decided examples left the queue
    at2 = open_app(REVIEW)
    assert current_id(at2) == order[3]
    assert any("3 of" in m.value for m in at2.markdown)
    # and the deep link to a decided example shows who decided
    at3 = open_app(REVIEW, example=order[0])
    assert current_id(at3) == order[0]
    assert any("Kept" in s.value and "tester" in s.value for s in at3.success)


def test_undo_restores_the_previous_decision(review_run):
    run, _ = review_run
    order = flagged_train(run)["example_id"].tolist()
    at = open_app(REVIEW)
    at.button(key="decide_remove").click().run()
    assert DecisionStore(run).latest()["example_id"].tolist() == [order[0]]
    at.button(key="decide_undo").click().run()
    assert not at.exception
    assert current_id(at) == order[0]  # reopened
    assert len(DecisionStore(run).latest()) == 0
    assert DecisionStore(run).log()["decision"].tolist() == ["remove", "undo"]  # nothing deleted
    at.button(key="decide_skip").click().run()
    assert current_id(at) == order[1]
    assert len(DecisionStore(run).latest()) == 0  # a skip is not a decision about the label


def test_two_sessions_deciding_the_same_example_both_kept_and_conflict_reported(review_run):
    run, _ = review_run
    first = flagged_train(run)["example_id"].iloc[0]
    alice, bob = open_app(REVIEW), open_app(REVIEW)
    alice.text_input(key="reviewer").set_value("alice").run()
    bob.text_input(key="reviewer").set_value("bob").run()
    assert current_id(alice) == current_id(bob) == first
    alice.button(key="decide_keep").click().run()
    assert not alice.warning
    bob.button(key="decide_remove").click().run()  # bob was still looking at the version before alice's
    assert not bob.exception
    assert any("Conflict" in w.value and "alice" in w.value for w in bob.warning)
    log = DecisionStore(run).log()
    assert log[["decision", "reviewer"]].values.tolist() == [["keep", "alice"], ["remove", "bob"]]
    assert DecisionStore(run).latest().set_index("example_id").at[first, "decision"] == "remove"


def test_filters_and_paging_never_render_more_than_one_page(review_run):
    run, _ = review_run
    fl = flagged_train(run)
    at = open_app(REVIEW)
    at.selectbox(key="f_page_size").set_value(12).run()
    assert pictures(at) == 12 + 1 + 10
    cls = int(fl["given_label"].value_counts().idxmax())
    at.multiselect(key="f_classes").set_value([cls]).run()
    want = fl[fl.given_label == cls]["example_id"].tolist()
    assert current_id(at) == want[0]  # a new queue opens at its most suspicious example
    buttons = [b for b in at.button if b.key and b.key.startswith("open_")]
    assert len(buttons) == min(12, len(want))
    at.button(key="open_1").click().run()
    assert current_id(at) == want[1]
    # flagged test labels are reviewable too (they have no training dynamics)
    at.multiselect(key="f_classes").set_value([]).run()
    at.segmented_control(key="f_split").set_value("test").run()
    assert not at.exception
    ex = pd.read_parquet(run / "examples.parquet")
    test_flagged = ex[(ex.split == "test") & ex.is_label_issue].sort_values("issue_score", ascending=False)
    assert current_id(at) == test_flagged["example_id"].iloc[0]
    assert any("No training dynamics" in c.value for c in at.caption)


def test_many_classes_relabel_through_the_class_picker(review_run):
    import json

    run, man = review_run
    man = json.loads((run / "manifest.json").read_text())
    man["dataset"]["class_names"] = [f"class {i}" for i in range(12)]  # past 10 classes: no digit keys
    (run / "manifest.json").write_text(json.dumps(man))
    at = open_app(REVIEW)
    assert not [b for b in at.button if b.key and b.key.startswith("relabel_")]
    at.selectbox(key="relabel_to").set_value(11).run()
    at.button(key="decide_relabel").click().run()
    assert not at.exception
    row = DecisionStore(run).log().iloc[0]
    assert row["decision"] == "relabel" and row["new_label"] == 11


def test_export_from_the_app_reflects_decisions(review_run):
    run, _ = review_run
    fl = flagged_train(run)
    a, b = fl["example_id"].iloc[0], fl["example_id"].iloc[1]
    store = DecisionStore(run)
    store.record(a, "keep", reviewer="carol")
    store.record(b, "remove", reviewer="carol")
    at = open_app(DECISIONS)
    assert at.metric[0].value == "2"
    at.button(key="write_export").click().run()
    assert not at.exception
    out = pd.read_csv(run / "exports" / "labels.reviewed.csv")
    assert b not in set(out.example_id)
    row = out.set_index("example_id").loc[a]
    assert row.decision == "keep" and row.reviewer == "carol" and row.label_source == "reviewer"
    assert row.final_label == fl.set_index("example_id").at[a, "given_label"]
    assert (run / "exports" / "labels.reviewed.flagged-test.csv").exists()


def test_undo_selected_on_decisions_page(review_run):
    run, _ = review_run
    a = flagged_train(run)["example_id"].iloc[0]
    DecisionStore(run).record(a, "remove", reviewer="dave")
    at = open_app(DECISIONS)
    # AppTest cannot click a dataframe row: select through the widget state the browser would send
    at.session_state["decisions_table"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    at.button(key="undo_selected").click().run()
    assert not at.exception
    assert len(DecisionStore(run).latest()) == 0


def test_file_access_stays_inside_run_and_dataset_root(tmp_path):
    from app.data import safe_file

    root = tmp_path / "data"
    (root / "cat").mkdir(parents=True)
    ok = root / "cat" / "a.png"
    ok.write_bytes(b"\x89PNG")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"\x89PNG")
    (root / "cat" / "link.png").symlink_to(outside)
    (root / "notes.txt").write_text("x")
    roots = [tmp_path / "run", root]
    assert safe_file(ok, roots) == ok.resolve()
    assert safe_file(root / "cat" / ".." / "cat" / "a.png", roots) == ok.resolve()
    assert safe_file(root / ".." / "secret.png", roots) is None
    assert safe_file(root / "cat" / "link.png", roots) is None  # a symlink out is refused
    assert safe_file("/etc/passwd", roots) is None
    assert safe_file(root / "notes.txt", roots) is None  # not an image
    assert safe_file(None, roots) is None and safe_file(np.nan, roots) is None


def test_audit_app_refuses_a_missing_run_and_binds_loopback(tmp_path, capsys):
    from audit.cli import build_parser
    from audit.cli import main as cli
    from audit.commands.app import streamlit_command

    assert cli(["app", str(tmp_path)]) == 2
    assert "examples.parquet" in capsys.readouterr().err
    args = build_parser().parse_args(["app", str(tmp_path)])
    assert args.host == "127.0.0.1"
    cmd = streamlit_command(tmp_path, args.host, 8501)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[-1] == str(tmp_path)


# -- text from data is shown as text (issue 12) -----------------------------------------------------------
HOSTILE_CLASSES = ['<img src=x onerror="window.__x=1">', "<style>*{visibility:hidden}</style>",
                   "[click](javascript:window.__x=3)", "**bold** _it_", ":red[red] :material/label: $x^2$",
                   "![i](http://example.com/x.png)", '<iframe srcdoc="<script>parent.__x=2</script>">', "`tick`",
                   "two\nlines", "5"]
HOSTILE_ID = "<img src=x onerror=window.__x=4>"  # appended to every example id
HOSTILE_REVIEWER = "<svg onload=window.__x=5> **me**"
# What must never reach the page as it is, outside the components that show plain text.
RAW = ("<img src=x onerror=", "<style>*{visibility", "](javascript:", "**bold**", ":red[red]", "![i](",
       "<iframe srcdoc=", "<svg onload=", "**me**")


def _hostile_ids(run: Path) -> None:
    """Every example id in the run's tables gets HTML appended (consistently across the tables)."""
    ex = pd.read_parquet(run / "examples.parquet")
    ex["example_id"] = ex["example_id"].astype(str) + HOSTILE_ID
    ex["neighbor_ids"] = [[f"{n}{HOSTILE_ID}" for n in ids] for ids in ex["neighbor_ids"]]
    ex["category_reason"] = "torn between " + HOSTILE_CLASSES[0] + " and " + HOSTILE_CLASSES[2]
    ex.to_parquet(run / "examples.parquet")
    pairs = pd.read_parquet(run / "pairs.parquet")
    pairs["test_id"] = pairs["test_id"].astype(str) + HOSTILE_ID
    pairs["train_id"] = pairs["train_id"].astype(str) + HOSTILE_ID
    pairs.to_parquet(run / "pairs.parquet")
    with np.load(run / "dynamics.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["example_ids"] = np.char.add(arrays["example_ids"].astype(str), HOSTILE_ID)
    np.savez(run / "dynamics.npz", **arrays)


@pytest.fixture
def hostile_run(review_run):
    """The digits run with HTML, Markdown and script in its class names, example ids, category reasons
    and a reviewer's name."""
    import json

    run, _ = review_run
    man = json.loads((run / "manifest.json").read_text())
    man["dataset"]["class_names"] = HOSTILE_CLASSES
    (run / "manifest.json").write_text(json.dumps(man))
    _hostile_ids(run)
    ex = pd.read_parquet(run / "examples.parquet")
    for split in ("train", "test"):
        first = ex[ex.split == split].sort_values("issue_score", ascending=False)["example_id"].iloc[0]
        DecisionStore(run).record(first, "relabel", reviewer=HOSTILE_REVIEWER, new_label=3)
    return run


def test_names_from_data_reach_every_page_escaped(hostile_run):
    from app import ui

    at = open_app()
    assert raw_leaks(at, RAW) == []
    assert list(at.dataframe[1].value["class"]) == HOSTILE_CLASSES  # tables show the names as they are
    at.switch_page(REVIEW).run()
    assert not at.exception and raw_leaks(at, RAW) == []
    # the open example's id and label go into HTML escaped; a button label carries the name escaped
    ex = pd.read_parquet(hostile_run / "examples.parquet").set_index("example_id")
    given = HOSTILE_CLASSES[int(ex.at[current_id(at), "given_label"])]
    html = " ".join(h.proto.body for h in at.get("html"))
    assert f"{ui.esc(current_id(at))} · train" in html and f">{ui.esc(given)}</div>" in html
    assert at.button(key="decide_keep").label == f"Keep {ui.md(given)}"
    assert ui.md(HOSTILE_CLASSES[3]) == r"\*\*bold\*\* \_it\_" and ui.md("a\nb") == "a b"
    decided = DecisionStore(hostile_run).latest()["example_id"].iloc[0]
    at = open_app(REVIEW, example=decided)  # a decision by the hostile reviewer
    assert any(ui.md(HOSTILE_REVIEWER) in s.value for s in at.success) and raw_leaks(at, RAW) == []
    at.segmented_control(key="f_split").set_value("test").run()
    at.segmented_control(key="f_status").set_value("all").run()
    assert not at.exception and raw_leaks(at, RAW) == []
    at = open_app(REVIEW, example=HOSTILE_CLASSES[0])  # a link naming no example: the warning quotes it as text
    assert any(ui.md(HOSTILE_CLASSES[0]) in w.value for w in at.warning) and raw_leaks(at, RAW) == []
    for reason in ("robust_error", "natural_error"):
        at = open_app("views/pairs.py")
        at.segmented_control(key="pairs_reason").set_value(reason).run()
        assert not at.exception and raw_leaks(at, RAW) == []
    at = open_app(DECISIONS)
    assert not at.exception and raw_leaks(at, RAW) == []
    assert set(at.dataframe[0].value["reviewer"]) == {HOSTILE_REVIEWER}


# -- joint fixes across the split (issue 16) ----------------------------------------------------------------
def _decision(choice: int, given: int) -> tuple[str, int | None]:
    return ("keep", None) if choice == given else ("relabel", choice)


def test_joint_fix_on_the_pairs_page_records_the_test_and_the_training_label(review_run):
    from app import ui

    run, _ = review_run
    ex = pd.read_parquet(run / "examples.parquet").set_index("example_id")
    pairs = pd.read_parquet(run / "pairs.parquet")
    at = open_app("views/pairs.py")  # opens on the robust model's errors
    fixes = [b for b in at.button if b.key and b.key.startswith("joint_fix_")]
    assert fixes and fixes[0].label == "Record both"  # test images whose partner is flagged come first
    k = fixes[0].key[len("joint_fix_"):]
    test_id = {ui.key(t): t for t in pairs["test_id"].unique()}[k]
    partners = pairs[(pairs.test_id == test_id) & (pairs.reason == "robust_error")].sort_values("rank")
    train_id = next(t for t in partners["train_id"] if ex.at[t, "is_label_issue"])  # the top flagged partner
    t, tr = ex.loc[test_id], ex.loc[train_id]

    # the defaults: the test label's suggestion when it is flagged (else kept), the partner's suggestion
    at.button(key=f"joint_fix_{k}").click().run()
    assert not at.exception
    log = DecisionStore(run).log()
    want_test = _decision(int(t.suggested_label if t.is_label_issue else t.given_label), int(t.given_label))
    want_train = _decision(int(tr.suggested_label), int(tr.given_label))
    got = [(r.example_id, r.decision, None if pd.isna(r.new_label) else int(r.new_label), r.reviewer)
           for r in log.itertuples()]
    assert got == [(test_id, *want_test, "tester"), (train_id, *want_train, "tester")]
    assert any(s.value.startswith("Recorded both") for s in at.success)

    # chosen labels: the test image relabelled, the training image removed; another reviewer decided the
    # training image while the page was open: both rows kept, the conflict reported
    other = (int(t.given_label) + 1) % 10
    at.selectbox(key=f"joint_test_{k}").set_value(other)
    at.selectbox(key=f"joint_train_{k}").set_value(-1)
    DecisionStore(run).record(train_id, "keep", reviewer="zoe")
    at.button(key=f"joint_fix_{k}").click().run()
    assert not at.exception
    latest = DecisionStore(run).latest().set_index("example_id")
    assert (latest.at[test_id, "decision"], latest.at[test_id, "new_label"]) == ("relabel", other)
    assert latest.at[train_id, "decision"] == "remove" and latest.at[train_id, "reviewer"] == "tester"
    assert any("zoe" in w.value for w in at.warning)
    assert len(DecisionStore(run).log()) == 5


def test_audit_app_on_a_busy_port_says_so_and_suggests_another(review_run, capsys, monkeypatch):
    import os
    import socket

    from audit.cli import main as cli
    from audit.commands.app import streamlit_command

    run, _ = review_run

    def no_server(*_):
        raise AssertionError("the server was started on a busy port")

    monkeypatch.setattr(os, "execve", no_server)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert cli(["app", str(run), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no URL printed for a server that will not start
    assert err.startswith(f"audit: error: --port {port}: 127.0.0.1:{port} is already in use")
    assert "choose another with --port " in err
    # offline: no usage statistics, and the page icon is a file the app serves
    cmd = streamlit_command(run, "127.0.0.1", port)
    assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"
    from app.streamlit_app import ICON

    assert ICON.is_file() and ICON.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overview_shows_review_progress_and_verify_results(review_run):
    """The Overview says how many errors are likely left, and shows verify.json as `audit verify` wrote it."""
    import json

    run, man = review_run
    at = open_app()
    assert any("flagged training examples reviewed" in m.value for m in at.markdown)
    res = {"clean_accuracy": {"mean": 0.9, "low": 0.88, "high": 0.92}, "adv_accuracy": {"mean": 0.5, "low": None,
           "high": None}, "adv_accuracy_small": {"mean": 0.8, "low": 0.7, "high": 0.9}}
    (run / "verify.json").write_text(json.dumps({
        "eps": 0.1, "small_eps": 0.025, "apply": "suggested", "seeds": [0, 1],
        "variants": {"given": {"n_train": 1347, "results": {"natural": res}}},
        "gain_recovered": {"adv_accuracy": None, "adv_accuracy_small": None}}))
    at = open_app()
    table = next(d.value for d in at.dataframe if "variant" in d.value.columns)
    assert list(table.columns) == ["variant", "train rows", "model", "clean acc", "adv acc @0.1", "adv acc @0.025"]
    assert table.iloc[0].tolist() == ["given", "1347", "natural", "0.900 ± 0.020", "0.500", "0.800 ± 0.100"]


def test_overview_names_failed_models_and_the_queue_never_shows_nothing(review_run):
    """A run whose robust model failed its health checks says so on the Overview (a warning per failure,
    a line per retrained model); with nothing flagged the review queue lists the top-ranked examples."""
    import json

    run, man = review_run
    m = json.loads((run / "manifest.json").read_text())
    m["warnings"] = ["pgd model failed no_memorizing after 3 trainings (fits 97% of the doubted labels)"]
    m["health"] = {**m["health"], "attempts": {"pgd": [{"stage": "train_pgd", "failed": ["no_memorizing"],
                                                        "retry": "training eps 0.1 -> 0.15, epochs 40 -> 24"},
                                                       {"stage": "train_pgd_try2", "failed": [], "retry": None}],
                                               "aug": [{"stage": "train_aug", "failed": ["beats_chance"],
                                                        "retry": "learning rate 0.1 -> 0.05",
                                                        "stopped": "its training accuracy fell back to chance: "
                                                                   "stopped after epoch 12 of 25"},
                                                       {"stage": "train_aug_try2", "failed": [], "retry": None}]}}
    (run / "manifest.json").write_text(json.dumps(m))
    at = open_app()
    assert [w.value for w in at.warning] == ["pgd model failed no\\_memorizing after 3 trainings \\(fits 97\\% of the "
                                             "doubted labels\\)"]
    assert any("PGD\\-AT\\: retrained 1x after failed health checks" in c.value for c in at.caption)
    # a collapsed training's early stop is named beside its retry
    assert any("retrained 1x" in c.value and "fell back to chance" in c.value and "epoch 12 of 25" in c.value
               for c in at.caption)
    df = pd.read_parquet(run / "examples.parquet")
    _nothing_flagged(run)
    at = open_app(REVIEW)
    assert any("Nothing is flagged in this split" in i.value for i in at.info)
    top = df[df.split == "train"].sort_values(["issue_score", "example_id"], ascending=[False, True])
    assert current_id(at) == top["example_id"].iloc[0]


# -- rough edges (issue 26) ---------------------------------------------------------------------------------
def _nothing_flagged(run: Path) -> None:
    """The run's examples with nothing flagged (the table's schema metadata kept)."""
    set_columns(run, {"is_label_issue": [False] * len(pd.read_parquet(run / "examples.parquet"))})


def _toggles(at: AppTest) -> dict:
    return {t.key: t for t in at.toggle}


def test_queue_controls_and_counts_say_what_is_listed(review_run):
    """The unflagged sample hides the flagged-queue filters and counts its own rows; with nothing
    flagged, "Flagged only" shows off and the counts name the whole split, never "0 of 0 flagged"."""
    run, _ = review_run
    ex = pd.read_parquet(run / "examples.parquet").set_index("example_id")
    at = open_app(REVIEW)
    assert _toggles(at)["f_flagged"].value is True
    at.selectbox(key="f_sample").set_value("unflagged sample").run()
    assert not at.exception
    assert "f_flagged" not in _toggles(at) and not [w for w in at.multiselect if w.key == "f_classes"]
    assert any("fixed random sample of 50 unflagged training examples" in c.value for c in at.caption)
    listed = [b for b in at.button if b.key and b.key.startswith("open_")]
    assert listed and not ex.loc[current_id(at), "is_label_issue"]
    head = next(m.value for m in at.markdown if "in this queue" in m.value)
    assert head == "**50** in this queue · **0 of 50** in a fixed random sample of 50 unflagged training examples " \
                   "reviewed"
    assert not any("flagged train examples" in c.value for c in at.caption)

    _nothing_flagged(run)
    at = open_app(REVIEW)
    flag = _toggles(at)["f_flagged_none"]
    assert flag.value is False and flag.proto.disabled and "f_flagged" not in _toggles(at)
    n_train = int((ex["split"] == "train").sum())
    head = next(m.value for m in at.markdown if "in this queue" in m.value)
    assert head.startswith(f"**{n_train:,}** in this queue · nothing flagged in train")
    assert not any("0 of 0" in m.value for m in at.markdown)
    assert any(c.value.startswith(f"{n_train:,} train examples, none flagged") for c in at.caption)
    assert not at.get("progress")


def test_test_rows_offer_keep_and_relabel_only(review_run):
    run, _ = review_run
    ex = pd.read_parquet(run / "examples.parquet")
    test_id = ex[(ex.split == "test") & ex.is_label_issue]["example_id"].iloc[0]
    at = open_app(REVIEW, example=test_id)
    keys = {b.key for b in at.button}
    assert "decide_remove" not in keys and {"decide_keep", "decide_skip"} <= keys
    assert any(c.value.startswith("A test example is never removed") for c in at.caption)
    assert "X" not in at.button(key="decide_keep").help
    at = open_app(REVIEW)  # a training row still can be removed
    assert "decide_remove" in {b.key for b in at.button}
    assert not any(c.value.startswith("A test example is never removed") for c in at.caption)


def test_an_unflagged_example_is_not_said_to_be_flagged_and_its_numbers_read_as_words(review_run):
    run, _ = review_run
    ex = pd.read_parquet(run / "examples.parquet")
    tr = ex[(ex.split == "train") & ~ex.is_label_issue & (ex.signals_fired != "")]
    never = tr[tr["first_learned_pgd"] == -1] if (tr["first_learned_pgd"] == -1).any() else tr
    r = never.iloc[0]
    at = open_app(REVIEW, example=r.example_id)
    captions = [c.value for c in at.caption]
    assert not any("flagged it" in c for c in captions)
    assert any(c.startswith("Not flagged. Strongest signals") for c in captions)
    numbers = " ".join(m.value for m in at.markdown)
    assert "percentile of training examples" in numbers and "pct" not in numbers
    table = at.table[0].value
    learned = table.loc["learned for good at"].tolist()
    assert "-1" not in learned and all(v == "never learned" or v.startswith("epoch ") for v in learned)
    if r["first_learned_pgd"] == -1:
        assert table.loc["learned for good at", "PGD\\-AT"] == "never learned"
    assert at.dataframe == [] or all("based_on" not in d.value.columns for d in at.dataframe)
    # a flagged one is
    at = open_app(REVIEW)
    assert any(c.value.startswith("Signals that flagged it") for c in at.caption)


def test_history_and_pairs_read_as_people_write(review_run):
    run, _ = review_run
    first = flagged_train(run)["example_id"].iloc[0]
    DecisionStore(run).record(first, "keep", reviewer="ann")
    at = open_app(REVIEW, example=first)
    hist = next(d.value for d in at.dataframe if "reviewer" in d.value.columns)
    assert list(hist.columns) == ["decided at (UTC)", "reviewer", "decision"]
    at = open_app("views/pairs.py")
    infl = [c.value for c in at.caption if c.value.startswith("influence ")]
    assert infl and not any("e+" in c or "e\\+" in c or "e-0" in c for c in infl)


def test_overview_fits_names_every_class_and_says_how_issue_score_was_chosen(review_run):
    import json

    run, man = review_run
    m = json.loads((run / "manifest.json").read_text())
    m["config"]["eps"] = 8 / 255
    m["dataset"]["class_names"] = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                   "Sneaker", "Bag", "Ankle boot"]
    (run / "manifest.json").write_text(json.dumps(m))
    at = open_app()
    assert "eps 8\\/255" in at.caption[0].value and "0.0313" not in at.caption[0].value  # Markdown-escaped
    # the per-class numbers in two narrow tables rather than one clipped one
    flags = at.dataframe[1].value
    assert list(flags.columns) == ["class", "train", "flagged", "flagged %", "mislabelled", "ambiguous", "atypical",
                                   "most often really"]
    acc = next(d.value for d in at.dataframe if "PGD-AT adv." in d.value.columns)
    assert list(acc.columns) == ["class", "natural test", "natural adv.", "PGD-AT test", "PGD-AT adv."]
    # the heatmap lists every class
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    x = spec["layer"][0]["encoding"]["x"]
    assert x["axis"]["labelOverlap"] is False and x["scale"]["domain"] == m["dataset"]["class_names"]
    # how issue_score was chosen: the chosen signal named once, described, first in its table, in plain words
    sel = m["signal_selection"]
    chosen = sel["chosen"]
    exp = next(e for e in at.expander if e.label.startswith("How issue"))
    assert exp.label.count(chosen.replace("_", "\\_")) == 1 and "—" in exp.label
    assert any(s.value.startswith(f"**Chosen: {chosen.replace('_', chr(92) + '_')}**") for s in at.success)
    table = next(d.value for d in at.dataframe if "rank sum" in d.value.columns)
    assert table["signal"].iloc[0] == f"{chosen} (chosen)"
    assert table["rank sum"].iloc[1:].is_monotonic_increasing  # then the best by rank sum
    text = " ".join(md.value for md in exp.markdown)
    assert "canaries" in text and "cleanlab" in text
    assert "rank sum over three canary AUPRCs" not in text and sel["rule"][:40] not in text
