"""Review queue: flagged examples most suspicious first, one page of thumbnails, the open example
zoomed with its evidence, and one-click / one-key decisions that are written to the run's decision
log inside the click's callback (nothing lives only in the browser).

Keys: K keep · A accept the suggested label · 0–9 relabel to the class of that index (its name is on
the button beside the key, whatever the class names say) · X remove (training examples only) · S skip ·
U undo · ←/→ previous/next without deciding.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import data, issue_types, ui
from app.queue import (
    CATEGORIES,
    SAMPLES,
    SORTS,
    STATUSES,
    Filters,
    next_after,
    nothing_flagged,
    page_of,
    previous_before,
    review_queue,
    sample_rows,
    signal_names,
)
from audit.decisions import DecisionStore

PAGE_SIZES = (12, 24, 48)
NEIGHBOURS = 10
TEST_ROW_NOTE = ("A test example is never removed (the test split stays whole, so accuracies stay comparable "
                 "between runs): keep its label or relabel it. The export lists it in the flagged-test file "
                 "with your decision.")


# -- state -----------------------------------------------------------------------------------------
def _set_current(example_id: str | None) -> None:
    st.session_state["current"] = example_id
    st.session_state["_qp_example"] = example_id
    if example_id is None:
        st.query_params.pop("example", None)
    else:
        st.query_params["example"] = example_id


def _adopt_deep_link() -> None:
    """``?example=ID`` in the URL (a reload, a shared link, the Pairs page) opens that example."""
    qp = st.query_params.get("example")
    if qp and qp != st.session_state.get("_qp_example"):
        st.session_state["current"] = qp
        st.session_state["_qp_example"] = qp


# -- callbacks: run before the rerun, so the write happens inside the click ------------------------
def decide(run_dir: str, example_id: str, decision: str, new_label, based_on, next_id, reviewer: str) -> None:
    """Write one decision and move on. ``based_on``: the newest decision this session saw for the
    example when it was shown; a different one in the log now means someone else decided meanwhile."""
    res = DecisionStore(run_dir).record(example_id, decision, reviewer=reviewer, new_label=new_label,
                                        based_on=based_on)
    st.session_state["flash"] = res
    st.session_state["conflict"] = res if res["conflict"] else None
    if decision != "skip":
        st.session_state["undo_stack"] = [*st.session_state.get("undo_stack", []), res][-50:]
    _set_current(next_id)


def undo_last(run_dir: str, reviewer: str) -> None:
    """Undo this session's newest decision and reopen its example."""
    stack = list(st.session_state.get("undo_stack", []))
    if not stack:
        st.session_state["flash"] = {"decision": "nothing", "example_id": None}
        return
    last = stack.pop()
    st.session_state["undo_stack"] = stack
    store = DecisionStore(run_dir)
    res = store.record(last["example_id"], "undo", reviewer=reviewer, based_on=last["seq"])
    st.session_state["flash"] = res
    st.session_state["conflict"] = res if res["conflict"] else None
    _set_current(last["example_id"])


def undo_example(run_dir: str, example_id: str, based_on, reviewer: str) -> None:
    res = DecisionStore(run_dir).record(example_id, "undo", reviewer=reviewer, based_on=based_on)
    st.session_state["flash"] = res
    st.session_state["conflict"] = res if res["conflict"] else None


def _filters_changed() -> None:
    """A new queue starts at its most suspicious example."""
    _set_current(None)


def go_page(key: str, queue_ids: np.ndarray, page_size: int) -> None:
    p = int(st.session_state.get(key) or 1) - 1
    if len(queue_ids):
        _set_current(str(queue_ids[min(p * page_size, len(queue_ids) - 1)]))


# -- sidebar filters (outside the fragment: changing one reruns the page) ---------------------------
def sample_text(sample: str, n: int) -> str:
    """What a random sample holds, in words."""
    kind = "flagged" if SAMPLES.get(sample) else "unflagged"
    return f"a fixed random sample of {n:,} {kind} training examples"


