"""Review app over one run directory: ``audit app RUN`` (or ``streamlit run app/streamlit_app.py -- RUN``).

Pages (``st.navigation``): Overview, Review queue, Pairs, Other issues, Decisions; each lives in ``app/views/``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import data, ui
from audit.commands.app import request_refusal
from audit.errors import AuditInputError

HERE = Path(__file__).resolve().parent
# The page icon is a file served by the app itself: a ":material/...:" icon would make the browser fetch
# the favicon from fonts.gstatic.com (the app loads nothing from the internet). An emoji (a data: URL)
# stands in if the file is missing from an install.
ICON = HERE / "static" / "icon.png"
PAGES = (
    ("views/overview.py", "Overview", ":material/dashboard:", "overview"),
    ("views/review.py", "Review queue", ":material/checklist:", "review"),
    ("views/pairs.py", "Pairs", ":material/compare:", "pairs"),
    ("views/issues.py", "Other issues", ":material/content_copy:", "issues"),
    ("views/decisions.py", "Decisions", ":material/fact_check:", "decisions"),
)


def sidebar_ui(run: ui.Run) -> str:
    """Run summary and the reviewer's name; returns the name."""
    with st.sidebar:
        st.title("benign-audit")
        ds = run.manifest["dataset"]
        st.caption(f"**{ui.md(ds.get('name', ds['spec']))}** · {ui.md(ds.get('num_train', '?'))} train / "
                   f"{ui.md(ds.get('num_test', '?'))} test · {len(run.class_names)} classes  \n{ui.md(run.dir)}")
        if not run.trained:  # said on every page: what needs a model is missing everywhere
            src = run.given_input()
            st.caption(f"{ui.NO_MODELS}: the audit reads your model's probabilities"
                       + (f" ({ui.md(src)})" if src else "") + " alone.")
        name = st.text_input("Reviewer", value=ui.default_reviewer(), key="reviewer", bind="query-params",
                             help="Stored with every decision you make.")
    return (name or "").strip() or ui.default_reviewer()


def dataset_notice_ui(run: ui.Run) -> None:
    """Why no image is shown, on every page: the run's dataset does not match its recorded fingerprint
    (:func:`app.data.dataset_notice`, where the data layer has it). Plain text: it may quote the manifest."""
    notice_of = getattr(data, "dataset_notice", None)
    notice = notice_of(run.dir) if callable(notice_of) else None
    if notice:
        st.warning(ui.md(notice), icon=":material/image_not_supported:")


def main() -> None:
    st.set_page_config(page_title="benign-audit review", page_icon=str(ICON) if ICON.is_file() else "🏷️",
                       layout="wide")
    refusal = request_refusal(st.context.headers)  # before anything is read or recorded
    if refusal:
        st.error(refusal)
        st.stop()
    run_path = data.run_dir_from_argv()
    problem = data.run_problem(run_path)
    if problem:
        st.title("benign-audit")
        empty = data.no_examples(run_path)
        if empty:  # nothing to review is not an error
            st.info(ui.md(empty), icon=":material/info:")
        else:
            st.error(ui.md(problem))
        return
    run = ui.current_run()
    ui.style()
    sidebar_ui(run)
    dataset_notice_ui(run)
    for line in data.examples_problems(run.dir):
        st.warning(ui.md(line), icon=":material/warning:")
    pages = [st.Page(str(HERE / path), title=title, icon=icon, url_path=None if i == 0 else slug, default=(i == 0))
             for i, (path, title, icon, slug) in enumerate(PAGES)]
    page = st.navigation(pages, position="top")
    try:
        page.run()
    except AuditInputError as e:  # a run file refused while the page read it: its message, not a traceback
        st.error(ui.md(e), icon=":material/error:")


if __name__ == "__main__":
    main()
