"""Overview: how noisy the labels look, per class, and what natural versus robust training did."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import data, issue_types, ui
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


def given_accuracy_table(run: ui.Run) -> pd.DataFrame:
    """``--models none``: the user's probabilities' top class against the given labels (train agreement,
    test accuracy), from the manifest."""
    m = run.manifest.get("metrics", {})
    src = run.given_input()
    return pd.DataFrame([{"model": f"your model ({src})" if src else "your model",
                          "train (given labels)": m.get("given_train_accuracy"),
                          "test, clean": m.get("given_test_accuracy")}])


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


HEATMAP_ALL_CLASSES = 30  # up to this many classes the heatmap lists every one; past it, those with flags


def confusion_axes(run: ui.Run, t: pd.DataFrame) -> list[str]:
    """The class names the heatmap's axes list, in class order: every class (up to
    :data:`HEATMAP_ALL_CLASSES`), else those that occur as a flagged example's given or suggested label."""
    k = len(run.class_names)
    if k <= HEATMAP_ALL_CLASSES:
        return list(run.class_names)
    used = set(t["given_label"].astype(int)) | set(t["suggested_label"].astype(int))
    return [run.name(i) for i in range(k) if i in used]


def confusion_chart(run: ui.Run, fl: pd.DataFrame):
    """The Altair heatmap of flagged training examples, given label (rows) against suggested label
    (columns). Every class name is a tick label (no label is dropped for overlap: long names slant)."""
    import altair as alt

    t = fl.groupby(["given_label", "suggested_label"]).size().rename("examples").reset_index()
    t["labelled"] = t["given_label"].map(run.name)
    t["suggested"] = t["suggested_label"].map(run.name)
    order = confusion_axes(run, t)
    longest = max((len(n) for n in order), default=1)
    slant = longest > 3 or len(order) > 12
    x_axis = alt.Axis(orient="top", labelOverlap=False, values=order, labelLimit=120,
                      labelAngle=-45 if slant else 0, labelAlign="left" if slant else "center")
    y_axis = alt.Axis(labelOverlap=False, values=order, labelLimit=120)
    base = alt.Chart(t).encode(
        x=alt.X("suggested:N", sort=order, scale=alt.Scale(domain=order), title="suggested", axis=x_axis),
        y=alt.Y("labelled:N", sort=order, scale=alt.Scale(domain=order), title="labelled", axis=y_axis),
        tooltip=["labelled", "suggested", "examples"])
    heat = base.mark_rect(cornerRadius=2).encode(
        color=alt.Color("examples:Q", scale=alt.Scale(scheme="orangered"), legend=None))
    text = base.mark_text(fontSize=11 if len(order) <= 15 else 8).encode(
        text="examples:Q", color=alt.condition(alt.datum.examples > t["examples"].max() / 2,
                                              alt.value("white"), alt.value("#333")))
    side = max(200, 24 * len(order)) if len(order) <= 15 else 16 * len(order)  # a readable row per class
    return (heat + text).properties(height=side)


def confusion_ui(run: ui.Run, df: pd.DataFrame) -> None:
    """Heatmap of flagged training examples: given label (rows) against suggested label (columns)."""
    fl = df[(df["split"] == "train") & df["is_label_issue"]]
    if not len(fl):
        st.caption("Nothing flagged.")
        return
    st.altair_chart(confusion_chart(run, fl), width="stretch")


def run_summary(run: ui.Run) -> str:
    """Dataset spec, models, attack, seed and injected noise, as plain text (from the manifest)."""
    cfg = run.manifest.get("config", {})
    noise = f" · {ui.pct(cfg['noise'])} {cfg.get('noise_kind', '')} noise injected" if cfg.get("noise") else ""
    if not run.trained:  # no model, no attack: the user's probabilities
        src = run.given_input()
        return (f"{run.manifest['dataset']['spec']} · no models trained (--models none): your probabilities"
                + (f" {src}" if src else "") + f" · seed {cfg.get('seed', '?')}{noise}")
    models = ", ".join(ui.MODEL_NAME.get(m, m) for m in run.models)
    return (f"{run.manifest['dataset']['spec']} · models {models} · {cfg.get('norm', '')} eps {ui.eps_text(cfg.get('eps'))}"
            f" · seed {cfg.get('seed', '?')}{noise}")