def filters_ui(run: ui.Run, df: pd.DataFrame) -> tuple[Filters, int]:
    """The queue's filters; their values live for the whole session (``persist_state``), and a change
    reopens the new queue at its top. What the controls show is what the queue lists: a random sample
    hides the filters it ignores, and a split with nothing flagged shows "Flagged only" off (the queue
    then lists every example of the split, top-ranked first)."""
    keep = dict(on_change=_filters_changed, persist_state="session")
    _adopt_issue_type_link(df)
    with st.sidebar:
        st.subheader("Queue", anchor=False)
        sample = st.selectbox("Review", list(SAMPLES), key="f_sample", **keep,
                              help="random checks: a few random flagged examples keep the estimate of the "
                                   "errors left honest; unflagged sample: estimates how many errors the flags miss")
        sampling = SAMPLES.get(sample) is not None
        if sampling:  # the sample is the sample: split, flags, classes, signals, score and sort do not apply
            st.caption(ui.md(f"Listing {sample_text(sample, len(sample_rows(df, sample)))}, the same for every "
                             "reviewer, in the order drawn: review them in that order. The other filters "
                             "apply to the flagged queue."))
            status = st.segmented_control("Status", list(STATUSES), default="to review", required=True,
                                          key="f_status", **keep)
            page_size = st.selectbox("Per page", PAGE_SIZES, index=1, key="f_page_size", persist_state="session")
            f = Filters(split="train", flagged_only=False, status=status or "to review", sample=sample)
            _keys_caption(run)
            return f, int(page_size)
        kind = issue_type_ui(df)
        if kind != issue_types.LABEL:  # its flagged rows: split, flags, category, signals, score, sort do not apply
            n = int(issue_types.flags(df, kind).sum())
            st.caption(ui.md(f"Listing the {n:,} {issue_types.judged(kind)} flagged as {kind}, "
                             f"{issue_types.order_text(kind)}: {issue_types.description(kind)}."))
            status = st.segmented_control("Status", list(STATUSES), default="to review", required=True,
                                          key="f_status", **keep)
            classes = st.multiselect("Given label", list(range(len(run.class_names))), format_func=run.name,
                                     key="f_classes", placeholder="every class", **keep)
            page_size = st.selectbox("Per page", PAGE_SIZES, index=1, key="f_page_size", persist_state="session")
            _keys_caption(run)
            return Filters(issue_type=kind, flagged_only=True, classes=tuple(classes or ()),
                           status=status or "to review"), int(page_size)
        split = st.segmented_control("Split", ["train", "test"], default="train", required=True, key="f_split",
                                     **keep) or "train"
        none_flagged = nothing_flagged(df, split)
        if none_flagged:  # a stand-in that says what is listed; the toggle keeps its value for other splits
            st.toggle("Flagged only", value=False, disabled=True, key="f_flagged_none",
                      help=f"Nothing is flagged in {split}: every {split} example is listed, top-ranked first")
            flagged_only = False
        else:
            flagged_only = st.toggle("Flagged only", value=True, key="f_flagged", **keep)
        status = st.segmented_control("Status", list(STATUSES), default="to review", required=True,
                                      key="f_status", **keep)
        cats = st.pills("Category", list(CATEGORIES), selection_mode="multi", key="f_categories",
                        help="none selected: every category", **keep)
        classes = st.multiselect("Given label", list(range(len(run.class_names))), format_func=run.name,
                                 key="f_classes", placeholder="every class", **keep)
        signals = st.multiselect("Signal fired", signal_names(df), key="f_signals", placeholder="any signal",
                                 help="examples that at least one of these signals ranks among its top suspects",
                                 **keep)
        lo, hi = float(df["issue_score"].min()), float(df["issue_score"].max())
        if hi <= lo:
            hi = lo + 1e-6
        score = st.slider("issue_score", lo, hi, (lo, hi), key="f_score", **keep)
        c1, c2 = st.columns(2)
        sort = c1.selectbox("Sort by", list(SORTS), key="f_sort", **keep)
        page_size = c2.selectbox("Per page", PAGE_SIZES, index=1, key="f_page_size", persist_state="session")
        _keys_caption(run)
    if none_flagged:
        st.info("Nothing is flagged in this split, so the queue lists all its examples, top-ranked by issue_score "
                "first (the Overview says why so few were flagged).", icon=":material/info:")
    f = Filters(split=split, flagged_only=flagged_only, categories=tuple(cats or ()),
                classes=tuple(classes or ()), signals=tuple(signals or ()), score=tuple(score),
                status=status or "to review", sort=sort, sample=sample or "flagged queue")
    return f, int(page_size)


def _adopt_issue_type_link(df: pd.DataFrame) -> None:
    """``?f_issue_type=NAME`` (a link from the Other issues page) sets the queue to that type's flagged
    images once, before the filters are drawn; without ``?example=`` the new queue opens at its top."""
    qp = st.query_params.get("f_issue_type")
    if not qp or qp == st.session_state.get("_qp_issue_type"):
        return
    st.session_state["_qp_issue_type"] = qp
    if qp == issue_types.LABEL or (qp in issue_types.types_in(df) and issue_types.flags(df, qp).any()):
        st.session_state["f_issue_type"] = qp
        st.session_state["f_sample"] = "flagged queue"
        if not st.query_params.get("example"):
            _set_current(None)


