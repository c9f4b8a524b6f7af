"""Decisions: what reviewers decided (newest per example), undo, the full log, and the export."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app import data, ui
from audit.decisions import DecisionStore
from audit.export import cleaned_labels, csv_bytes, flagged_test_labels

EXPORT_DIR = "exports"


def decisions_table(run: ui.Run) -> pd.DataFrame:
    """Effective decisions joined with what the audit said about each example, newest first."""
    latest = data.latest_decisions(run.dir)
    df, rows = data.examples(run.dir), data.row_of(run.dir)
    if not len(latest):
        return pd.DataFrame(columns=["example_id", "split", "decision", "given", "final", "suggested", "category",
                                     "issue_score", "reviewer", "decided_at", "seq"])
    ex = df.iloc[rows.get_indexer(latest["example_id"])].reset_index(drop=True)
    final = [run.name(n) if d == "relabel" else (run.name(g) if d == "keep" else "–")
             for d, n, g in zip(latest["decision"], latest["new_label"], ex["given_label"])]
    out = pd.DataFrame({
        "example_id": latest["example_id"].to_numpy(), "split": ex["split"].to_numpy(),
        "decision": latest["decision"].to_numpy(), "given": [run.name(g) for g in ex["given_label"]],
        "final": final, "suggested": [run.name(s) for s in ex["suggested_label"]],
        "category": ex.get("category", pd.Series([""] * len(ex))).to_numpy(),
        "issue_score": ex["issue_score"].to_numpy(), "reviewer": latest["reviewer"].to_numpy(),
        "decided_at": [str(t)[:19].replace("T", " ") for t in latest["decided_at"]], "seq": latest["seq"].to_numpy(),
    })
    return out.sort_values("seq", ascending=False).reset_index(drop=True)


@st.cache_data(show_spinner=False, max_entries=8)
def _exports(run_dir: str, version: int, apply: str, drop_flagged: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cleaned labels and flagged test labels, recomputed only when a decision is written."""
    df = data.examples(Path(run_dir))
    return (cleaned_labels(run_dir, apply=apply, drop_flagged=drop_flagged, examples=df),
            flagged_test_labels(run_dir, apply=apply, examples=df))


def undo_selected(run_dir: str, picks: list[tuple[str, int]], reviewer: str) -> None:
    store = DecisionStore(run_dir)
    done = [store.record(ex, "undo", reviewer=reviewer, based_on=seq) for ex, seq in picks]
    st.session_state["decisions_flash"] = (f"Undid {len(done)} decision{'s' if len(done) != 1 else ''}; the log keeps "
                                           "them, marked undone.")
    st.session_state.pop("decisions_table", None)


def write_export(run_dir: str, apply: str, drop_flagged: bool) -> None:
    """Write the reviewed labels into ``RUN/exports/`` (inside the run directory only)."""
    from audit.export import export_labels

    out = Path(run_dir) / EXPORT_DIR / "labels.reviewed.csv"
    df = export_labels(run_dir, out, apply=apply, drop_flagged=drop_flagged)
    st.session_state["decisions_flash"] = (f"Wrote {ui.md(out)} ({len(df):,} training rows) and its flagged-test "
                                           "list.")


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
        st.success(flash, icon=":material/check_circle:")
    table = decisions_table(run)
    summary_ui(run, table)
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
        st.info("No decisions yet. Open the Review queue and press K, A, X or a class key.", icon=":material/info:")
    with st.expander("Full decision log (append-only)"):
        st.dataframe(DecisionStore(run.dir).log().sort_values("seq", ascending=False), hide_index=True,
                     width="stretch")
    export_ui(run)


if __name__ == "__main__":
    main()