def progress_ui(run: ui.Run) -> None:
    """How many label errors the review has left to find (audit.calibration), as plain sentences."""
    from audit.calibration import review_state
    from audit.errors import AuditInputError

    st.subheader("Review progress", anchor=False)
    try:
        queue, recall = review_state(run.dir)
    except AuditInputError as e:
        st.warning(ui.md(e), icon=":material/warning:")
        return
    for line in queue.lines() + recall.lines():
        st.markdown(ui.md(line))
    st.caption("Estimates from your decisions so far (keep = the flag was wrong; relabel or remove = it was "
               "right). Review a few *random checks* and the *unflagged sample* (Review queue, sidebar) to keep "
               "them honest.")


def verify_ui(run: ui.Run) -> None:
    """``audit verify`` results, when the run has them: did cleaning pay?"""
    import json

    from audit.verify import summary_lines, summary_rows

    from audit.errors import AuditInputError

    try:
        raw = data.read_run_file(run.dir / "verify.json")  # a link or a non-regular file is refused, not followed
    except AuditInputError as e:
        st.warning(ui.md(e), icon=":material/warning:")
        return
    if raw is None:
        return
    try:
        report = json.loads(raw)
        head, rows = summary_rows(report)
        lines = summary_lines(report)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
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
                why = "; then ".join((f"{t['stopped']}; " if isinstance(t.get("stopped"), str) else "") + str(t.get("retry"))
                                     for t in tries if isinstance(t, dict) and t.get("retry"))
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
    ui.stale_notice(run)
    headline_ui(run, df, decided)
    if decided < int(df.loc[df["split"] == "train", "is_label_issue"].sum()):
        st.page_link("views/review.py", label="Review the flagged examples", icon=":material/arrow_forward:")

    left, right = st.columns([3, 2], gap="large")
    with left:
        accuracy_ui(run, df)
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

    per_class_ui(run, df)
    other_issues_ui(run, df)
    selection_ui(run)


def accuracy_ui(run: ui.Run, df: pd.DataFrame) -> None:
    """Natural versus robust accuracy; for a run that trained none, the user's probabilities' accuracy."""
    pct = st.column_config.NumberColumn(format="%.1f%%")
    if not run.trained:
        st.subheader("Your model's probabilities", anchor=False)
        acc = given_accuracy_table(run)
        acc[acc.columns[1:]] = acc[acc.columns[1:]].astype(float) * 100
        st.dataframe(acc, hide_index=True, width="stretch", key="accuracy_table",
                     column_config={c: pct for c in acc.columns[1:]})
        ui.no_models_note("no natural versus robust comparison; issue_score is cleanlab's label quality of "
                          "your probabilities (their top class against the given labels above).")
        return
    st.subheader("Natural versus robust training", anchor=False)
    acc = accuracy_table(run, df)
    acc[acc.columns[1:]] = acc[acc.columns[1:]].astype(float) * 100
    st.dataframe(acc, hide_index=True, width="stretch", key="accuracy_table",
                 column_config={c: pct for c in acc.columns[1:]})
    st.caption("A natural network fits the wrong labels (high training accuracy on noisy labels) and is "
               "easily attacked; a robustly trained one refuses them and stays accurate under attack. "
               "The examples robust models refuse are the ones flagged here.")


def other_issues_ui(run: ui.Run, df: pd.DataFrame) -> None:
    """One line per issue type beyond label errors, its count (the table's) linking to the Other issues page,
    then the class balance: rare and under-performing classes. Nothing for a run without issue types."""
    types = issue_types.types_in(df)
    if not types:
        return
    from app.views.issues import class_table_ui

    st.subheader("Other issues", anchor=False)
    counts = issue_types.counts(df)
    cols = st.columns(3)
    for j, t in enumerate(types):
        with cols[j % 3]:
            st.page_link("views/issues.py", label=f"{t}: {counts[t]:,} flagged", query_params={"issue_type": t},
                         icon=":material/error:" if counts[t] else ":material/check:",
                         help=ui.md(issue_types.description(t)))
    st.caption("Class balance: rare classes (few training images) and classes "
               + ("the natural model" if run.trained else "your model") + " does worst on")
    for line in issue_types.class_lines(df, run.manifest, run.class_names):
        st.markdown(ui.md(line))
    class_table_ui(run, df, key="class_balance_table")


FLAG_COLUMNS = ("class", "train", "flagged", "flagged %", "mislabelled", "ambiguous", "atypical", "most often really")


