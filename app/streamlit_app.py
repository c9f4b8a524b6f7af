"""Review app over one run directory: ``audit app RUN`` (or ``streamlit run app/streamlit_app.py -- RUN``).

Pages (``st.navigation``): Overview, Review queue, Pairs, Decisions; each lives in ``app/views/``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import data, ui

HERE = Path(__file__).resolve().parent
PAGES = (
    ("views/overview.py", "Overview", ":material/dashboard:", "overview"),
    ("views/review.py", "Review queue", ":material/checklist:", "review"),
    ("views/pairs.py", "Pairs", ":material/compare:", "pairs"),
    ("views/decisions.py", "Decisions", ":material/fact_check:", "decisions"),
)


def sidebar_ui(run: ui.Run) -> str:
    """Run summary and the reviewer's name; returns the name."""
    with st.sidebar:
        st.title("benign-audit")
        ds = run.manifest["dataset"]
        st.caption(f"**{ds.get('name', ds['spec'])}** · {ds.get('num_train', '?')} train / "
                   f"{ds.get('num_test', '?')} test · {len(run.class_names)} classes  \n`{run.dir}`")
        name = st.text_input("Reviewer", value=ui.default_reviewer(), key="reviewer", bind="query-params",
                             help="Stored with every decision you make.")
    return (name or "").strip() or ui.default_reviewer()


def main() -> None:
    st.set_page_config(page_title="benign-audit review", page_icon=":material/label:", layout="wide")
    run_path = data.run_dir_from_argv()
    problem = data.run_problem(run_path)
    if problem:
        st.title("benign-audit")
        st.error(problem)
        return
    run = ui.current_run()
    ui.style()
    sidebar_ui(run)
    pages = [st.Page(str(HERE / path), title=title, icon=icon, url_path=None if i == 0 else slug, default=(i == 0))
             for i, (path, title, icon, slug) in enumerate(PAGES)]
    st.navigation(pages, position="top").run()


if __name__ == "__main__":
    main()
