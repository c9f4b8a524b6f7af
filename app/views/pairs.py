"""Pairs (the paper's Figure 4): each misclassified test image beside the training images that most
influenced the mistake: usually one atypical or mislabelled training image that looks just like it.

Where a partner is flagged, "Fix both" records a decision on the test label and one on that training
label in one action (the export lists test-label fixes in their own file)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import data, ui
from audit.decisions import DecisionStore

PER_PAGE = 6
REMOVE = -1  # the joint fix's "remove the training example" choice
REASONS = {"robust_error": "robust model's errors", "natural_error": "natural model's errors",
           "given_error": "your model's errors"}
REASON_HELP = {
    "robust_error": "Test images the robust model gets wrong while the natural one gets right, beside the training "
                    "images that most helped the natural model (TracIn proponents, strongest first): usually one "
                    "atypical or mislabelled image that looks just like it, which the natural model memorized and the "
                    "robust model refused to fit — the paper's Figure 4.",
    "natural_error": "Test images the natural model gets wrong, beside the training images that pushed it hardest "
                     "towards the mistake (TracIn opponents, most negative influence first): often mislabelled "
                     "look-alikes.",
    "given_error": "Test images your model gets wrong (its probabilities, --pred-probs), beside their nearest "
                   "training images in your --features, most similar first: often a mislabelled look-alike. "
                   "No models trained (--models none), so there is no influence to rank them by.",
}


def pair_table(run: ui.Run, reason: str, flagged_only: bool) -> tuple[pd.DataFrame, np.ndarray]:
    """Pairs of one ``reason`` (rank order) and the test ids in display order: test images whose
    top-ranked training partner is flagged first, then by how strongly that partner pushed."""
    p = data.pairs(run.dir)
    p = p[p["reason"] == reason] if "reason" in p.columns and reason in REASONS else p
    df, rows = data.examples(run.dir), data.row_of(run.dir)
    flag = df["is_label_issue"].to_numpy(bool)
    pos = rows.get_indexer(p["train_id"]) if len(p) else np.array([], dtype=int)
    # joined by id: a pair naming an example the run lacks (data.pairs leaves those out) is never flagged
    # by another row's flag (get_indexer's -1 would pick the last row)
    p = p.assign(train_flagged=np.where(pos >= 0, flag[np.clip(pos, 0, None)], False) if len(p) else [])
    if flagged_only:
        p = p[p.groupby("test_id")["train_flagged"].transform("any")]
    top = p.sort_values(["test_id", "rank"]).groupby("test_id").first()
    # influence NaN (no model trained, --models none): by the partner's similarity instead
    order = top.assign(k=-top["train_flagged"].astype(int), inf=-top["influence"].abs(),
                       sim=-top["similarity"]).sort_values(["k", "inf", "sim"], kind="stable").index
    return p, np.asarray(order)


def decision_caption(run: ui.Run, latest_by_id: dict, example_id: str, given) -> None:
    """The example's decision in effect, if any, as a caption."""
    d = latest_by_id.get(example_id)
    if d is not None:
        what = ui.decision_text(run, d[0], d[1], given)
        st.caption(f"{ui.DECISION_ICON[d[0]]} {ui.md(what)} by {ui.md(d[2])}")


def _decision_of(choice: int, given: int) -> tuple[str, int | None]:
    if choice == REMOVE:
        return "remove", None
    return ("keep", None) if choice == given else ("relabel", choice)


def joint_fix(run_dir: str, test: tuple, train: tuple, reviewer: str) -> None:
    """Record both decisions of a pair (callback of "Record both"). ``test`` and ``train``: (example id,
    given label, the key of the selectbox holding the chosen label or :data:`REMOVE`, the ``seq`` the
    page was based on). The choices are read at the click, not when the button was drawn."""
    store = DecisionStore(run_dir)
    done = []
    for ex, given, choice_key, based_on in (test, train):
        decision, new_label = _decision_of(int(st.session_state[choice_key]), int(given))
        done.append(store.record(ex, decision, reviewer=reviewer, new_label=new_label, based_on=based_on))
    st.session_state["pairs_flash"] = done