def per_class_ui(run: ui.Run, df: pd.DataFrame) -> None:
    """Two narrow tables rather than one too wide for the page: the flags per class, then the test
    accuracy per class and model."""
    st.subheader("Per class", anchor=False)
    pc = per_class_table(run, df)
    small = dict(width=78)
    cfg = {c: st.column_config.NumberColumn(**small) for c in ("train", "flagged", "mislabelled", "ambiguous",
                                                                  "atypical")}
    cfg["class"] = st.column_config.TextColumn(width=140, pinned=True)
    cfg["flagged %"] = st.column_config.ProgressColumn(format="percent", min_value=0.0, width=130,
                                                       max_value=float(max(pc["flagged %"].max(), 0.01)))
    cfg["most often really"] = st.column_config.TextColumn(width=150, help="the suggested class most of this "
                                                           "class's flagged examples move to, and how many")
    st.dataframe(pc[list(FLAG_COLUMNS)], hide_index=True, width="stretch", key="per_class_table", column_config=cfg)
    acc_cols = [c for c in pc.columns if c not in FLAG_COLUMNS]
    if not run.trained:
        ui.no_models_note("no test accuracy per class and model (the class balance below has your model's).")
    if acc_cols:
        st.caption("Test accuracy per class: clean, and under the evaluation attack (adv.)")
        acfg = {c: st.column_config.NumberColumn(format="%.1f%%", width=110,
                                                 help="accuracy on this class's test images"
                                                      + (" under attack" if c.endswith("adv.") else ""))
                for c in acc_cols}
        acfg["class"] = st.column_config.TextColumn(width=140, pinned=True)
        st.dataframe(pc[["class", *acc_cols]], hide_index=True, width="stretch", key="per_class_accuracy",
                     column_config=acfg)


SELECTION_COLUMNS = {
    "auprc": ("canary AUPRC", "how well it ranks the planted wrong labels above the other training images "
                              "(1 = all of them on top)"),
    "self_auprc": ("own finds aside", "canary AUPRC with the signal's own top suspects left out of the comparison "
                                      "(real label errors it finds do not count against it)"),
    "soft_auprc": ("shared finds aside", "canary AUPRC with each other image counting less the more signals "
                                         "suspect it"),
    "rank_sum": ("rank sum", "its ranks under the three canary AUPRCs added up: the lowest wins"),
}


def selection_table(sel: dict) -> pd.DataFrame:
    """The candidates for ``issue_score``, the chosen one first, then by rank sum (lower is better), with
    readable column names; a signal the canaries cannot judge is marked."""
    scores = pd.DataFrame(sel.get("candidates") or sel.get("canary_scores") or {}).T
    if not len(scores):
        return scores
    chosen = str(sel.get("chosen", ""))
    by = "rank_sum" if "rank_sum" in scores.columns else ("auprc" if "auprc" in scores.columns else scores.columns[0])
    scores = scores.assign(_first=[str(i) != chosen for i in scores.index],
                           _key=scores[by].astype(float) * (1 if by == "rank_sum" else -1))
    scores = scores.sort_values(["_first", "_key"], kind="stable").drop(columns=["_first", "_key"])
    cols = [c for c in SELECTION_COLUMNS if c in scores.columns]  # the three grades and their sum (AUROC: manifest)
    out = scores[cols].rename(columns={k: v[0] for k, v in SELECTION_COLUMNS.items()})
    members = sel.get("candidate_members") or {}
    out.insert(0, "signal", [f"{i} (chosen)" if str(i) == chosen else str(i) for i in out.index])
    def what(name) -> str:
        parts = [str(m) for m in members.get(name, []) or []]
        if len(parts) > 1:  # a combination: which signals it averages says more than its name
            return f"mean rank of {', '.join(parts)}"
        return ui.signal_description(name) or ""

    out["what it is"] = [what(i) for i in out.index]
    return out.reset_index(drop=True)


