"""Helpers shared by the review app's AppTest suites (test_app, test_app_untrusted, test_app_issue_types):
the pages' paths, opening a browser session on a page, counting pictures, the flagged training queue,
replacing columns of a run's examples table, and finding hostile text rendered as Markdown or HTML.
The run directory itself comes from conftest's ``review_run`` fixture."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from streamlit.testing.v1 import AppTest

from audit.commands.app import app_path

REVIEW = "views/review.py"
PAIRS = "views/pairs.py"
DECISIONS = "views/decisions.py"
ISSUES = "views/issues.py"
# The components that show text as plain text: hostile strings may stand in them as they are.
PLAIN_TEXT = {"dataframe", "vega_lite_chart", "selectbox", "multiselect", "text", "code", "text_input"}


def open_app(page: str | None = None, **query) -> AppTest:
    """A new browser session on ``page`` (a page's url_path is its file name, so it opens directly); the
    page must render without an exception."""
    at = AppTest.from_file(str(app_path()), default_timeout=60)
    at.query_params.update(query)
    if page:
        at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def pictures(at: AppTest) -> int:
    """Pictures on the page: an ``st.image`` list (the neighbour strip) counts each of its images."""
    return sum(len(e.proto.imgs) for e in at.get("image"))


def flagged_train(run: Path) -> pd.DataFrame:
    """The run's flagged training examples in the review queue's order."""
    df = pd.read_parquet(run / "examples.parquet")
    return df[(df.split == "train") & df.is_label_issue].sort_values(["issue_score", "example_id"],
                                                                      ascending=[False, True])


def set_columns(run: Path, columns: dict) -> None:
    """Replace (or add) columns of the run's examples table, its schema metadata kept; a value may be a
    list or a ``pa.Array`` (to choose its type)."""
    t = pq.read_table(run / "examples.parquet")
    for name, values in columns.items():
        arr = values if isinstance(values, pa.Array) else pa.array(values)
        i = t.schema.get_field_index(name)
        t = t.set_column(i, name, arr) if i >= 0 else t.append_column(name, arr)
    pq.write_table(t, run / "examples.parquet")


def raw_leaks(at: AppTest, raw: tuple[str, ...]) -> list[tuple[str, str]]:
    """(element type, text) for every element outside PLAIN_TEXT whose content carries one of the hostile
    strings ``raw`` unescaped (Streamlit renders all of those as Markdown, or as HTML)."""
    leaks = []
    for node in at._tree:
        proto = getattr(node, "proto", None)
        if proto is None or node.type in PLAIN_TEXT:
            continue
        text = str(proto)  # st.html takes no Markdown: there only tags count
        leaks += [(node.type, r) for r in raw if r in text and (node.type != "html" or r[0] == "<")]
    return leaks