def _issue_type_changed() -> None:
    """A type picked here: the link's ``?f_issue_type=`` no longer says what is shown, so it goes."""
    st.query_params.pop("f_issue_type", None)
    st.session_state["_qp_issue_type"] = None
    _filters_changed()


def issue_type_ui(df: pd.DataFrame) -> str:
    """Which issues the queue lists: label issues (the default), or one issue type with something flagged
    (:mod:`app.issue_types`; the Other issues page links here with ``?f_issue_type=NAME``). A run without
    issue types (an older run) shows no selector."""
    found = {n: c for n, c in issue_types.counts(df).items() if c}
    if not found:
        return issue_types.LABEL
    n_label = int(df["is_label_issue"].to_numpy(bool).sum())

    def name(t: str) -> str:
        return f"label errors ({n_label:,} flagged)" if t == issue_types.LABEL else f"{t} ({found[t]:,} flagged)"

    kind = st.selectbox("Issue type", [issue_types.LABEL, *found], format_func=name, key="f_issue_type",
                        on_change=_issue_type_changed, persist_state="session",
                        help="label errors: the examples whose label looks wrong, ranked by issue_score; another "
                             "type lists the images it flags (the Other issues page shows them side by side), to "
                             "keep, relabel or remove with the same keys")
    return kind if kind in found else issue_types.LABEL


def _keys_caption(run: ui.Run | None = None) -> None:
    relabel = "**0–9** relabel to the class shown beside the key" if run is None or run.has_keys() else \
        "**L** relabel to the class picked"
    st.caption(f"Keys: **K** keep · **A** accept suggestion · {relabel} · **X** remove (training "
               "examples) · **S** skip · **U** undo · **←/→** browse",
               help=ui.md(run.key_map_text()) if run is not None and run.has_keys() else None)


# -- the open example ---------------------------------------------------------------------------------
def notices_ui(run: ui.Run, df: pd.DataFrame, rows: pd.Index) -> None:
    conflict = st.session_state.get("conflict")
    if conflict:
        other = conflict["conflict"]
        ex = conflict["example_id"]
        given = df.at[rows.get_loc(ex), "given_label"] if ex in rows else None
        theirs = ui.decision_text(run, other["decision"], other["new_label"], given)
        mine = ui.decision_text(run, conflict["decision"], conflict["new_label"], given)
        msg = (f"**Conflict on {ui.md(ex)}**: {ui.md(other['reviewer'])} {ui.md(theirs)} "
               f"({ui.ago(other['decided_at'])}) while you were looking. Both decisions are in the log; yours "
               f"({ui.md(mine)}) is now the effective one.")
        if other.get("agrees"):
            st.info(msg.replace("**Conflict", "**Also decided") + " You agree.", icon=":material/group:")
        else:
            st.warning(msg + " Undo yours (U) to restore theirs.", icon=":material/warning:")
    flash = st.session_state.get("flash")
    if flash and flash.get("example_id") and not conflict:
        ex = flash["example_id"]
        given = df.at[rows.get_loc(ex), "given_label"] if ex in rows else None
        if flash["decision"] == "undo":
            text = f"↶ Undid the last decision on {ui.md(ex)}"
        elif flash["decision"] == "skip":
            text = f"↷ Skipped {ui.md(ex)}"
        else:
            what = ui.decision_text(run, flash["decision"], flash["new_label"], given)
            text = f"{ui.DECISION_ICON[flash['decision']]} {ui.md(ex)} {ui.md(what)} — saved. **U** undoes."
        st.caption(text)


def header_ui(run: ui.Run, r: pd.Series, pos: int, n_queue: int, effective: pd.Series | None) -> None:
    where = f"{pos + 1} of {n_queue} in queue" if pos >= 0 else "not in this queue"
    st.html(f"<span class='audit-id'>{ui.esc(r['example_id'])} · {ui.esc(r['split'])} #{ui.esc(r['index'])} · "
            f"{where}</span>")
    if effective is not None:
        what = ui.decision_text(run, effective["decision"], effective["new_label"], r["given_label"])
        st.success(f"{ui.DECISION_ICON[effective['decision']]} {ui.md(what[:1].upper() + what[1:])} by "
                   f"**{ui.md(effective['reviewer'])}**, {ui.ago(effective['decided_at'])}")


