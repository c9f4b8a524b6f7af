"""Other issues: what the issue types beyond label errors found (:mod:`audit.issues`): near duplicates side
by side, test images leaked from training beside their training copy, and the outliers and image-quality
problems in a grid, worst first. Each image opens in the review queue, where the same keys keep, relabel or
remove it.

Counts are the examples table's own; descriptions are the issue types' own (:data:`audit.issues.ISSUE_TYPES`);
thresholds come from the manifest. A run made before the issue types existed says so and shows nothing else.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import data, issue_types, ui

PER_PAGE = 12  # groups, pairs or grid cells per page
MEMBERS = 12  # members of one near-duplicate group shown (a group of hundreds of blank images says how many)
THUMB = 96
OLDER_RUN = ("This run has no issue types beyond label errors: it was made by an older benign-audit. Rerun "
             "`audit run` to look for near duplicates, train/test leaks, outliers and image-quality problems.")


def _latest_by_id(run: ui.Run) -> dict:
    latest = data.latest_decisions(run.dir)
    return {e: (d, n, r) for e, d, n, r in zip(latest["example_id"], latest["decision"], latest["new_label"],
                                                latest["reviewer"])}


def decision_caption(run: ui.Run, latest_by_id: dict, example_id: str, given) -> None:
    d = latest_by_id.get(example_id)
    if d is not None:
        st.caption(f"{ui.DECISION_ICON[d[0]]} {ui.md(ui.decision_text(run, d[0], d[1], given))} by {ui.md(d[2])}")


def review_link(example_id: str, kind: str) -> None:
    st.page_link("views/review.py", label="Review", icon=":material/open_in_new:",
                 query_params={"example": example_id, "f_issue_type": kind})


def cell_ui(run: ui.Run, df: pd.DataFrame, i: int, kind: str, latest_by_id: dict, *, reason: bool = True,
            score: bool = False) -> None:
    """One image: thumbnail, example id, split, given label, the type's reason, its decision, a link to review it."""
    ex = str(df.at[i, "example_id"])
    st.image(data.thumbnail(run.dir, ex, THUMB), width="content")
    st.html(f"<span class='audit-id'>{ui.esc(ex)}</span>")
    line = f"{ui.md(df.at[i, 'split'])}, labelled **{run.md_name(df.at[i, 'given_label'])}**"
    if score:
        line += f" · score {ui.md(ui.sig(issue_types.scores(df.iloc[[i]], kind)[0]))}"
    st.markdown(line)
    text = issue_types.reasons(df.iloc[[i]], kind)[0]
    if reason and text:
        st.caption(ui.md(text))
    decision_caption(run, latest_by_id, ex, df.at[i, "given_label"])
    review_link(ex, kind)


