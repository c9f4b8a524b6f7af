"""Decisions: what reviewers decided (newest per example), undo, the full log, and the export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app import data, ui
from audit.decisions import DecisionStore
from audit.export import cleaned_labels, csv_bytes, flagged_test_labels

EXPORT_DIR = "exports"


TABLE_COLUMNS = ["example_id", "split", "decision", "given", "final", "suggested", "category", "issue_score",
                 "reviewer", "decided_at", "seq"]
NOT_IN_RUN = "not in this run"


def decisions_table(run: ui.Run) -> pd.DataFrame:
    """Effective decisions joined *by example id* with what the audit said about each example, newest
    first. A decision whose example the run does not have keeps its own columns and says "not in this
    run" (never another row's data)."""
    latest = data.latest_decisions(run.dir)
    if not len(latest):
        return pd.DataFrame(columns=TABLE_COLUMNS)
    df, rows = data.examples(run.dir), data.row_of(run.dir)
    pos = rows.get_indexer(latest["example_id"].astype(str))
    found = pos >= 0
    ex = df.iloc[np.where(found, pos, 0)].reset_index(drop=True) if len(df) else None

    def col(name, fill):
        if ex is None or name not in ex.columns:
            return [fill] * len(latest)
        return [v if ok else fill for v, ok in zip(ex[name].to_numpy(), found)]

    given = col("given_label", None)
    final = [run.name(n) if d == "relabel" else (run.name(g) if d == "keep" and g is not None else "–")
             for d, n, g in zip(latest["decision"], latest["new_label"], given)]
    out = pd.DataFrame({
        "example_id": latest["example_id"].astype(str).to_numpy(),
        "split": col("split", NOT_IN_RUN),
        "decision": latest["decision"].to_numpy(),
        "given": [run.name(g) if g is not None else "–" for g in given],
        "final": final,
        "suggested": [run.name(x) if x is not None else "–" for x in col("suggested_label", None)],
        "category": [str(c) if c is not None else "" for c in col("category", None)],
        "issue_score": pd.to_numeric(pd.Series(col("issue_score", np.nan)), errors="coerce").to_numpy(float),
        "reviewer": latest["reviewer"].astype(str).to_numpy(),
        "decided_at": [ui.when(t) for t in latest["decided_at"]],
        "seq": latest["seq"].to_numpy(),
    })
    return out.sort_values("seq", ascending=False).reset_index(drop=True)


def stale_table(run: ui.Run) -> pd.DataFrame:
    """The decisions not applied (:func:`app.data.stale_decisions`), newest first: the example, what was
    decided (about the label the reviewer saw), who, when (UTC) and why it no longer applies."""
    stale = data.stale_decisions(run.dir)
    if not len(stale):
        return pd.DataFrame(columns=["example", "decision", "reviewer", "when", "reason"])
    stale = stale.sort_values("seq", ascending=False)
    was = stale["given_label"] if "given_label" in stale.columns else pd.Series([None] * len(stale))
    reasons = [NOT_IN_RUN if str(r) == "example not in this run" else str(r) for r in stale["stale_reason"]]
    return pd.DataFrame({
        "example": stale["example_id"].astype(str).to_numpy(),
        "decision": [ui.decision_text(run, d, n, None if pd.isna(g) else g)
                     for d, n, g in zip(stale["decision"], stale["new_label"], was)],
        "reviewer": stale["reviewer"].astype(str).to_numpy(),
        "when": [ui.when(t) for t in stale["decided_at"]],
        "reason": reasons,
    })


def stale_ui(run: ui.Run) -> None:
    """The stale decisions as a table (the page's warning about them is above the decisions in effect)."""
    table = stale_table(run)
    if not len(table):
        return
    with st.expander(f"Decisions not applied ({len(table):,})", expanded=True):
        st.dataframe(table, hide_index=True, width="stretch", key="stale_table",
                     column_config={"when": st.column_config.TextColumn("when (UTC)")})
        st.caption("Each was made while the run showed another label or image for the example (or the example "
                   "is gone): review the example again to decide about what the run shows now.")