def labels_ui(run: ui.Run, r: pd.Series) -> None:
    g, s = int(r["given_label"]), int(r["suggested_label"])
    c1, c2 = st.columns(2)
    with c1:
        st.html(f"<div class='audit-small'>labelled</div><div class='audit-big'>{ui.esc(run.name(g))}</div>")
    color = "#1a7f37" if s != g else "#555"
    with c2:
        st.html(f"<div class='audit-small'>suggested</div><div class='audit-big' style='color:{color}'>"
                f"{ui.esc(run.name(s))}</div>")
    cat = str(r.get("category", "ok"))
    badges = st.container(horizontal=True, gap="small")
    with badges:
        st.badge(ui.md_badge(cat), color=ui.CATEGORY_COLOR.get(cat, "gray"), help=ui.CATEGORY_HELP.get(cat))
        st.badge(f"issue score {float(r['issue_score']):.3f}", color="blue",
                 help="higher = more likely mislabelled (0–1, rank-based)")
        if "evidence_confidence" in r.index and pd.notna(r["evidence_confidence"]):
            st.badge(f"confidence {float(r['evidence_confidence']):.2f}", color="gray",
                     help="how strongly the evidence backs its best class")
    reason = r.get("category_reason")
    if isinstance(reason, str) and reason:
        st.caption(ui.md(reason))


def actions_ui(run: ui.Run, r: pd.Series, based_on, next_id, prev_id, reviewer: str) -> None:
    """The decision buttons; every one carries the decision, the seq it was based on and the next example."""
    ex, g, s = str(r["example_id"]), int(r["given_label"]), int(r["suggested_label"])
    is_test = str(r["split"]) == "test"
    rd = str(run.dir)
    common = dict(on_click=decide)

    def args(decision, new_label=None):
        return (rd, ex, decision, new_label, based_on, next_id, reviewer)

    row = st.container(horizontal=True, gap="small")
    with row:
        st.button(f"Keep {run.md_name(g)}", key="decide_keep", shortcut="K", icon=":material/check:",
                  args=args("keep"), help="the given label is right", **common)
        st.button(f"Relabel → {run.md_name(s)}", key="decide_accept", shortcut="A", type="primary",
                  icon=":material/edit:", disabled=(s == g), args=args("relabel", s),
                  help="accept the suggested label", **common)
        if not is_test:  # a test row is never removed: nothing to offer
            st.button("Remove", key="decide_remove", shortcut="X", icon=":material/delete:", args=args("remove"),
                      help="unusable: not any class, corrupt, duplicate", **common)
        st.button("Skip", key="decide_skip", shortcut="S", icon=":material/redo:", args=args("skip"),
                  help="not sure; it comes back at the end of the queue", **common)
    if is_test:
        st.caption(TEST_ROW_NOTE)
    k = len(run.class_names)
    if run.has_keys():
        # each button: the class name first, Streamlit shows its key beside it; the caption and the tooltip
        # say which key relabels to which class (keys follow the class index, whatever the names say)
        plain = all(n == str(i) for i, n in enumerate(run.class_names))  # digits named by their index
        st.caption("Relabel to (each key is its class)" if plain else
                   ui.md(f"Relabel to (key · class): {', '.join(run.key_label(c) for c in range(k))}"),
                   help=ui.md(run.key_map_text()))
        if run.keys_misleading():
            st.caption(ui.md(run.key_map_text()))
        cls = st.container(horizontal=True, gap="xsmall")
        with cls:
            for c in range(k):
                st.button(run.md_name(c), key=f"relabel_{c}", shortcut=str(c),
                          type="tertiary" if c == g else "secondary", disabled=(c == g),
                          help=ui.md(f"key {run.key_label(c)}: relabel to {run.name(c)}"),
                          args=args("relabel", c), **common)
    else:
        c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
        to = c1.selectbox("Relabel to", list(range(k)), index=s, format_func=run.name, key="relabel_to",
                          help="pick the class, then Relabel (key L); the digit keys do not relabel past ten "
                               "classes")
        c2.button("Relabel", key="decide_relabel", shortcut="L", disabled=(to == g), args=args("relabel", to), **common)
    nav = st.container(horizontal=True, gap="small")
    with nav:
        st.button("Previous", key="nav_prev", shortcut="Left", icon=":material/arrow_back:", type="tertiary",
                  disabled=prev_id is None, on_click=_set_current, args=(prev_id,))
        st.button("Next", key="nav_next", shortcut="Right", icon=":material/arrow_forward:", type="tertiary",
                  disabled=next_id is None, on_click=_set_current, args=(next_id,))
        st.button("Undo", key="decide_undo", shortcut="U", icon=":material/undo:", type="tertiary",
                  disabled=not st.session_state.get("undo_stack"), on_click=undo_last, args=(rd, reviewer),
                  help="undo your last decision in this session")


