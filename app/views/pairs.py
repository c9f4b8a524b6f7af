"""Pairs (the paper's Figure 4): each misclassified test image beside the training images that most
influenced the mistake: usually one atypical or mislabelled training image that looks just like it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import data, ui

PER_PAGE = 6
REASONS = {"robust_error": "robust model's errors", "natural_error": "natural model's errors"}
REASON_HELP = {
    "robust_error": "Test images the robust model gets wrong while the natural one gets right, beside the training "
                    "images that most helped the natural model (TracIn proponents, strongest first): usually one "
                    "atypical or mislabelled image that looks just like it, which the natural model memorized and the "
                    "robust model refused to fit — the paper's Figure 4.",
    "natural_error": "Test images the natural model gets wrong, beside the training images that pushed it hardest "
                     "towards the mistake (TracIn opponents, most negative influence first): often mislabelled "
                     "look-alikes.",
}


def pair_table(run: ui.Run, reason: str, flagged_only: bool) -> tuple[pd.DataFrame, np.ndarray]:
    """Pairs of one ``reason`` (rank order) and the test ids in display order: test images whose
    top-ranked training partner is flagged first, then by how strongly that partner pushed."""
    p = data.pairs(run.dir)
    p = p[p["reason"] == reason] if "reason" in p.columns else p
    df, rows = data.examples(run.dir), data.row_of(run.dir)
    flag = df["is_label_issue"].to_numpy(bool)
    p = p.assign(train_flagged=flag[rows.get_indexer(p["train_id"])] if len(p) else [])
    if flagged_only:
        p = p[p.groupby("test_id")["train_flagged"].transform("any")]
    top = p.sort_values(["test_id", "rank"]).groupby("test_id").first()
    order = top.assign(k=-top["train_flagged"].astype(int), inf=-top["influence"].abs()).sort_values(["k", "inf"]).index
    return p, np.asarray(order)


def pair_row_ui(run: ui.Run, df: pd.DataFrame, rows: pd.Index, test_id: str, partners: pd.DataFrame) -> None:
    t = df.loc[rows.get_loc(test_id)]
    with st.container(border=True, key=f"pair_{test_id}"):
        cols = st.columns([1.3] + [1] * len(partners), gap="small")
        with cols[0]:
            st.image(data.thumbnail(run.dir, test_id, 120), width="content")
            preds = " · ".join(f"{ui.MODEL_NAME.get(m, m)} → **{run.name(t[f'pred_{m}'])}**"
                               for m in run.models if f"pred_{m}" in t.index)
            st.markdown(f"test, labelled **{run.name(t['given_label'])}**  \n{preds}")
            st.caption(f"`{test_id}`")
        for c, pr in zip(cols[1:], partners.itertuples(index=False)):
            tr = df.loc[rows.get_loc(pr.train_id)]
            with c:
                st.image(data.thumbnail(run.dir, pr.train_id, 96), width="content")
                badge = ""
                if tr["is_label_issue"]:
                    cat = str(tr.get("category", "flagged"))
                    badge = f" :{ui.CATEGORY_COLOR.get(cat, 'red')}-badge[{cat}]"
                moved = tr["is_label_issue"] and tr["suggested_label"] != tr["given_label"]
                st.markdown(f"#{pr.rank} labelled **{run.name(tr['given_label'])}**"
                            + (f" → {run.name(tr['suggested_label'])}" if moved else "") + badge)
                st.caption(f"influence {pr.influence:+.3g} · sim {pr.similarity:.2f}")
                st.page_link("views/review.py", label="Review", icon=":material/open_in_new:",
                             query_params={"example": str(pr.train_id)})


def main() -> None:
    run = ui.current_run()
    st.header("Pairs", anchor=False)
    p_all = data.pairs(run.dir)
    if not len(p_all):
        st.info("This run has no pairs (no misclassified test images, or no pairs.parquet).")
        return
    reasons = [r for r in REASONS if r in set(p_all["reason"])] if "reason" in p_all.columns else ["all"]
    c1, c2 = st.columns([3, 2], vertical_alignment="bottom")
    reason = c1.segmented_control("Test errors of", reasons, default=reasons[0], required=True, key="pairs_reason",
                                  format_func=lambda r: REASONS.get(r, r), persist_state="session")
    flagged_only = c2.toggle("Only where a partner is flagged", value=False, key="pairs_flagged",
                             persist_state="session")
    st.caption(REASON_HELP.get(reason, ""))
    p, order = pair_table(run, reason, flagged_only)
    n_pages = max(1, -(-len(order) // PER_PAGE))
    st.caption(f"{len(order)} test images with pairs · {PER_PAGE} per page")
    page = st.pagination(n_pages, key="pairs_page", max_visible_pages=7) if n_pages > 1 else 1
    page = min(int(page), n_pages)
    df, rows = data.examples(run.dir), data.row_of(run.dir)
    by_test = {k: g.sort_values("rank") for k, g in p[p["test_id"].isin(order[(page - 1) * PER_PAGE:page * PER_PAGE])]
               .groupby("test_id")}
    for test_id in order[(page - 1) * PER_PAGE:page * PER_PAGE]:
        pair_row_ui(run, df, rows, str(test_id), by_test[test_id])


if __name__ == "__main__":
    main()