def _page(n_items: int, key: str) -> tuple[int, int]:
    """(first, end) of the page shown, with a pagination control when there is more than one page."""
    n_pages = max(1, -(-n_items // PER_PAGE))
    page = st.pagination(n_pages, key=key, max_visible_pages=7) if n_pages > 1 else 1
    page = min(max(int(page), 1), n_pages)
    return (page - 1) * PER_PAGE, min(page * PER_PAGE, n_items)


def groups_ui(run: ui.Run, df: pd.DataFrame, latest_by_id: dict) -> None:
    """Each near-duplicate group side by side, groups whose labels disagree first."""
    groups = issue_types.duplicate_groups(df)
    conflicting = sum(g.conflicting for g in groups)
    st.caption(f"{len(groups):,} groups, {conflicting:,} with labels that disagree (shown first) · "
               f"{PER_PAGE} groups per page. Keep one image of a group and remove the others; where the labels "
               "disagree, relabel them alike.")
    first, end = _page(len(groups), "issues_page_near_duplicate")
    for g in groups[first:end]:
        with st.container(border=True, key=f"group_{ui.key(g.group)}_{ui.key(df.at[g.rows[0], 'example_id'])}"):
            head = f"**Group {g.group}**" if g.group >= 0 else "**No group recorded**"
            head += f" · {len(g.rows):,} images"
            if g.conflicting:
                head += " · :red-badge[labels disagree]"
            st.markdown(head)
            shown = g.rows[:MEMBERS]
            cols = st.columns(max(len(shown), 2), gap="small")
            for c, i in zip(cols, shown):
                with c:
                    cell_ui(run, df, int(i), issue_types.DUPLICATE, latest_by_id)
            if len(g.rows) > len(shown):
                st.caption(f"… and {len(g.rows) - len(shown):,} more in this group (the review queue lists them "
                           "all).")


def leaks_ui(run: ui.Run, df: pd.DataFrame, latest_by_id: dict) -> None:
    """Each leaked test image beside its copy in training."""
    pairs = issue_types.leak_pairs(df)
    st.caption(f"{len(pairs):,} test images with a copy in training, closest first · {PER_PAGE} per page. A "
               "test image is never removed: remove (or keep) its training copy, so the test split measures "
               "images the model has not seen.")
    first, end = _page(len(pairs), "issues_page_leak")
    for test_row, train_row, partner in pairs[first:end]:
        with st.container(border=True, key=f"leak_{ui.key(df.at[test_row, 'example_id'])}"):
            c1, mid, c2 = st.columns([4, 1, 4], gap="small", vertical_alignment="center")
            with c1:
                st.caption("test")
                cell_ui(run, df, test_row, issue_types.LEAK, latest_by_id)
            mid.markdown("### ↔")
            with c2:
                st.caption("train")
                if train_row >= 0:
                    cell_ui(run, df, train_row, issue_types.LEAK, latest_by_id, reason=False)
                else:
                    st.image(data.thumbnail(run.dir, "", THUMB), width="content")
                    st.caption(f"{ui.md(partner) if partner else 'no partner recorded'}: not a training image of "
                               "this run")


def grid_ui(run: ui.Run, df: pd.DataFrame, kind: str, latest_by_id: dict) -> None:
    """The flagged images of ``kind``, worst first, with their reasons."""
    rows = issue_types.ordered_rows(df, kind)
    st.caption(f"{len(rows):,} images, highest score first · {PER_PAGE} per page.")
    first, end = _page(len(rows), f"issues_page_{kind}")
    grid = st.grid(4, min_column_width=150, gap="small")
    for i in rows[first:end]:
        with grid, st.container(border=True, key=f"cell_{ui.key(df.at[i, 'example_id'])}"):
            cell_ui(run, df, int(i), kind, latest_by_id, score=True)


def classes_ui(run: ui.Run, df: pd.DataFrame) -> None:
    """The class balance: the table and its sentences."""
    for line in issue_types.class_lines(df, run.manifest, run.class_names):
        st.markdown(ui.md(line))
    class_table_ui(run, df, key="issues_class_table")


def class_table_ui(run: ui.Run, df: pd.DataFrame, key: str) -> None:
    t = issue_types.class_summary(df, run.manifest, run.class_names)
    cfg = {"class": st.column_config.TextColumn(width=140, pinned=True),
           "train": st.column_config.NumberColumn(width=80, help="training images of the class"),
           "ratio to median": st.column_config.NumberColumn(format="%.2f", width=110,
                                                           help="its training count over the median class's"),
           "test accuracy": st.column_config.NumberColumn(format="percent", width=110,
                                                         help=f"{issue_types.accuracy_owner(run.manifest)} accuracy on its test images"),
           "flags": st.column_config.TextColumn(width=170, help="rare: far fewer training images than the median "
                                                "class; under-performing: test accuracy well below the overall")}
    st.dataframe(t, hide_index=True, width="stretch", key=key, column_config=cfg,
                 height=min(38 + 35 * len(t), 420))


def counts_ui(run: ui.Run, df: pd.DataFrame) -> None:
    t = issue_types.type_table(df, run.manifest)
    cfg = {"issue type": st.column_config.TextColumn(width=130, pinned=True),
           "flagged": st.column_config.NumberColumn(width=75),
           "judges": st.column_config.TextColumn(width=150),
           "threshold": st.column_config.NumberColumn(format="%.3g", width=85,
                                                      help="flagged at or past this score (outlier: the distance "
                                                           "fence)"),
           "description": st.column_config.TextColumn(width="large")}
    st.dataframe(t, hide_index=True, width="stretch", key="issue_types_table", column_config=cfg,
                 height=38 + 35 * len(t))


def _adopt_link(types: list[str]) -> None:
    """``?issue_type=NAME`` (the Overview's links, a reload, a shared link) selects that type once."""
    qp = st.query_params.get("issue_type")
    if qp and qp != st.session_state.get("_qp_issue_type"):
        st.session_state["_qp_issue_type"] = qp
        if qp in types:
            st.session_state["issue_type"] = qp


def _type_changed() -> None:
    """The URL names the type shown, so a reload or a shared link shows it again."""
    kind = st.session_state.get("issue_type")
    if kind:
        st.query_params["issue_type"] = kind
        st.session_state["_qp_issue_type"] = kind


def main() -> None:
    run = ui.current_run()
    df = data.examples(run.dir)
    st.header("Other issues", anchor=False)
    types = issue_types.types_in(df)
    if not types:
        st.info(OLDER_RUN, icon=":material/info:")
        return
    imgs = data.images(run.dir)
    if imgs.error:
        st.warning(f"Pictures unavailable: {ui.md(imgs.error)}.", icon=":material/image_not_supported:")
    counts = issue_types.counts(df)
    counts_ui(run, df)
    found = [t for t in types if counts[t]]
    default = found[0] if found else types[0]
    _adopt_link(types)
    kind = st.selectbox("Issue type", types, index=types.index(default), key="issue_type", on_change=_type_changed,
                        format_func=lambda t: f"{t} ({counts[t]:,} flagged)")
    kind = kind if kind in types else default
    st.caption(ui.md(f"{kind}: {issue_types.description(kind)}"))
    rule = issue_types.threshold_rule(run.manifest, kind)
    if rule:
        st.caption(ui.md(f"Threshold: {rule}."))
    latest_by_id = _latest_by_id(run)
    if kind == issue_types.IMBALANCE:
        classes_ui(run, df)
    if not counts[kind]:
        st.success(f"Nothing flagged as {kind} in this run.", icon=":material/task_alt:")
        return
    st.page_link("views/review.py", label=f"Review the {counts[kind]:,} flagged images in the queue",
                 icon=":material/arrow_forward:", query_params={"f_issue_type": kind})
    if kind == issue_types.DUPLICATE:
        groups_ui(run, df, latest_by_id)
    elif kind == issue_types.LEAK:
        leaks_ui(run, df, latest_by_id)
    else:
        grid_ui(run, df, kind, latest_by_id)


if __name__ == "__main__":
    main()