def signals_caption(r: pd.Series, n: int) -> str:
    """The heading over an example's signal badges: only a flagged example was flagged by them; on any
    other the badges are the signals that rank it among their own top suspects (``is_<name>_issue``),
    which alone do not flag it."""
    flagged = bool(r.get("is_label_issue", False)) and str(r.get("category", "ok")) != "ok"
    if flagged:
        return f"Signals that flagged it ({n})"
    return (f"Not flagged. Strongest signals ({n}): each ranks it among its own top suspects, which alone does "
            "not flag an example")


def signals_ui(r: pd.Series) -> None:
    fired = [s for s in str(r.get("signals_fired") or "").split(",") if s]
    if not fired:
        st.caption("The signals rank training examples only." if str(r.get("split")) == "test"
                   else "No signal ranks this example among its top suspects.")
        return
    st.caption(signals_caption(r, len(fired)))
    box = st.container(horizontal=True, gap="xsmall")
    with box:
        for s in fired:
            st.badge(ui.md_badge(s), color="red" if s.startswith("robust") else "orange",
                     help=ui.md(ui.signal_description(s) or s))


def numbers_ui(run: ui.Run, r: pd.Series) -> None:
    """Per model: prediction, loss, AUM, forgetting; plus memorization, self-influence, label quality,
    each with its percentile among the training examples. (``st.table`` renders its cells as Markdown.)"""
    if not run.trained:
        ui.no_models_note("no per-model predictions, losses or margins; self-influence and memorization "
                          "need trained models.")
    rows = {}
    for m in run.models:
        name = ui.md(ui.MODEL_NAME.get(m, m))
        col = {}
        if f"pred_{m}" in r.index:
            col["predicts"] = run.md_name(r[f"pred_{m}"])
        if f"loss_{m}" in r.index:
            col["loss on given label"] = ui.md(ui.sig(r[f"loss_{m}"]))
        if r["split"] == "test" and f"adv_correct_{m}" in r.index and pd.notna(r[f"adv_correct_{m}"]):
            col["correct under attack"] = "yes" if bool(r[f"adv_correct_{m}"]) else "no"
        if r["split"] == "train":
            if f"aum_{m}" in r.index and pd.notna(r[f"aum_{m}"]):
                col["AUM"] = ui.md(ui.sig(r[f"aum_{m}"]))
            if f"first_learned_{m}" in r.index:
                col["learned for good at"] = ui.md(ui.first_learned_text(r[f"first_learned_{m}"]))
            if f"forgetting_{m}" in r.index and pd.notna(r[f"forgetting_{m}"]):
                col["forgetting events"] = str(int(r[f"forgetting_{m}"]))
        rows[name] = col
    t = pd.DataFrame(rows)
    extra = []
    for c, label in (("memorization", "memorization"), ("self_influence", "self-influence"),
                     ("label_quality", "label quality")):
        if c in r.index and pd.notna(r[c]):
            p = data.train_percentile(run.dir, c, r[c])
            extra.append(f"**{label}** {ui.md(ui.sig(r[c]))}"
                         + (f" ({ui.md(ui.percentile_text(p))} of training examples)" if p is not None else ""))
    if len(t):
        st.table(t)
        if any(f"first_learned_{m}" in r.index for m in run.models) and r["split"] == "train":
            st.caption("Learned for good at: the epoch (as in the training-dynamics chart) from which the model "
                       "gets the given label right until the end; never learned: still wrong at the last epoch.")
    if extra:
        st.markdown(" · ".join(extra))


def history_table(run: ui.Run, log: pd.DataFrame, given_label) -> pd.DataFrame:
    """An example's decision log in three narrow columns (when, who, what), newest first."""
    log = log.sort_values("seq", ascending=False)
    what = [ui.decision_text(run, d, n, given_label) if d in ("keep", "relabel", "remove")
            else {"skip": "skipped", "undo": "undid the previous decision"}.get(d, str(d))
            for d, n in zip(log["decision"], log["new_label"])]
    return pd.DataFrame({"decided at (UTC)": [ui.when(t) for t in log["decided_at"]],
                         "reviewer": log["reviewer"].astype(str).to_numpy(), "decision": what})