def selection_text(run: ui.Run, sel: dict) -> list[str]:
    """How ``issue_score`` was chosen and how many examples were flagged, in plain sentences (plain
    text: the names come from the manifest)."""
    n_can = sel.get("num_canaries")
    planted = f"{n_can:,} " if isinstance(n_can, int) else ""
    if run.trained:
        lines = [
            "Every signal scores each training image for how likely its label is wrong. To find out which score "
            f"to trust on this data, the run planted {planted}known label errors (canaries): real training images "
            "given a random wrong label, with their correctly labelled originals taken out of training.",
            "Each signal, and the average rank of the best 2, 3 and 4 signals, was graded on how high it ranks "
            "the canaries, three ways that differ in which other images it is compared against (so that a "
            "signal that also finds the real label errors is not marked down). The candidate with the best "
            "ranks over the three grades became issue_score.",
        ]
    else:  # --models none: one signal, nothing to choose between
        lines = ["No models trained (--models none): issue_score is one signal, cleanlab's label quality of your "
                 "model's probabilities (given_cleanlab). No canaries were planted and no signal was chosen among "
                 "others."]
    left_out = [str(x) for x in (sel.get("not_eligible") or [])]
    if left_out:
        lines.append(f"Not eligible: {', '.join(left_out)} (the canaries cannot judge it fairly; it is still "
                     "scored and shown).")
    unhealthy = [str(x) for x in (sel.get("excluded_unhealthy") or [])]
    if unhealthy:
        lines.append(f"Left out because their model failed its checks: {', '.join(unhealthy)}.")
    fl = run.manifest.get("flagging") if isinstance(run.manifest.get("flagging"), dict) else {}
    n = fl.get("n")
    if isinstance(n, int):
        robust = fl.get("robust_errors") if isinstance(fl.get("robust_errors"), dict) else {}
        if fl.get("rule") == "min" and robust:
            errs = ", ".join(f"{ui.MODEL_NAME.get(m, m)} {v:,}" for m, v in robust.items())
            why = (f"the smaller of cleanlab's estimate of how many training labels are wrong "
                   f"({fl.get('out_of_sample', '?'):,}) and how many training images the robust model gets "
                   f"wrong ({errs})")
        elif fl.get("rule") == "out_of_sample":
            why = f"cleanlab's estimate of how many training labels are wrong ({fl.get('out_of_sample', '?'):,})"
        elif fl.get("rule") == "canary_count" and isinstance(fl.get("canary_count"), int):
            why = (f"the geometric mean of cleanlab's estimate of how many training labels are wrong "
                   f"({fl.get('out_of_sample', '?'):,}) and the {fl['canary_count']:,} training images that score "
                   f"like the planted canaries (copies given wrong labels on purpose)")
        elif fl.get("rule") == "canary_floor" and isinstance(fl.get("canary_count"), int):
            why = (f"the {fl['canary_count']:,} training images that score like the planted canaries (copies given "
                   f"wrong labels on purpose), at most cleanlab's estimate")
        else:
            why = f"rule {fl.get('rule', '?')}"
        lines.append(f"Flagged: the {n:,} training images with the highest issue_score, {why}."
                     + (f" {fl['reason']}." if isinstance(fl.get("reason"), str) and fl["reason"] else ""))
    return lines


def selection_ui(run: ui.Run) -> None:
    """How ``issue_score`` was chosen: the chosen signal named and described once, above the candidates
    (chosen first)."""
    sel = run.manifest.get("signal_selection") or {}
    if not isinstance(sel, dict) or not sel:
        return
    chosen = str(sel.get("chosen", "?"))
    members = [str(m) for m in sel.get("members", []) or []]
    with st.expander(f"How {ui.md('issue_score')} was chosen: {ui.md(ui.signal_title(chosen))}", key="selection"):
        head = f"**Chosen: {ui.md(chosen)}**"
        if members and members != [chosen]:
            head += f", the mean rank of {ui.md(', '.join(members))}"
        cand = (sel.get("candidates") or {}).get(chosen) or (sel.get("canary_scores") or {}).get(chosen) or {}
        if isinstance(cand, dict):
            if "auprc" in cand:
                head += f" · canary AUPRC {ui.num(cand['auprc'])}"
            if "rank_sum" in cand:
                head += (f" · rank sum {ui.num(cand['rank_sum'], '.1f')}, the lowest of "
                         f"{len(sel.get('candidates') or {})} candidates")
        st.success(head, icon=":material/check_circle:")
        for line in selection_text(run, sel):
            st.markdown(ui.md(line))
        table = selection_table(sel)
        if len(table):
            cfg = {v[0]: st.column_config.NumberColumn(help=v[1], width=95,
                                                       format="%.3f" if k != "rank_sum" else "%.1f")
                   for k, v in SELECTION_COLUMNS.items()}
            cfg["signal"] = st.column_config.TextColumn(width=175, pinned=True)
            st.dataframe(table, hide_index=True, width="stretch", key="selection_table", column_config=cfg,
                         height=min(38 + 35 * len(table), 600))
            st.caption("The exact rule is in manifest.json, under signal_selection.")


if __name__ == "__main__":
    main()