def joint_fix_ui(run: ui.Run, t: pd.Series, tr: pd.Series, rank: int) -> None:
    """One action for a misclassified test image and its flagged training partner: the test label
    (default: its suggestion if flagged, else the given label) and the training label (default: its
    suggestion), recorded together in the decision log."""
    test_id, train_id = str(t["example_id"]), str(tr["example_id"])
    k = ui.key(test_id)  # widget keys from a hash: ids are data
    classes = list(range(len(run.class_names)))
    test_default = int(t["suggested_label"] if t["is_label_issue"] else t["given_label"])
    train_default = int(tr["suggested_label"])
    store = DecisionStore(run.dir)
    with st.popover("Fix both", icon=":material/build:", width="stretch"):
        st.caption(f"Decide the test label and the label of training partner #{int(rank)} together.")
        st.selectbox("Test label", classes, index=test_default if test_default in classes else 0,
                          format_func=run.name, key=f"joint_test_{k}")
        options = [*classes, REMOVE]
        st.selectbox(f"Training label of #{int(rank)}", options,
                          index=options.index(train_default) if train_default in options else 0,
                          format_func=lambda c: "remove it from training" if c == REMOVE else run.name(c),
                          key=f"joint_train_{k}")
        st.button("Record both", key=f"joint_fix_{k}", type="primary", icon=":material/done_all:",
                  on_click=joint_fix, args=(str(run.dir),
                                            (test_id, int(t["given_label"]), f"joint_test_{k}", store.last_seq(test_id)),
                                            (train_id, int(tr["given_label"]), f"joint_train_{k}",
                                             store.last_seq(train_id)),
                                            ui.reviewer()))


def test_cell_ui(run: ui.Run, t: pd.Series, latest_by_id: dict) -> None:
    test_id = str(t["example_id"])
    st.image(data.thumbnail(run.dir, test_id, 120), width="content")
    preds = " · ".join(f"{ui.md(ui.MODEL_NAME.get(m, m))} → **{run.md_name(t[f'pred_{m}'])}**"
                       for m in run.models if f"pred_{m}" in t.index)
    if not run.trained:  # a test row's suggestion is the top class of the user's probabilities
        preds = f"your model → **{run.md_name(t['suggested_label'])}**"
    st.markdown(f"test, labelled **{run.md_name(t['given_label'])}**  \n{preds}")
    st.caption(ui.md(test_id))
    decision_caption(run, latest_by_id, test_id, t["given_label"])


def partner_cell_ui(run: ui.Run, tr: pd.Series, pr, latest_by_id: dict) -> None:
    st.image(data.thumbnail(run.dir, pr.train_id, 96), width="content")
    badge = ""
    if tr["is_label_issue"]:
        cat = str(tr.get("category", "flagged"))
        badge = f" :{ui.CATEGORY_COLOR.get(cat, 'red')}-badge[{ui.md(cat)}]"
    moved = tr["is_label_issue"] and tr["suggested_label"] != tr["given_label"]
    st.markdown(f"#{int(pr.rank)} labelled **{run.md_name(tr['given_label'])}**"
                + (f" → {run.md_name(tr['suggested_label'])}" if moved else "") + badge)
    if np.isfinite(_number(pr.influence)):
        st.caption(f"influence {ui.md(ui.signed(pr.influence))} · similarity {ui.md(ui.sig(pr.similarity, 2))}")
    else:  # no influence recorded: none to show (a run that trained no model has none)
        st.caption(f"similarity {ui.md(ui.sig(pr.similarity, 2))} · "
                   + ("no influence (no model trained)" if not run.trained else "influence –"))
    decision_caption(run, latest_by_id, str(pr.train_id), tr["given_label"])
    st.page_link("views/review.py", label="Review", icon=":material/open_in_new:",
                 query_params={"example": str(pr.train_id)})