@st.cache_data(show_spinner=False, max_entries=8)
def _exports(run_dir: str, version: int, apply: str, drop_flagged: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cleaned labels and flagged test labels, recomputed only when a decision is written."""
    df = data.examples(Path(run_dir))
    return (cleaned_labels(run_dir, apply=apply, drop_flagged=drop_flagged, examples=df),
            flagged_test_labels(run_dir, apply=apply, examples=df))


def undo_selected(run_dir: str, picks: list[tuple[str, int]], reviewer: str) -> None:
    store = DecisionStore(run_dir)
    done = [store.record(ex, "undo", reviewer=reviewer, based_on=seq) for ex, seq in picks]
    st.session_state["decisions_flash"] = ("success", f"Undid {len(done)} decision{'s' if len(done) != 1 else ''}; "
                                                      "the log keeps them, marked undone.")
    st.session_state.pop("decisions_table", None)


def export_target_problem(run_dir: str | Path) -> str | None:
    """Why "Write to exports/" must not write into ``RUN/exports/``, or None: the folder (or a file to be
    replaced in it) is a symbolic link, resolves outside the run directory, or is not a folder / regular
    file. A run directory is input: a link there would make the app write wherever it points."""
    run = Path(run_dir)
    d = run / EXPORT_DIR
    if d.is_symlink():
        return f"{d}: a symbolic link; the export is written only into a real {EXPORT_DIR}/ folder inside the run"
    if d.exists() and not d.is_dir():
        return f"{d}: exists and is not a folder; move it away to write the export there"
    try:
        inside = d.resolve().is_relative_to(run.resolve()) and d.resolve() != run.resolve()
    except (OSError, RuntimeError):
        inside = False
    if not inside:
        return f"{d}: resolves outside the run directory {run}; not written"
    for name in EXPORT_FILES:
        f = d / name
        if f.is_symlink():
            return f"{f}: a symbolic link; the export does not write through links (remove it to write here)"
        if f.exists() and not f.is_file():
            return f"{f}: exists and is not a regular file; not written"
    return None


EXPORT_FILES = ("labels.reviewed.csv", "labels.reviewed.flagged-test.csv")


def write_export(run_dir: str, apply: str, drop_flagged: bool) -> None:
    """Write the reviewed labels into ``RUN/exports/`` (inside the run directory only; each file written to
    a temporary name and renamed, by :func:`audit.export.export_labels`); a folder or file there that is a
    link, or anything but a folder / regular file, is refused with a message."""
    from audit.errors import AuditError
    from audit.export import export_labels

    problem = export_target_problem(run_dir)
    if problem is None:
        d = Path(run_dir) / EXPORT_DIR
        try:
            d.mkdir(exist_ok=True)
        except OSError as e:
            problem = f"{d}: cannot be created ({e.strerror or type(e).__name__})"
        else:
            problem = export_target_problem(run_dir)  # what mkdir found there, checked again
    if problem is not None:
        st.session_state["decisions_flash"] = ("error", f"Not written: {ui.md(problem)}")
        return
    out = Path(run_dir) / EXPORT_DIR / EXPORT_FILES[0]
    try:
        df = export_labels(run_dir, out, apply=apply, drop_flagged=drop_flagged)
    except (AuditError, OSError) as e:
        st.session_state["decisions_flash"] = ("error", f"Not written: {ui.md(e)}")
        return
    st.session_state["decisions_flash"] = ("success", f"Wrote {ui.md(out)} ({len(df):,} training rows) and its "
                                                      "flagged-test list.")


def summary_ui(run: ui.Run, table: pd.DataFrame) -> None:
    log = DecisionStore(run.dir).log()
    c = st.columns(5)
    c[0].metric("decisions in effect", f"{len(table):,}")
    for i, d in enumerate(("keep", "relabel", "remove"), start=1):
        c[i].metric({"keep": "kept", "relabel": "relabelled", "remove": "removed"}[d],
                    f"{int((table['decision'] == d).sum()):,}")
    c[4].metric("reviewers", f"{table['reviewer'].nunique() if len(table) else 0}",
                f"{len(log):,} log rows", delta_color="off", delta_arrow="off",
                help="the log is append-only: every click, skip and undo is kept")


def export_ui(run: ui.Run) -> None:
    st.subheader("Export", anchor=False)
    st.caption("The training labels with provenance (`label_source`, `decision`, `reviewer`, `decided_at`, "
               "the signals). No label changes unless you say so: *decisions* applies only what reviewers "
               "decided; *suggested* also gives undecided flagged examples their suggested label (or drops "
               "them); *none* exports the given labels. Test examples are never removed: flagged test labels "
               "are a separate list to check. Same as `audit export RUN --apply POLICY --out labels.csv`.")
    apply = st.segmented_control("Apply", ["decisions", "suggested", "none"], default="decisions",
                                 key="export_apply") or "decisions"
    drop = apply == "suggested" and st.toggle("Drop flagged examples nobody decided on (instead of relabelling "
                                              "them)", value=False, key="export_drop_flagged")
    version = DecisionStore(run.dir).version()
    labels, test = _exports(str(run.dir), version, apply, drop)
    n_train = int((data.examples(run.dir)["split"] == "train").sum())
    c = st.columns(4)
    c[0].metric("training rows exported", f"{len(labels):,}", f"{n_train - len(labels):,} removed",
                delta_color="off", delta_arrow="off")
    c[1].metric("labels changed", f"{int((labels['final_label'] != labels['given_label']).sum()):,}")
    c[2].metric("decided by a reviewer", f"{int((labels['label_source'] == 'reviewer').sum()):,}")
    c[3].metric("flagged test labels", f"{len(test):,}")
    b = st.container(horizontal=True, gap="small")
    with b:
        # the files are made when clicked (callables), not on every rerun
        st.download_button("labels.csv", lambda: csv_bytes(labels), file_name="labels.csv",
                           mime="text/csv", icon=":material/download:", type="primary", key="download_labels",
                           on_click="ignore")
        st.download_button("flagged-test.csv", lambda: csv_bytes(test), file_name="labels.flagged-test.csv",
                           mime="text/csv", icon=":material/download:", key="download_test", on_click="ignore")
        st.download_button("decision log.csv", lambda: csv_bytes(DecisionStore(run.dir).log()),
                           file_name="decisions.csv", mime="text/csv", icon=":material/download:",
                           key="download_log", on_click="ignore")
        st.button(f"Write to {EXPORT_DIR}/ in the run", key="write_export", icon=":material/save:",
                  on_click=write_export, args=(str(run.dir), apply, drop))


def main() -> None:
    run = ui.current_run()
    st.header("Decisions", anchor=False)
    flash = st.session_state.pop("decisions_flash", None)
    if flash:
        kind, text = flash if isinstance(flash, tuple) else ("success", flash)
        if kind == "error":
            st.error(text, icon=":material/block:")
        else:
            st.success(text, icon=":material/check_circle:")
    table = decisions_table(run)
    summary_ui(run, table)
    ui.stale_notice(run)
    if len(table):
        show = table.drop(columns=["seq"])
        event = st.dataframe(show, hide_index=True, width="stretch", key="decisions_table", on_select="rerun",
                             selection_mode="multi-row", height=min(38 + 35 * len(show), 420),
                             column_config={"issue_score": st.column_config.NumberColumn(format="%.3f"),
                                            "decided_at": st.column_config.TextColumn("decided at (UTC)")})
        picked = list(event.selection.rows) if event is not None else []
        picks = [(str(table.at[i, "example_id"]), int(table.at[i, "seq"])) for i in picked]
        bar = st.container(horizontal=True, gap="small", vertical_alignment="center")
        bar.button(f"Undo {len(picks)} selected" if picks else "Undo selected", key="undo_selected",
                  icon=":material/undo:", disabled=not picks, on_click=undo_selected,
                  args=(str(run.dir), picks, ui.reviewer()),
                  help="appends an undo row per example; the example returns to the review queue")
        if len(picks) == 1:
            bar.page_link("views/review.py", label=f"Open {ui.md(picks[0][0])} in the review queue",
                          icon=":material/open_in_new:", query_params={"example": picks[0][0]})
    else:
        none = "No decisions in effect" if len(data.stale_decisions(run.dir)) else "No decisions yet"
        st.info(f"{none}. Open the Review queue and press K, A, X or a class key.", icon=":material/info:")
    stale_ui(run)
    with st.expander("Full decision log (append-only)"):
        st.dataframe(DecisionStore(run.dir).log().sort_values("seq", ascending=False), hide_index=True,
                     width="stretch")
    export_ui(run)


if __name__ == "__main__":
    main()