def dynamics_ui(run: ui.Run, r: pd.Series) -> None:
    if not run.trained:
        ui.no_models_note("no training dynamics (per-epoch margins come from the models the audit trains).")
        return
    dyn = data.dynamics(run.dir)
    for problem in (dyn.problems if dyn is not None else ()):
        st.warning(ui.md(problem), icon=":material/warning:")
    curves = dyn.curves(str(r["example_id"])) if dyn is not None else pd.DataFrame()
    if not len(curves):
        st.caption("No training dynamics for this example (test examples and canaries have none).")
        return
    import altair as alt

    curves["model"] = curves["model"].map(lambda m: ui.MODEL_NAME.get(m, m))
    base = alt.Chart(curves).mark_line(strokeWidth=2).encode(
        x=alt.X("epoch:Q", title="epoch"),
        y=alt.Y("margin:Q", title=f"margin on label {run.name(r['given_label'])}"),
        color=alt.Color("model:N", legend=alt.Legend(orient="top", title=None)),
        tooltip=["model", "epoch", alt.Tooltip("margin:Q", format=".2f")])
    zero = alt.Chart(pd.DataFrame({"y": [0]})).mark_rule(strokeDash=[4, 3], color="#999").encode(y="y:Q")
    st.altair_chart((zero + base).properties(height=190), width="stretch")
    st.caption("Margin = logit of the given label minus the best other logit, per epoch. Below zero: the model "
               "disagrees with the label. A natural model that climbs late above zero while the robust one stays "
               "below has memorized the label.")


def neighbours_ui(run: ui.Run, r: pd.Series) -> None:
    ids, labels = r.get("neighbor_ids"), r.get("neighbor_labels")
    try:  # a table is input: a neighbour list that is not ids and class indices is said, not shown
        if isinstance(ids, (str, bytes)) or isinstance(labels, (str, bytes)):
            raise TypeError("text, not a list")
        ids = [] if ids is None or (isinstance(ids, float) and np.isnan(ids)) else [str(x) for x in list(ids)]
        labels = [] if labels is None or (isinstance(labels, float) and np.isnan(labels)) else \
            [int(x) for x in list(labels)]
    except (TypeError, ValueError, OverflowError):
        st.caption("examples.parquet: this example's neighbour list is unreadable; not shown.")
        return
    ids, labels = ids[:NEIGHBOURS], labels[:NEIGHBOURS]
    if not ids or len(labels) < len(ids):
        if not run.trained and not run.given_input("features"):
            ui.no_models_note("no neighbours (nearest images need a model's embeddings or `--features FILE`).")
        else:
            st.caption("No neighbours recorded.")
        return
    counts = pd.Series([int(x) for x in labels]).value_counts()
    summary = ", ".join(f"**{run.md_name(k)}** ×{n}" for k, n in counts.items())
    st.caption(f"Nearest training images and their labels: {summary}")
    # one element for the whole strip: fewer elements, a faster page
    with st.container(key="neighbours"):
        st.image([data.thumbnail(run.dir, str(nid), 44) for nid in ids], caption=[run.md_name(int(x)) for x in labels],
                 width="content")


def recent_ui(run: ui.Run, df: pd.DataFrame, rows: pd.Index, latest: pd.DataFrame, n: int = 6) -> None:
    """The newest decisions in the run (anyone's), in the sidebar; a click reopens one."""
    st.subheader("Recent decisions", anchor=False)
    if not len(latest):
        st.caption("None yet.")
        return
    recent = latest.sort_values("seq", ascending=False).head(n)
    for i, d in enumerate(recent.itertuples(index=False)):
        given = df.at[rows.get_loc(d.example_id), "given_label"] if d.example_id in rows else None
        what = ui.decision_text(run, d.decision, d.new_label, given)
        st.button(f"{ui.DECISION_ICON[d.decision]} {ui.md(d.example_id)} · {ui.md(what)} · {ui.md(d.reviewer)}, "
                  f"{ui.ago(d.decided_at)}",
                  key=f"recent_{i}", type="tertiary",
                  on_click=_set_current, args=(str(d.example_id),))


def issue_notes_ui(run: ui.Run, df: pd.DataFrame, rows: pd.Index, i: int, kind: str) -> None:
    """What the other issue types say about the open example (one caption each); with the queue on near
    duplicates or leaks, its copies beside it."""
    for name, reason in issue_types.row_issues(df, i):
        st.caption(f"**{ui.md(name)}**: {ui.md(reason) if reason else 'flagged'}",
                   help=ui.md(issue_types.description(name)))
    if kind not in (issue_types.DUPLICATE, issue_types.LEAK):
        return
    if kind == issue_types.DUPLICATE:
        group = next((g for g in issue_types.duplicate_groups(df) if i in g.rows), None)
        others = [int(j) for j in group.rows if j != i][:NEIGHBOURS] if group is not None else []
        what = "Its copies"
    else:
        pair = next((p for p in issue_types.leak_pairs(df) if p[0] == i), None)
        others = [pair[1]] if pair is not None and pair[1] >= 0 else []
        what = "Its copy in training"
    if not others:
        return
    ids = [str(df.at[j, "example_id"]) for j in others]
    st.caption(f"{what}: " + ", ".join(f"{ui.md(e)} (labelled {run.md_name(df.at[j, 'given_label'])})"
                                       for e, j in zip(ids, others)))
    with st.container(key="copies"):
        st.image([data.thumbnail(run.dir, e, 56) for e in ids],
                 caption=[run.md_name(df.at[j, "given_label"]) for j in others], width="content")


