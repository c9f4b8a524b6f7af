"""The issue types beyond label errors in the review app and the report (issue 23): the Other issues page
(counts, near-duplicate groups side by side, leaks test ↔ train, a grid of the rest), the review queue's
"issue type" filter, the Overview's lines and class balance, the report's section and figure, runs made
before the issue types existed, and the zoomed view of a 16-bit PNG.

The digits run has natural findings (one near-duplicate group whose labels disagree, one leak, outliers);
a copy of it gets one more group and one more leak planted in its table (the images stay the digits'
own: they come from the dataset the run's fingerprint names), the leak's reason carrying HTML and Markdown.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from streamlit.testing.v1 import AppTest

from audit.decisions import DecisionStore

from apphelpers import ISSUES, REVIEW, open_app, pictures, raw_leaks, set_columns

TYPES = ("near_duplicate", "leak", "outlier", "dark", "light", "blurry", "low_information", "odd_size",
         "class_imbalance")
HOSTILE = '<img src=x onerror="window.__x=1"> **bold** [a](javascript:alert(1))'
RAW = ("<img src=x onerror=", "**bold**", "](javascript:")
PLANTED_GROUP = 7


@pytest.fixture
def issue_run(review_run):
    """A private copy of the digits run with a planted near-duplicate group of three (one label) and a
    planted leak whose reason holds HTML and Markdown."""
    run, man = review_run
    ex = pd.read_parquet(run / "examples.parquet")
    free = (ex.split == "train") & ~ex.is_near_duplicate_issue & (ex.given_label == 3)
    members = np.flatnonzero(free.to_numpy())[:3]
    dup, group, reason = ex.is_near_duplicate_issue.to_numpy().copy(), ex.duplicate_group.to_numpy().copy(), \
        ex.near_duplicate_reason.to_numpy().copy()
    dup[members], group[members] = True, PLANTED_GROUP
    reason[members] = f"3 copies (group {PLANTED_GROUP}), all labelled 3; exact pixels"
    score = ex.near_duplicate_score.to_numpy().copy()
    score[members] = 1.0
    test = np.flatnonzero(((ex.split == "test") & ~ex.is_leak_issue).to_numpy())[0]
    partner_row = np.flatnonzero((ex.split == "train").to_numpy())[5]
    leak, partner, lreason, lscore = (ex.is_leak_issue.to_numpy().copy(), ex.leak_partner.to_numpy().copy(),
                                      ex.leak_reason.to_numpy().copy(), ex.leak_score.to_numpy().copy())
    leak[test], partner[test], lreason[test], lscore[test] = True, ex.example_id.iloc[partner_row], HOSTILE, 1.0
    set_columns(run, {"is_near_duplicate_issue": dup.tolist(), "duplicate_group": group.astype(np.int64).tolist(),
                      "near_duplicate_reason": reason.astype(str).tolist(), "near_duplicate_score": score.tolist(),
                      "is_leak_issue": leak.tolist(), "leak_partner": partner.astype(str).tolist(),
                      "leak_reason": lreason.astype(str).tolist(), "leak_score": lscore.tolist()})
    return run, man


def shown_ids(at: AppTest) -> list[str]:
    """Example ids in the order the Other issues page shows them (each cell's id, as escaped HTML)."""
    import html

    out = []
    for h in at.get("html"):
        body = h.proto.body
        if body.startswith("<span class='audit-id'>"):
            out.append(html.unescape(body[len("<span class='audit-id'>"):-len("</span>")]))
    return out


def table(run: Path) -> pd.DataFrame:
    return pd.read_parquet(run / "examples.parquet")


def test_the_digits_run_has_natural_findings(digits_run):
    """What the tests below build on: the pipeline's own columns, and something found in each of three types."""
    run, man = digits_run
    ex = table(run)
    for name in TYPES:
        assert {f"{name}_score", f"is_{name}_issue", f"{name}_reason"} <= set(ex.columns)
        assert int(ex[f"is_{name}_issue"].sum()) == man["issue_types"][name]["count"]
    assert {"duplicate_group", "leak_partner", "content_hash"} <= set(ex.columns)
    assert man["issue_types"]["near_duplicate"]["count"] >= 2 and man["issue_types"]["leak"]["count"] >= 1
    assert man["issue_types"]["outlier"]["count"] >= 1


def test_other_issues_page_counts_groups_side_by_side_and_leaks_test_train(issue_run):
    from app.issue_types import duplicate_groups
    from audit.issues import ISSUE_TYPES

    run, _ = issue_run
    ex = table(run)
    at = open_app(ISSUES)
    counts = at.dataframe[0].value.set_index("issue type")
    assert list(counts.index) == list(TYPES)
    for name in TYPES:  # the table's counts, the type's own description
        assert counts.at[name, "flagged"] == int(ex[f"is_{name}_issue"].sum())
        assert counts.at[name, "description"] == ISSUE_TYPES[name].description
    # near duplicates (the first type with findings): the natural group whose labels disagree first, then the planted one
    assert at.selectbox(key="issue_type").value == "near_duplicate"
    groups = duplicate_groups(ex)
    assert groups[0].conflicting and not groups[-1].conflicting and groups[-1].group == PLANTED_GROUP
    want = [ex.example_id.iloc[i] for g in groups for i in g.rows]
    assert shown_ids(at) == want and len(want) == 2 + 3
    planted = sorted(ex.example_id[ex.duplicate_group == PLANTED_GROUP])
    assert shown_ids(at)[-3:] == planted
    assert any("labels disagree" in m.value for m in at.markdown)
    assert pictures(at) == len(want)
    # leaks: the test image beside its training copy, the planted (closest) one first
    at.selectbox(key="issue_type").set_value("leak").run()
    assert not at.exception
    leaks = ex[ex.is_leak_issue].sort_values(["leak_score", "example_id"], ascending=[False, True])
    pairs = [x for t, p in zip(leaks.example_id, leaks.leak_partner) for x in (t, p)]
    assert shown_ids(at) == pairs
    assert any("test" == c.value for c in at.caption) and any("train" == c.value for c in at.caption)
    assert raw_leaks(at, RAW) == []  # the planted reason's HTML and Markdown are text
    # outliers: a grid, highest score first, one page at most
    at.selectbox(key="issue_type").set_value("outlier").run()
    assert not at.exception
    out = ex[ex.is_outlier_issue].sort_values(["outlier_score", "example_id"], ascending=[False, True])
    assert shown_ids(at) == out.example_id.head(12).tolist()
    assert pictures(at) == min(12, len(out))
    # a type with nothing flagged says so
    at.selectbox(key="issue_type").set_value("dark").run()
    assert not at.exception and any("Nothing flagged as dark" in s.value for s in at.success)


def test_overview_links_each_type_with_its_count_and_summarises_the_classes(issue_run):
    run, man = issue_run
    ex = table(run)
    at = open_app()
    links = {pl.proto.query_string: pl.proto.label for pl in at.get("page_link") if pl.proto.page == "issues"}
    for name in TYPES:
        assert links[f"issue_type={name}"] == f"{name}: {int(ex[f'is_{name}_issue'].sum()):,} flagged"
    balance = next(d.value for d in at.dataframe if "ratio to median" in d.value.columns)
    per_class = man["issue_types"]["class_imbalance"]["per_class"]
    by_name = balance.set_index("class")
    for e in per_class:
        row = by_name.loc[e["name"]]
        assert row["train"] == e["train_count"]
        assert row["ratio to median"] == pytest.approx(e["ratio_to_median"], abs=1e-3)
        assert row["test accuracy"] == pytest.approx(e["test_accuracy_natural"], abs=1e-3)
        assert ("under-performing" in row["flags"]) == e["under_performing"]
        assert ("rare" in row["flags"]) == e["rare"]
    under = man["issue_types"]["class_imbalance"]["under_performing_classes"]
    assert list(balance["class"][:len(under)]) == sorted(under, key=man["dataset"]["class_names"].index)
    # a link from the Overview opens the page on that type
    at = open_app(ISSUES, issue_type="leak")
    assert at.selectbox(key="issue_type").value == "leak"


def test_queue_filter_lists_exactly_the_flagged_rows_of_the_type_and_decides_them(issue_run):
    from app.issue_types import ordered_rows
    from app.queue import Filters, review_queue

    run, _ = issue_run
    ex = table(run)
    at = open_app(REVIEW)
    assert at.selectbox(key="f_issue_type").value == "label"  # label issues by default
    at.selectbox(key="f_page_size").set_value(48).run()
    for name in ("near_duplicate", "leak", "outlier"):
        at.selectbox(key="f_issue_type").set_value(name).run()
        assert not at.exception
        want = ex.example_id.iloc[ordered_rows(ex, name)].tolist()
        assert set(want) == set(ex.example_id[ex[f"is_{name}_issue"]])  # both splits
        cells = [b.help.split(" · ")[0].replace("\\", "") for b in at.button if b.key and b.key.startswith("open_")]
        assert cells == want[:48]
        assert at.session_state["current"] == want[0]
        assert any(f"**{len(want):,}** in this queue" in m.value for m in at.markdown)
        q = review_queue(ex, [], Filters(issue_type=name))
        assert ex.example_id.iloc[q].tolist() == want
    # the same keys decide a duplicate: remove the first of its group, the next member opens
    at.selectbox(key="f_issue_type").set_value("near_duplicate").run()
    order = ex.example_id.iloc[ordered_rows(ex, "near_duplicate")].tolist()
    assert any(c.value.startswith("**near\\_duplicate**") for c in at.caption)  # its reason beside it
    assert any(c.value.startswith("Its copies") for c in at.caption)
    at.button(key="decide_remove").click().run()
    assert not at.exception
    assert DecisionStore(run).log()[["example_id", "decision"]].values.tolist() == [[order[0], "remove"]]
    assert at.session_state["current"] == order[1]
    # a test image in the leak queue: keep or relabel, never remove
    at.selectbox(key="f_issue_type").set_value("leak").run()
    assert at.session_state["current"] in set(ex.example_id[ex.split == "test"])
    assert not [b for b in at.button if b.key == "decide_remove"]
    assert raw_leaks(at, RAW) == []
    # the signal filter lists label signals, not the issue types
    at.selectbox(key="f_issue_type").set_value("label").run()
    assert not set(at.multiselect(key="f_signals").options) & set(TYPES)
    # a link from the Other issues page opens the queue on that type
    at = open_app(REVIEW, f_issue_type="outlier")
    out = ex.example_id.iloc[ordered_rows(ex, "outlier")].tolist()
    assert at.selectbox(key="f_issue_type").value == "outlier" and at.session_state["current"] == out[0]


def _report(run: Path, **kw) -> str:
    from audit.report import build_report

    return build_report(run, top=4, pairs=2, **kw).read_text()


def test_report_has_the_section_table_and_figure(issue_run):
    from audit.issues import ISSUE_TYPES
    from audit.report import SVG_PREFIX

    run, man = issue_run
    ex = table(run)
    page = _report(run)
    section = page.split("<h2>Other issues</h2>")[1].split("<h2>")[0]
    for name in TYPES:
        count = int(ex[f"is_{name}_issue"].sum())
        row = section.split(f"<tr><td>{name}</td>")[1].split("</tr>")[0]
        assert f"<td>{count}</td>" in row
    assert "exact or near copies of one another" in section and ISSUE_TYPES["leak"].description in section
    assert "2 groups, 1 with labels that disagree" in section
    uri = section.split(f'src="{SVG_PREFIX}')[1].split('"')[0]
    svg = base64.b64decode(uri).decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "<script" not in svg
    assert "under-performing classes" in section


def test_a_run_without_issue_columns_keeps_working_everywhere(issue_run):
    run, _ = issue_run
    t = pq.read_table(run / "examples.parquet")
    drop = [c for c in t.column_names if any(c in (f"{n}_score", f"is_{n}_issue", f"{n}_reason") for n in TYPES)]
    drop += ["duplicate_group", "leak_partner", "content_hash"]
    pq.write_table(t.drop(drop), run / "examples.parquet")
    man = json.loads((run / "manifest.json").read_text())
    man.pop("issue_types", None)
    (run / "manifest.json").write_text(json.dumps(man))
    at = open_app()
    assert not [pl for pl in at.get("page_link") if pl.proto.page == "issues"]
    assert not any(s.value == "Other issues" for s in at.subheader)
    at = open_app(ISSUES)
    assert any("older benign-audit" in i.value for i in at.info)
    at = open_app(REVIEW, f_issue_type="outlier")  # a link to a type the run lacks: the label queue
    assert not [s for s in at.selectbox if s.key == "f_issue_type"]
    flagged = table(run).query("split == 'train' and is_label_issue")
    assert at.session_state["current"] == flagged.sort_values(["issue_score", "example_id"],
                                                              ascending=[False, True]).example_id.iloc[0]
    page = _report(run)
    assert "Other issues" not in page and "data:image/svg" not in page


def test_a_16_bit_png_zooms_as_the_loader_decodes_it(tmp_path):
    from PIL import Image

    from app.data import _file_png, decoded_source

    a = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(a).save(path)
    with Image.open(path) as im:
        im.load()
        assert im.mode.startswith("I;16")
        assert np.asarray(im.convert("RGB")).mean() > 250  # what the zoom showed before: white
        got = np.asarray(decoded_source(im))
    assert got.dtype == np.uint8 and np.array_equal(got, ((a.astype(np.uint32) + 128) // 257).astype(np.uint8))
    png = _file_png(str(path), path.stat().st_mtime, 64)
    shown = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert shown.shape == (64, 64) and shown.min() == 0 and shown.max() == 255 and 100 < shown.mean() < 155
    for mode in ("L", "RGB", "RGBA", "LA", "P"):  # the other modes still decode, to grey or RGB
        assert decoded_source(Image.new(mode, (4, 4))).mode in ("L", "RGB")


def test_issue_columns_that_are_not_what_the_pipeline_writes_render_as_text(issue_run):
    """A run directory is input (flags and scores of another kind are refused by RunDir; these columns are
    not): groups that are not numbers, a leak partner the run lacks, reasons that are not text, a class report
    that is not one, and class names with HTML: every page renders, nothing is raised, nothing from data is
    formatted."""
    run, _ = issue_run
    ex = table(run)
    n = len(ex)
    man = json.loads((run / "manifest.json").read_text())
    man["dataset"]["class_names"] = [f"<img src=x onerror=window.__x={i}> **bold**" for i in range(10)]
    man["issue_types"]["class_imbalance"]["per_class"] = [{"class": "0"}, None, {"class": 99, "under_performing": 1}]
    (run / "manifest.json").write_text(json.dumps(man))
    leak_row = int(np.flatnonzero(ex.is_leak_issue.to_numpy())[0])
    partner = ex.leak_partner.astype(str).to_numpy().copy()
    partner[leak_row] = HOSTILE
    set_columns(run, {"duplicate_group": ["seven"] * n, "leak_partner": partner.tolist(),
                      "dark_reason": pa.array([1.5] * n)})
    for page in (None, ISSUES, REVIEW):
        at = open_app(page)
        assert raw_leaks(at, RAW) == [], page
    at = open_app(ISSUES)
    counts = at.dataframe[0].value.set_index("issue type")
    assert counts.at["outlier", "flagged"] == int(ex.is_outlier_issue.sum())
    assert counts.at["near_duplicate", "flagged"] == int(ex.is_near_duplicate_issue.sum())
    assert shown_ids(at)  # each flagged row stands alone without a usable group
    at.selectbox(key="issue_type").set_value("leak").run()
    assert not at.exception and raw_leaks(at, RAW) == []
    assert any("not a training image of this run" in c.value for c in at.caption)
    at = open_app(REVIEW, f_issue_type="leak")
    assert not at.exception and raw_leaks(at, RAW) == []
    assert _report(run).count("<h2>Other issues</h2>") == 1