def _number(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def pair_row_ui(run: ui.Run, df: pd.DataFrame, rows: pd.Index, test_id: str, partners: pd.DataFrame,
                latest_by_id: dict) -> None:
    t = df.loc[rows.get_loc(test_id)]
    trains = [df.loc[rows.get_loc(pr.train_id)] for pr in partners.itertuples(index=False)]
    with st.container(border=True, key=f"pair_{ui.key(test_id)}"):
        cols = st.columns([1.3] + [1] * len(partners), gap="small")
        with cols[0]:
            test_cell_ui(run, t, latest_by_id)
            flagged = [(tr, pr.rank) for tr, pr in zip(trains, partners.itertuples(index=False)) if tr["is_label_issue"]]
            if flagged:  # the most influential flagged partner
                joint_fix_ui(run, t, *flagged[0])
        for c, tr, pr in zip(cols[1:], trains, partners.itertuples(index=False)):
            with c:
                partner_cell_ui(run, tr, pr, latest_by_id)


def flash_ui(run: ui.Run) -> None:
    """What the last "Record both" wrote, and any conflict with another reviewer."""
    done = st.session_state.pop("pairs_flash", None)
    if not done:
        return
    parts = [f"{ui.DECISION_ICON[d['decision']]} {ui.md(d['example_id'])}: "
             f"{ui.md(ui.decision_text(run, d['decision'], d['new_label']))}" for d in done]
    st.success("Recorded both: " + " · ".join(parts), icon=":material/done_all:")
    for d in done:
        if d["conflict"] and not d["conflict"]["agrees"]:
            st.warning(f"{ui.md(d['conflict']['reviewer'])} had also decided {ui.md(d['example_id'])} "
                       f"({ui.md(d['conflict']['decision'])}); yours is now the effective one.",
                       icon=":material/warning:")


def main() -> None:
    run = ui.current_run()
    st.header("Pairs", anchor=False)
    flash_ui(run)
    checked = data.pairs_checked(run.dir)
    for problem in checked.problems:
        st.warning(ui.md(problem), icon=":material/warning:")
    p_all = checked.table
    if not len(p_all):
        if not run.trained and not run.given_input("features") and not checked.problems:
            ui.no_models_note("no pairs (each test image your model gets wrong beside its nearest training "
                              "images: without a model, that needs your embeddings; rerun with `--features FILE`).")
        else:
            st.info("This run has no pairs to show (no misclassified test images, or no usable pairs.parquet).")
        return
    reasons = [r for r in REASONS if r in set(p_all["reason"])] if "reason" in p_all.columns else []
    reasons = reasons or ["all"]  # an older run's pairs carry no reason: one list of them all
    c1, c2 = st.columns([3, 2], vertical_alignment="bottom")
    reason = c1.segmented_control("Test errors of", reasons, default=reasons[0], required=True, key="pairs_reason",
                                  format_func=lambda r: REASONS.get(r, "every test error"), persist_state="session")
    flagged_only = c2.toggle("Only where a partner is flagged", value=False, key="pairs_flagged",
                             persist_state="session")
    st.caption(REASON_HELP.get(reason, ""))
    p, order = pair_table(run, reason, flagged_only)
    n_pages = max(1, -(-len(order) // PER_PAGE))
    st.caption(f"{len(order)} test images with pairs · {PER_PAGE} per page")
    page = st.pagination(n_pages, key="pairs_page", max_visible_pages=7) if n_pages > 1 else 1
    page = min(int(page), n_pages)
    df, rows = data.examples(run.dir), data.row_of(run.dir)
    latest = data.latest_decisions(run.dir)
    latest_by_id = {e: (d, n, r) for e, d, n, r in zip(latest["example_id"], latest["decision"], latest["new_label"],
                                                        latest["reviewer"])}
    by_test = {k: g.sort_values("rank") for k, g in p[p["test_id"].isin(order[(page - 1) * PER_PAGE:page * PER_PAGE])]
               .groupby("test_id")}
    for test_id in order[(page - 1) * PER_PAGE:page * PER_PAGE]:
        pair_row_ui(run, df, rows, str(test_id), by_test[test_id], latest_by_id)


if __name__ == "__main__":
    main()