def detail_ui(run: ui.Run, df: pd.DataFrame, rows: pd.Index, current: str, queue_ids: np.ndarray,
              latest: pd.DataFrame, reviewer: str, kind: str = issue_types.LABEL) -> None:
    r = df.loc[rows.get_loc(current)]
    hit = np.flatnonzero(queue_ids == current)
    pos = int(hit[0]) if len(hit) else -1
    eff = latest[latest["example_id"] == current]
    effective = eff.iloc[-1] if len(eff) else None
    store = DecisionStore(run.dir)
    based_on = store.last_seq(current)
    next_id, prev_id = next_after(queue_ids, current), previous_before(queue_ids, current)
    header_ui(run, r, pos, len(queue_ids), effective)
    zc, ic = st.columns([2, 3], gap="medium")
    with zc:
        with st.container(key="zoom"):
            png, src = data.zoom_image(run.dir, r)
            st.image(png, width="content")
            if src:
                st.caption(ui.md(src))
    with ic:
        labels_ui(run, r)
        issue_notes_ui(run, df, rows, int(rows.get_loc(current)), kind)
        if effective is not None:
            st.button("Undo this decision", key="undo_this", icon=":material/undo:", type="tertiary",
                      on_click=undo_example, args=(str(run.dir), current, based_on, reviewer))
    actions_ui(run, r, based_on, next_id, prev_id, reviewer)
    signals_ui(r)
    neighbours_ui(run, r)
    t1, t2, t3 = st.tabs(["Training dynamics", "Numbers", "History"])
    with t1:
        dynamics_ui(run, r)
    with t2:
        numbers_ui(run, r)
    with t3:
        stale = data.stale_decisions(run.dir)
        mine = stale[stale["example_id"] == current] if len(stale) else stale
        for d in mine.itertuples(index=False):
            st.caption(ui.md(f"Not applied: {d.reviewer} {ui.decision_text(run, d.decision, d.new_label)} "
                             f"({ui.when(d.decided_at)} UTC) while the run showed another label or image "
                             f"({d.stale_reason}); decide again."))
        log = store.log(current)
        if len(log):
            st.dataframe(history_table(run, log, r["given_label"]), hide_index=True, width="stretch",
                         key="history_table")
        else:
            st.caption("No decisions yet.")


def grid_ui(run: ui.Run, df: pd.DataFrame, page_rows: np.ndarray, current: str | None,
            latest_by_id: dict) -> None:
    grid = st.grid(6, min_column_width=80, gap="xsmall")
    slot_now = [slot for slot, i in enumerate(page_rows) if str(df.at[i, "example_id"]) == current]
    if slot_now:  # the open example's cell: a coloured frame (its button alone is too quiet)
        st.html(f"<style>.st-key-cell_{slot_now[0]} {{border-color: #ff4b4b !important; "
                f"box-shadow: 0 0 0 2px #ff4b4b inset;}}</style>")
    for slot, i in enumerate(page_rows):
        r = df.loc[i]
        ex = str(r["example_id"])
        with grid, st.container(key=f"cell_{slot}", border=True):
            st.image(data.thumbnail(run.dir, ex, data.THUMB_GRID), width="content")
            g, s = run.name(r["given_label"]), run.name(r["suggested_label"])
            label = ui.md(f"{g} → {s}" if s != g else g)
            dec = latest_by_id.get(ex)
            if dec is not None:
                label = f"{ui.DECISION_ICON[dec[0]]} {label}"
            st.button(label, key=f"open_{slot}", type="tertiary",
                      on_click=_set_current, args=(ex,), width="stretch",
                      help=ui.md(f"{ex} · {r.get('category', '')} · issue score {float(r['issue_score']):.3f}"))


