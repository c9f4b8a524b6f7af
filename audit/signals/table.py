"""From stage arrays to the contract's tables: ``examples.parquet``, ``pairs.parquet``, ``dynamics.npz``.

Signals (training rows; each oriented so higher = more likely mislabelled):

=====================  ==========================================================================
``cleanlab``           1 − cleanlab label quality (self-confidence) of out-of-sample probabilities
``aum_natural``        −AUM of the natural model over all epochs
``aum_early``          −AUM over the first half of the epochs (before memorization sets in)
``aum_aug``            −AUM over the second half of the epochs of the augmented natural model
                       (``--augment``): it has learned the classes by then and does not memorize
``cv_aum``             −AUM averaged over the cross-validation folds that trained on the example
``memorization``       Feldman–Zhang memorization with the given label's probability
``self_influence``     TracIn self-influence over the natural model's checkpoints
``steps_to_flip``      −(PGD steps needed to flip the natural model's prediction)
``robust_margin_M``    −margin of robust model M on the given label (clean input)
``robust_aum_M``       −AUM of robust model M's training
=====================  ==========================================================================
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from audit.io import save_arrays, write_parquet
from audit.signals.combine import canary_weights, choose_combination, detection_metrics, rank01

CATEGORIES = ("mislabelled", "atypical", "ambiguous", "ok")

# Signals the canaries overrate. A canary is a shifted copy of a training image whose correctly
# labelled source stays in the training set, so a model must overrule that near-twin to memorize the
# canary: it is memorized later and less than real noise, which has no twin. AUM over the natural
# model's whole run, memorization phase included, therefore ranks canaries better than real noise
# (on 10,000 MNIST digits with 20% noise it ranked the canaries best, 0.72 canary AUPRC, yet was the
# weakest of the top signals on the real noise, 0.965 against 0.994 for aum_early). It is kept as a
# column and in the manifest but not chosen for issue_score. (Self-influence, memorization and steps
# to flip are *under*rated by the canaries, so choosing them by canaries stays conservative.)
TWIN_BIASED = ("aum_natural",)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _margin(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    true = logits[np.arange(len(labels)), labels]
    other = logits.copy()
    other[np.arange(len(labels)), labels] = -np.inf
    return true - other.max(1)


def training_signals(run, trained: dict, cv: dict, infl: dict) -> dict[str, np.ndarray]:
    """All raw signals over training rows including canaries (N_aug,)."""
    from cleanlab.rank import get_label_quality_scores

    y = run.train_labels
    nat = trained["natural"]
    margin = nat["margin"].astype(np.float32)
    half = max(1, margin.shape[0] // 2)
    sig = {
        "cleanlab": 1.0 - get_label_quality_scores(y, cv["oos_probs"]),
        "aum_natural": -margin.mean(0),
        "aum_early": -margin[:half].mean(0),
        "cv_aum": -cv["cv_aum"],
        "memorization": cv["memorization_soft"],
        "self_influence": infl["self_influence"],
        "steps_to_flip": -nat["steps_to_flip"].astype(np.float32),
    }
    if "aug" in trained:
        am = trained["aug"]["margin"].astype(np.float32)
        sig["aum_aug"] = -am[am.shape[0] // 2:].mean(0)
    for m in run.cfg.models:
        if m == "natural":
            continue
        sig[f"robust_margin_{m}"] = -_margin(trained[m]["train_logits"], y)
        sig[f"robust_aum_{m}"] = -trained[m]["margin"].astype(np.float32).mean(0)
    return {k: np.nan_to_num(np.asarray(v, np.float64), nan=0.0) for k, v in sig.items()}


def _categories(flagged, given, evidence_probs, votes_alt, memorization, alt):
    """mislabelled: a confident alternative that ≥ 2 of (out-of-sample, robust, neighbours) agree on;
    ambiguous: flagged, the two most likely classes within 0.25; atypical: flagged without a
    confident alternative, or unflagged but memorized (memorization ≥ 0.5); ok: the rest."""
    top2 = np.sort(evidence_probs, axis=1)[:, -2:]
    close = (top2[:, 1] - top2[:, 0]) < 0.25
    p_alt = evidence_probs[np.arange(len(alt)), alt]
    cat = np.full(len(given), "ok", dtype=object)
    mis = flagged & (alt != given) & (votes_alt >= 2) & (p_alt >= 0.5)
    amb = flagged & ~mis & close
    aty = (flagged & ~mis & ~amb) | (~flagged & (memorization >= 0.5))
    cat[aty] = "atypical"
    cat[amb] = "ambiguous"
    cat[mis] = "mislabelled"
    return cat.astype(str)


def n_label_issues(labels: np.ndarray, oos_probs: np.ndarray, robust_preds: list[np.ndarray]) -> int:
    """How many training examples to flag: cleanlab's confident-joint estimate on out-of-sample
    probabilities, capped by the fewest training examples a robust model leaves misclassified (the
    paper: robust models refuse to fit mislabelled examples, so their training errors bound the
    noise from above as well; each estimate alone overshoots on its own kind of hard example)."""
    from cleanlab.count import num_label_issues

    if len(labels) <= oos_probs.shape[1]:
        return 0
    n = int(num_label_issues(labels, oos_probs))
    for pred in robust_preds:
        n = min(n, int((pred != labels).sum()))
    return n


def _category_reasons(cat, given, alt, ev, votes_alt, mem, names) -> list[str]:
    """One sentence per row saying why it got its category, for the person reviewing."""
    out = []
    for c, g, a, p, v, m in zip(cat, given, alt, ev, votes_alt, mem):
        if c == "mislabelled":
            out.append(f"{v} of 3 views (out-of-sample, robust, neighbours) say {names[a]}, "
                       f"p={p[a]:.2f}; labelled {names[g]}")
        elif c == "ambiguous":
            top = np.argsort(p)[::-1][:2]
            out.append(f"torn between {names[top[0]]} ({p[top[0]]:.2f}) and {names[top[1]]} ({p[top[1]]:.2f})")
        elif c == "atypical":
            out.append(f"memorized (memorization {m:.2f}) without a confident alternative label"
                       if m >= 0.5 else f"flagged, but no confident alternative to {names[g]} (p={p[a]:.2f} for {names[a]})")
        else:
            out.append("")
    return out


def build_tables(run, trained: dict, cv: dict, infl: dict) -> tuple[dict, dict]:
    """Write examples.parquet, pairs.parquet and dynamics.npz; return (metrics, manifest extras)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    cfg, ds = run.cfg, run.ds
    models = list(cfg.models)
    robust = [m for m in models if m != "natural"]
    real = ~run.is_canary
    n_tr, n_te = int(real.sum()), len(run.test_rows)
    y_tr, y_te = run.train_labels, run.test_labels
    K = ds.num_classes

    # -- signals and their canary-chosen combination (train) -----------------------------------
    sig = training_signals(run, trained, cv, infl)
    n_issues = n_label_issues(y_tr[real], cv["oos_probs"][real],
                              [trained[m]["train_logits"][real].argmax(1) for m in robust])
    from cleanlab.count import estimate_joint

    joint = estimate_joint(y_tr[real], cv["oos_probs"][real]) if n_tr > K else np.ones((K, K))
    c_w = canary_weights(joint, y_tr[run.is_canary], y_tr[real][run.canary_source])
    combo = choose_combination(sig, run.is_canary, n_exclude=n_issues, ineligible=TWIN_BIASED, canary_weight=c_w)
    score_tr = rank01(combo["score"][real])
    flag_tr = np.zeros(n_tr, bool)
    if n_issues:
        flag_tr[np.argsort(-score_tr, kind="stable")[:n_issues]] = True

    # -- evidence for suggested labels and categories --------------------------------------------
    rob_probs_tr = [_softmax(trained[m]["train_logits"][real]) for m in robust]
    ev_tr = np.mean([cv["oos_probs"][real]] + rob_probs_tr, axis=0)
    test_cv = cv["test_probs"].mean(0)
    rob_probs_te = [_softmax(trained[m]["test_logits"]) for m in robust]
    ev_te = np.mean([test_cv] + rob_probs_te, axis=0)
    nb_lab = y_tr[real][infl["neighbor_idx"]]  # (N_aug + N_test, 10)
    nb_tr = np.concatenate([nb_lab[:len(run.is_canary)][real], nb_lab[len(run.is_canary):]])
    knn_major = np.array([np.bincount(r, minlength=K).argmax() for r in nb_tr])

    def votes(alt, oos_arg, rob_preds, major):
        v = (oos_arg == alt).astype(int) + (major == alt).astype(int)
        if rob_preds:
            v += np.any([p.argmax(1) == alt for p in rob_preds], axis=0).astype(int)
        return v

    # -- test rows: cleanlab on fold-averaged probabilities (test is out-of-sample for every fold) --
    lq_te = get_label_quality_scores(y_te, test_cv) if n_te else np.zeros(0)
    te_sig = [rank01(1 - lq_te)] + [rank01(-_margin(trained[m]["test_logits"], y_te)) for m in robust]
    score_te = rank01(np.mean(te_sig, axis=0)) if n_te else np.zeros(0)
    flag_te = np.zeros(n_te, bool)
    if n_te > 2 * K and len(np.unique(y_te)) == K:
        flag_te = find_label_issues(y_te, test_cv)

    given = np.r_[y_tr[real], y_te]
    ev = np.concatenate([ev_tr, ev_te])
    alt = ev.argmax(1)
    flagged = np.r_[flag_tr, flag_te]
    oos_arg = np.concatenate([cv["oos_probs"][real], test_cv]).argmax(1)
    rob_all = [np.concatenate([a, b]) for a, b in zip(rob_probs_tr, rob_probs_te)]
    mem_all = np.r_[cv["memorization"][real], np.full(n_te, np.nan)]
    votes_alt = votes(alt, oos_arg, rob_all, knn_major[:len(given)])
    mem_filled = np.nan_to_num(mem_all, nan=0.0)
    cat = _categories(flagged, given, ev, votes_alt, mem_filled, alt)

    # -- the examples table ----------------------------------------------------------------------
    rows = np.r_[run.train_rows, run.test_rows]
    df = pd.DataFrame({
        "example_id": ds.example_ids[rows].astype(str),
        "split": ds.split[rows].astype(str),
        "index": ds.index[rows].astype(np.int64),
        "given_label": given.astype(np.int64),
        "suggested_label": alt.astype(np.int64),
        "issue_score": np.r_[score_tr, score_te].astype(np.float64),
        "is_label_issue": flagged,
        "category": cat,
    })
    if ds.paths is not None:
        df["path"] = np.asarray(ds.paths)[rows].astype(str)
    for m in models:
        lg = np.concatenate([trained[m]["train_logits"][real], trained[m]["test_logits"]])
        pred = lg.argmax(1)
        p = _softmax(lg)
        df[f"pred_{m}"] = pred.astype(np.int64)
        df[f"correct_{m}"] = pred == given
        df[f"loss_{m}"] = -np.log(np.clip(p[np.arange(len(given)), given], 1e-12, None))
        df[f"margin_{m}"] = _margin(lg, given)
        adv = np.full(len(given), None, dtype=object)
        adv[n_tr:] = trained[m]["adv_correct_test"]
        df[f"adv_correct_{m}"] = pd.array(adv, dtype="boolean")
        dyn = _dynamics(trained[m])
        for k in ("aum", "forgetting", "first_learned"):
            col = np.full(len(given), np.nan)
            col[:n_tr] = dyn[k][real]
            df[f"{k}_{m}"] = col if k == "aum" else _nullable_int(col)
    df["steps_to_flip"] = _nullable_int(np.r_[trained["natural"]["steps_to_flip"][real], np.full(n_te, np.nan)])
    si = np.full(len(given), np.nan)
    si[:n_tr] = infl["self_influence"][real]
    df["self_influence"] = si
    for name, col in (("memorization", "memorization"), ("memorization_se", "memorization_se"),
                      ("memorization_soft", "memorization_soft"), ("cv_aum", "cv_aum")):
        v = np.full(len(given), np.nan)
        v[:n_tr] = cv[col][real]
        df[name] = v
    if "aug" in trained:
        v = np.full(len(given), np.nan)
        v[:n_tr] = -sig["aum_aug"][real]
        df["aum_aug"] = v
    df["label_quality"] = np.r_[1.0 - sig["cleanlab"][real], lq_te]  # the cleanlab signal is 1 − quality
    # every signal in the detector shape: <name>_score and is_<name>_issue (train rows)
    fired = np.zeros((len(given), 0), bool)
    fired_names = []
    for name, v in sig.items():
        s = np.full(len(given), np.nan)
        s[:n_tr] = v[real]
        df[f"{name}_score"] = s
        iss = np.zeros(len(given), bool)
        if name == "cleanlab":  # cleanlab's own decision, the documented baseline workflow
            iss[:n_tr] = find_label_issues(y_tr[real], cv["oos_probs"][real]) if n_tr > K else False
        elif n_issues:
            iss[np.argsort(-v[real], kind="stable")[:n_issues]] = True
        df[f"is_{name}_issue"] = iss
        fired = np.column_stack([fired, iss])
        fired_names.append(name)
    df["signals_fired"] = [",".join(n for n, f in zip(fired_names, r) if f) for r in fired]
    nat_fit = df["correct_natural"].to_numpy(bool)
    df["natural_fit_robust_miss"] = nat_fit & np.any([~df[f"correct_{m}"].to_numpy(bool) for m in robust], axis=0) \
        if robust else np.zeros(len(given), bool)
    df["category_reason"] = _category_reasons(cat, given, alt, ev, votes_alt, mem_filled, ds.class_names)
    nb_ids = ds.example_ids[run.train_rows][infl["neighbor_idx"]]
    nb_ids = np.concatenate([nb_ids[:len(run.is_canary)][real], nb_ids[len(run.is_canary):]])
    df["neighbor_ids"] = [list(map(str, r)) for r in nb_ids]
    df["neighbor_labels"] = [list(map(int, r)) for r in nb_tr]
    df["evidence_confidence"] = ev.max(1)
    if ds.clean_labels is not None:
        df["clean_label"] = ds.clean_labels[rows].astype(np.int64)
        df["is_injected_noise"] = df["clean_label"].to_numpy() != df["given_label"].to_numpy()

    # -- pairs ------------------------------------------------------------------------------------
    te_ids = ds.example_ids[run.test_rows]
    tr_ids = ds.example_ids[run.train_rows]
    pairs = pd.DataFrame({
        "test_id": te_ids[infl["pair_query"]].astype(str),
        "train_id": tr_ids[infl["pair_train"]].astype(str),
        "rank": infl["pair_rank"].astype(np.int32),
        "similarity": infl["pair_similarity"].astype(np.float64),
        "influence": infl["pair_influence"].astype(np.float64),
        "fz_influence": infl["pair_fz_influence"].astype(np.float64),
        "fz_influence_se": infl["pair_fz_influence_se"].astype(np.float64),
        "reason": infl["pair_reason"].astype(str),
    })

    # -- metrics ----------------------------------------------------------------------------------
    metrics: dict = {"num_flagged_train": int(flag_tr.sum()), "num_flagged_test": int(flag_te.sum()),
                     "estimated_noise_rate": n_issues / max(1, n_tr), "num_pairs": int(len(pairs))}
    for m in models:
        metrics[f"{m}_train_accuracy"] = float(df[f"correct_{m}"][:n_tr].mean())
        metrics[f"{m}_test_accuracy"] = float(df[f"correct_{m}"][n_tr:].mean()) if n_te else float("nan")
        metrics[f"{m}_test_adv_accuracy"] = float(trained[m]["adv_correct_test"].mean()) if n_te else float("nan")
    if "aug" in trained:
        metrics["aug_test_accuracy"] = float(trained["aug"]["test_accuracy"])
    if ds.clean_labels is not None:
        truth = df["is_injected_noise"].to_numpy()[:n_tr]
        metrics.update({f"noise_{k}": v for k, v in detection_metrics(score_tr, truth).items()})
        tp = int((flag_tr & truth).sum())
        metrics["noise_precision"] = tp / max(1, int(flag_tr.sum()))
        metrics["noise_recall"] = tp / max(1, int(truth.sum()))
        metrics["natural_fits_noise"] = float(df["correct_natural"][:n_tr][truth].mean()) if truth.any() else float("nan")
    canary = {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in combo["canary"].items()}
    extra = {"signal_selection": {
        "rule": "highest canary AUPRC (negatives: real rows outside the consensus top n) among single "
                "signals and mean ranks of the best 2-4, canaries weighted by cleanlab's estimated noise "
                "transitions, leaving out aum_natural (canaries have a correctly labelled twin, real noise "
                "does not); "
                "is_label_issue = top n by issue_score, n = min(cleanlab confident-joint estimate, robust training errors)",
        "chosen": combo["chosen"], "members": combo["members"], "canary_scores": canary,
        "not_eligible": [k for k in TWIN_BIASED if k in canary],
        "candidates": {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in combo.get("candidates", {}).items()},
        "num_canaries": int(run.is_canary.sum()), "num_label_issues": n_issues,
        "canary_weight_range": [round(float(c_w.min()), 3), round(float(c_w.max()), 3)] if len(c_w) else []}}

    meta = {"class_names": list(ds.class_names), "dataset": ds.spec, "config_hash": cfg.hash(),
            "models": models, "fingerprint": run.fingerprint}
    write_parquet(run.out / "examples.parquet", df, meta)
    write_parquet(run.out / "pairs.parquet", pairs, meta)
    dyn = {"example_ids": tr_ids.astype(str), "models": np.array(models)}
    for m in models + (["aug"] if "aug" in trained else []):
        dyn[f"margin_{m}"] = trained[m]["margin"][:, real].astype(np.float16)
        dyn[f"correct_{m}"] = trained[m]["correct"][:, real]
    save_arrays(run.out / "dynamics.npz", dyn)
    return metrics, extra


def _dynamics(arr: dict) -> dict[str, np.ndarray]:
    from audit.train.engine import summarize_dynamics

    return summarize_dynamics(arr["margin"].astype(np.float32), arr["correct"], arr["loss"].astype(np.float32))


def _nullable_int(col: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """float array with NaN for 'not applicable' -> pandas nullable Int64."""
    return pd.array(np.where(np.isnan(col), None, col).tolist(), dtype="Int64")
