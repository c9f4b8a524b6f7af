"""Overview: how noisy the labels look, per class, and what natural versus robust training did."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import data, ui
from app.queue import CATEGORIES


def headline_ui(run: ui.Run, df: pd.DataFrame, decided: int) -> None:
    m = run.manifest.get("metrics", {})
    train = df[df["split"] == "train"]
    n_flag = int(train["is_label_issue"].sum())
    n_flag_test = int(df.loc[df["split"] == "test", "is_label_issue"].sum())
    c = st.columns(5)
    c[0].metric("training examples", f"{len(train):,}")
    quiet = dict(delta_color="off", delta_arrow="off")
    c[1].metric("flagged for review", f"{n_flag:,}", f"{n_flag / max(len(train), 1):.1%} of training", **quiet)
    c[2].metric("estimated noise rate", ui.pct(m.get("estimated_noise_rate")),
                help="cleanlab's confident-joint estimate of the share of wrong training labels")
    c[3].metric("flagged test labels", f"{n_flag_test:,}", "listed separately, never removed", **quiet)
    c[4].metric("reviewed", f"{decided:,} / {n_flag:,}", f"{decided / max(n_flag, 1):.0%} of flagged", **quiet)


def accuracy_table(run: ui.Run, df: pd.DataFrame) -> pd.DataFrame:
    """Per model: accuracy on the (noisy) training labels, clean test accuracy, accuracy under attack."""
    m = run.manifest.get("metrics", {})
    rows = []
    for model in run.models:
        rows.append({
            "model": ui.MODEL_NAME.get(model, model),
            "train (given labels)": m.get(f"{model}_train_accuracy"),
            "test, clean": m.get(f"{model}_test_accuracy"),
            "test, adversarial": m.get(f"{model}_test_adv_accuracy"),
        })
    return pd.DataFrame(rows)


def per_class_table(run: ui.Run, df: pd.DataFrame) -> pd.DataFrame:
    """One row per class: size, flags by category, the class flagged examples most often belong to
    instead, and per model clean and adversarial test accuracy."""
    train, test = df[df["split"] == "train"], df[df["split"] == "test"]
    flagged = train[train["is_label_issue"]]
    out = pd.DataFrame({"class": list(run.class_names)})
    k = np.arange(len(run.class_names))
    out["train"] = train["given_label"].value_counts().reindex(k, fill_value=0).to_numpy()
    out["flagged"] = flagged["given_label"].value_counts().reindex(k, fill_value=0).to_numpy()
    out["flagged %"] = out["flagged"] / out["train"].clip(lower=1)
    for cat in CATEGORIES[:-1]:
        sub = flagged[flagged["category"] == cat] if "category" in flagged.columns else flagged.iloc[:0]
        out[cat] = sub["given_label"].value_counts().reindex(k, fill_value=0).to_numpy()
    moved = flagged[flagged["suggested_label"] != flagged["given_label"]]
    top = moved.groupby("given_label")["suggested_label"].agg(lambda s: s.value_counts().idxmax())
    cnt = moved.groupby("given_label")["suggested_label"].agg(lambda s: s.value_counts().max())
    out["most often really"] = [f"{run.name(top[i])} ({cnt[i]})" if i in top.index else "" for i in k]
    for model in run.models:
        name = ui.MODEL_NAME.get(model, model)
        if f"correct_{model}" in test.columns and len(test):
            out[f"{name} test"] = 100 * test.groupby("given_label")[f"correct_{model}"].mean().reindex(k).to_numpy()
        if f"adv_correct_{model}" in test.columns and len(test):
            adv = test[f"adv_correct_{model}"].astype("float")
            out[f"{name} adv."] = 100 * adv.groupby(test["given_label"]).mean().reindex(k).to_numpy()
    return out


def category_counts(df: pd.DataFrame) -> pd.DataFrame:
    train = df[df["split"] == "train"]
    t = pd.crosstab(train["category"], train["is_label_issue"]).reindex(list(CATEGORIES), fill_value=0)
    return pd.DataFrame({"category": t.index, "flagged": t.get(True, 0), "not flagged": t.get(False, 0)})


def confusion_ui(run: ui.Run, df: pd.DataFrame) -> None:
    """Heatmap of flagged training examples: given label (rows) against suggested label (columns)."""
    import altair as alt

    fl = df[(df["split"] == "train") & df["is_label_issue"]]
    if not len(fl):
        st.caption("Nothing flagged.")
        return
    t = fl.groupby(["given_label", "suggested_label"]).size().rename("examples").reset_index()
    t["labelled"] = t["given_label"].map(run.name)
    t["suggested"] = t["suggested_label"].map(run.name)
    order = list(run.class_names)
    base = alt.Chart(t).encode(
        x=alt.X("suggested:N", sort=order, title="suggested", axis=alt.Axis(labelAngle=0, orient="top")),
        y=alt.Y("labelled:N", sort=order, title="labelled"),
        tooltip=["labelled", "suggested", "examples"])
    heat = base.mark_rect(cornerRadius=2).encode(
        color=alt.Color("examples:Q", scale=alt.Scale(scheme="orangered"), legend=None))
    text = base.mark_text(fontSize=11).encode(
        text="examples:Q", color=alt.condition(alt.datum.examples > t["examples"].max() / 2,
                                              alt.value("white"), alt.value("#333")))
    side = min(28 * len(order), 340)
    st.altair_chart((heat + text).properties(height=side), width="stretch")


def run_summary(run: ui.Run) -> str:
    """Dataset spec, models, attack, seed and injected noise, as plain text (from the manifest)."""
    cfg = run.manifest.get("config", {})
    models = ", ".join(ui.MODEL_NAME.get(m, m) for m in run.models)
    noise = f" · {ui.pct(cfg['noise'])} {cfg.get('noise_kind', '')} noise injected" if cfg.get("noise") else ""
    return (f"{run.manifest['dataset']['spec']} · models {models} · {cfg.get('norm', '')} eps {cfg.get('eps', '?')}"
            f" · seed {cfg.get('seed', '?')}{noise}")


def progress_ui(run: ui.Run) -> None:
    """How many label errors the review has left to find (audit.calibration), as plain sentences."""
    from audit.calibration import review_state

    queue, recall = review_state(run.dir)
    st.subheader("Review progress", anchor=False)
    for line in queue.lines() + recall.lines():
        st.markdown(ui.md(line))
    st.caption("Estimates from your decisions so far (keep = the flag was wrong; relabel or remove = it was "
               "right). Review a few *random checks* and the *unflagged sample* (Review queue, sidebar) to keep "
               "them honest.")


def verify_ui(run: ui.Run) -> None:
    """``audit verify`` results, when the run has them: did cleaning pay?"""
    import json

    from audit.verify import summary_lines, summary_rows

    path = run.dir / "verify.json"
    if not path.is_file():
        return
    try:
        report = json.loads(path.read_text())
        head, rows = summary_rows(report)
        lines = summary_lines(report)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        st.warning("verify.json is unreadable; rerun `audit verify`.")
        return
    st.subheader("Did cleaning pay? (audit verify)", anchor=False)
    st.dataframe(pd.DataFrame(rows, columns=head), hide_index=True, width="stretch", key="verify_table")
    for line in lines:
        st.caption(ui.md(line))


def health_ui(run: ui.Run) -> None:
    """What the run's own checks found (audit.health): a warning per model that failed them and per
    fallback taken when flagging, a line per model that was retrained."""
    man = run.manifest
    warnings = man.get("warnings") if isinstance(man.get("warnings"), list) else []
    for w in warnings:
        if isinstance(w, str):
            st.warning(ui.md(w[:2000]), icon=":material/warning:")
    attempts = (man.get("health") or {}).get("attempts") if isinstance(man.get("health"), dict) else None
    if isinstance(attempts, dict):
        for role, tries in attempts.items():
            if isinstance(tries, list) and len(tries) > 1:
                why = "; then ".join(str(t.get("retry")) for t in tries if isinstance(t, dict) and t.get("retry"))
                st.caption(ui.md(f"{ui.MODEL_NAME.get(role, role)}: retrained {len(tries) - 1}x after failed "
                                 f"health checks ({why[:500]})"))


def main() -> None:
    run = ui.current_run()
    df = data.examples(run.dir)
    latest = data.latest_decisions(run.dir)
    train_ids = df.loc[df["split"] == "train"]
    decided = int(train_ids.loc[train_ids["is_label_issue"], "example_id"].isin(latest["example_id"]).sum())
    st.header("Overview", anchor=False)
    st.caption(ui.md(run_summary(run)))
    health_ui(run)
    headline_ui(run, df, decided)
    if decided < int(df.loc[df["split"] == "train", "is_label_issue"].sum()):
        st.page_link("views/review.py", label="Review the flagged examples", icon=":material/arrow_forward:")

    left, right = st.columns([3, 2], gap="large")
    with left:
        st.subheader("Natural versus robust training", anchor=False)
        acc = accuracy_table(run, df)
        acc[acc.columns[1:]] = acc[acc.columns[1:]].astype(float) * 100
        pct = st.column_config.NumberColumn(format="%.1f%%")
        st.dataframe(acc, hide_index=True, width="stretch", key="accuracy_table",
                     column_config={c: pct for c in acc.columns[1:]})
        st.caption("A natural network fits the wrong labels (high training accuracy on noisy labels) and is "
                   "easily attacked; a robustly trained one refuses them and stays accurate under attack. "
                   "The examples robust models refuse are the ones flagged here.")
        m = run.manifest.get("metrics", {})
        if "noise_auroc" in m:
            st.info(f"**Planted noise** (this run flipped labels on purpose): flagged examples catch "
                    f"{ui.pct(m.get('noise_recall'))} of the flips at precision {ui.pct(m.get('noise_precision'))}; "
                    f"AUROC {ui.num(m['noise_auroc'])}, AUPRC {ui.num(m.get('noise_auprc'))}.",
                    icon=":material/science:")
    with right:
        st.subheader("Flagged: labelled → suggested", anchor=False)
        confusion_ui(run, df)
        cats = category_counts(df)
        st.markdown("  \n".join(f":{ui.CATEGORY_COLOR[c]}-badge[{c}] **{int(n)}** flagged"
                                 + (f", {int(m)} more not flagged" if m else "") + f" — {ui.CATEGORY_HELP[c]}"
                                 for c, n, m in zip(cats["category"], cats["flagged"], cats["not flagged"])
                                 if c != "ok"))

        progress_ui(run)
    verify_ui(run)

    st.subheader("Per class", anchor=False)
    pc = per_class_table(run, df)
    pct_cols = [c for c in pc.columns if c.endswith(" test") or c.endswith(" adv.")]
    cfg_cols = {c: st.column_config.NumberColumn(format="%.1f%%", help="accuracy on this class's test images"
                                                 + (" under attack" if c.endswith("adv.") else ""))
                for c in pct_cols}
    cfg_cols["flagged %"] = st.column_config.ProgressColumn(format="percent", min_value=0.0,
                                                             max_value=float(max(pc["flagged %"].max(), 0.01)))
    st.dataframe(pc, hide_index=True, width="stretch", key="per_class_table", column_config=cfg_cols)

    sel = run.manifest.get("signal_selection") or {}
    if sel:
        members = ", ".join(str(m) for m in sel.get("members", []) or [])
        with st.expander(f"How `issue_score` was chosen: **{ui.md(sel.get('chosen', '?'))}** ({ui.md(members)})"):
            st.caption(ui.md(sel.get("rule", "")))
            scores = pd.DataFrame(sel.get("candidates") or sel.get("canary_scores") or {}).T
            if len(scores):
                scores.index.name = "signal"
                st.dataframe(scores.sort_values(scores.columns[-1], ascending=False), width="stretch")


if __name__ == "__main__":
    main()