def queue_counts(df: pd.DataFrame, latest: pd.DataFrame, f: Filters) -> dict:
    """What the queue's header and caption say about the rows it draws from, so the counts agree with what
    is listed: the flagged examples of the split, a random sample, or (nothing flagged) the whole split.
    ``done`` of ``total`` reviewed (``total`` 0: no progress bar), a Markdown ``headline``, ``what`` the queue
    draws from and its ``order``, in words."""
    decided = pd.Index(latest["example_id"])
    if SAMPLES.get(f.sample) is not None:
        rows = sample_rows(df, f.sample)
        done = int(df["example_id"].iloc[rows].isin(decided).sum())
        what = sample_text(f.sample, len(rows))
        return {"done": done, "total": len(rows), "headline": f"**{done:,} of {len(rows):,}** in {what} reviewed",
                "what": what[:1].upper() + what[1:], "order": "in the order drawn"}
    if f.issue_type != issue_types.LABEL:
        rows = issue_types.ordered_rows(df, f.issue_type)
        done = int(df["example_id"].iloc[rows].isin(decided).sum())
        return {"done": done, "total": len(rows), "order": issue_types.order_text(f.issue_type),
                "headline": f"**{done:,} of {len(rows):,}** images flagged as {f.issue_type} reviewed",
                "what": f"{len(rows):,} images flagged as {f.issue_type}"}
    split = df[df["split"] == f.split]
    order = f"by {f.sort}"
    if nothing_flagged(df, f.split):
        done = int(split["example_id"].isin(decided).sum())
        return {"done": done, "total": 0, "order": order,
                "headline": f"nothing flagged in {f.split}: every {f.split} example, top-ranked first · "
                            f"**{done:,}** decided",
                "what": f"{len(split):,} {f.split} examples, none flagged"}
    flagged = split[split["is_label_issue"].to_numpy(bool)]
    done = int(flagged["example_id"].isin(decided).sum())
    return {"done": done, "total": len(flagged), "order": order,
            "headline": f"**{done:,} of {len(flagged):,}** flagged {f.split} examples reviewed",
            "what": f"{len(flagged):,} flagged {f.split} examples"}


@st.fragment
def review_fragment(run: ui.Run, f: Filters, page_size: int) -> None:
    """Queue grid and open example; a decision reruns only this (the next example at once)."""
    df = data.examples(run.dir)
    rows = data.row_of(run.dir)
    latest = data.latest_decisions(run.dir)
    reviewer = ui.reviewer()
    q = review_queue(df, latest["example_id"], f)
    queue_ids = df["example_id"].to_numpy()[q].astype(str)
    current = st.session_state.get("current")
    if current is not None and current not in rows:
        st.warning(f"{ui.md(current)} is not an example of this run.")
        current = None
    if current is None and len(queue_ids):
        current = str(queue_ids[0])
    if current != st.session_state.get("current") or st.query_params.get("example") != current:
        _set_current(current)  # the URL names the open example, so a reload or a shared link reopens it

    counts = queue_counts(df, latest, f)
    st.markdown(f"**{len(queue_ids):,}** in this queue · {counts['headline']}")
    if counts["total"]:
        st.progress(counts["done"] / counts["total"])

    left, right = st.columns([5, 7], gap="large")
    with left:
        n_pages = max(1, -(-len(queue_ids) // page_size))
        page = page_of(queue_ids, current, page_size) if current is not None else 0
        page_rows = q[page * page_size:(page + 1) * page_size]
        if len(page_rows):
            grid_ui(run, df, page_rows, current, {k: (d, n) for k, d, n in
                                                  zip(latest["example_id"], latest["decision"], latest["new_label"])})
            st.caption(f"{counts['what']} · {len(queue_ids):,} in this queue, {counts['order']} · "
                       f"page {page + 1} of {n_pages}")
        else:
            st.success("Nothing left in this queue. Change the filters, or export on the Decisions page.",
                       icon=":material/task_alt:")
        if n_pages > 1:
            # keyed by the page shown: the widget follows the open example instead of keeping its own state
            key = f"queue_page_{page}_{n_pages}"
            st.pagination(n_pages, default=page + 1, key=key, on_change=go_page, args=(key, queue_ids, page_size),
                          max_visible_pages=7)
    with st.sidebar:
        recent_ui(run, df, rows, latest)
    with right:
        notices_ui(run, df, rows)
        if current is not None:
            detail_ui(run, df, rows, current, queue_ids, latest, reviewer, f.issue_type)


def main() -> None:
    run = ui.current_run()
    df = data.examples(run.dir)
    _adopt_deep_link()
    f, page_size = filters_ui(run, df)
    st.header("Review queue", anchor=False)
    imgs = data.images(run.dir)
    if imgs.error:
        st.warning(f"Pictures unavailable: {ui.md(imgs.error)}. Decisions still work.", icon=":material/image_not_supported:")
    review_fragment(run, f, page_size)


if __name__ == "__main__":
    main()
