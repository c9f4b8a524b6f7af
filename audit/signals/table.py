"""From stage arrays to the contract's tables: ``examples.parquet``, ``pairs.parquet``, ``dynamics.npz``.

Signals (training rows; each oriented so higher = more likely mislabelled; registered in
:mod:`audit.signals.registry`):

=====================  ==========================================================================
``cleanlab``           1 − cleanlab label quality (self-confidence) of out-of-sample probabilities
``aum_natural``        −AUM of the natural model over all epochs
``aum_early``          −AUM over the first half of the epochs (before memorization sets in)
``aum_aug``            −AUM of the augmented natural model (``--augment``) over the second half of
                       its epochs before it fits the label issues (:func:`~audit.signals.registry.aug_window`)
``cv_aum``             −AUM averaged over the cross-validation folds that trained on the example
``memorization``       Feldman–Zhang memorization with the given label's probability
``self_influence``     TracIn self-influence over the natural model's checkpoints
``steps_to_flip``      −(PGD steps needed to flip the natural model's prediction)
``robust_margin_M``    −margin of robust model M on the given label (clean input)
``robust_aum_M``       −AUM of robust model M's training
=====================  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from audit.data import AuditDataset
from audit.health import REFUSE_MIN, issue_estimate
from audit.signals.combine import (
    canary_weights,
    choose_combination,
    detection_metrics,
    rank01,
)
from audit.signals.registry import (
    AUG_NOISE_TRUST,
    SignalInputs,
    aug_first_fit,
    aug_fit_bound,
    aug_window,
    compute_signals,
)
from audit.signals.util import margin, softmax

CATEGORIES = ("mislabelled", "atypical", "ambiguous", "ok")


@dataclass(frozen=True)
class TableContext:
    """What the tables are assembled from besides the stages' arrays."""

    models: tuple[str, ...]
    ds: AuditDataset  # the audited dataset (noisy labels as given)
    data: object  # audit.stages.TrainData
    canaries: object  # audit.signals.canaries.CanarySet
    fingerprint: str
    config_hash: str
    unhealthy: dict = field(default_factory=dict)  # model -> its failed health checks (audit.health)
    given_probs: object = None  # --pred-probs: an audit.data.given.GivenArray (dataset order), or None

    def given_train_probs(self) -> np.ndarray | None:
        """--pred-probs on the models' training rows (canaries: their source image's)."""
        if self.given_probs is None:
            return None
        from audit.data.given import train_order

        return train_order(self.given_probs.values, self.ds, self.canaries).astype(np.float64)

    @property
    def robust(self) -> list[str]:
        """The robust models whose evidence counts: those that passed their health checks."""
        return [m for m in self.models if m != "natural" and m not in self.unhealthy]

    @property
    def is_canary(self) -> np.ndarray:
        return self.data.is_canary

    @property
    def train_labels(self) -> np.ndarray:
        return self.data.train_labels

    @property
    def test_labels(self) -> np.ndarray:
        return self.data.test_labels

    @property
    def train_rows(self) -> np.ndarray:
        """The dataset rows of the real training rows the models trained on (canaries' sources left)."""
        return self.ds.split_indices("train")[self.canaries.real_rows]

    @property
    def source_rows(self) -> np.ndarray:
        """The dataset rows whose images train as canaries (with a flipped label) in this run."""
        return self.ds.split_indices("train")[self.canaries.source]

    @property
    def test_rows(self) -> np.ndarray:
        return self.ds.split_indices("test")


@dataclass
class Tables:
    examples: pd.DataFrame
    pairs: pd.DataFrame
    dynamics: dict
    metrics: dict
    extra: dict
    meta: dict

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
    noise from above as well; each estimate alone overshoots on its own kind of hard example).
    :func:`flag_count` adds the fallbacks when that bound is implausible."""
    return flag_count(labels, oos_probs, robust_preds)["n"]


# A robust bound below this share of the out-of-sample estimate is implausible: the robust model fit
# labels the out-of-sample models doubt (it memorized), so its few errors bound nothing. The health
# check ``no_memorizing`` asks the same of the doubted rows.
PLAUSIBLE_BOUND = REFUSE_MIN


def flag_count(labels: np.ndarray, oos_probs: np.ndarray, robust_preds: dict | list,
               unhealthy: tuple[str, ...] = ()) -> dict:
    """How many training rows to flag, by which rule, and why, in words.

    ``min``: min(cleanlab's confident-joint estimate, each healthy robust model's training errors).
    ``out_of_sample``: the estimate alone, when no robust model passed its checks or the robust bound is
    below ``PLAUSIBLE_BOUND`` × the estimate. Decided later, in :func:`score_training`: ``canary_floor``,
    when ``min`` took a robust model's errors and more real rows score like the planted canaries
    (:func:`canary_count`), that count, still at most the estimate; ``canary_count``: the estimate set n and
    the canaries' count is below it but at least ``CANARY_AGREE`` × it (the noise scores like the canaries,
    the estimate includes clean rows the models get wrong and the canaries score above the real noise),
    the geometric mean of the two; ``canaries``: both are zero.
    Returns ``{"n", "rule", "out_of_sample", "robust_errors", "reason"}``."""
    preds = robust_preds if isinstance(robust_preds, dict) else {f"robust{i}": p for i, p in enumerate(robust_preds)}
    n_oos = issue_estimate(labels, oos_probs)
    errors = {m: int((p != labels).sum()) for m, p in preds.items()}
    out = {"n": n_oos, "rule": "out_of_sample", "out_of_sample": n_oos, "robust_errors": errors, "reason": ""}
    if errors:
        bound = min(errors.values())
        if bound >= PLAUSIBLE_BOUND * n_oos:
            out.update(n=min(n_oos, bound), rule="min")
        else:
            worst = min(errors, key=errors.get)
            out["reason"] = (f"the {worst} model leaves only {bound} training labels wrong against an out-of-sample "
                             f"estimate of {n_oos}: it fit labels the out-of-sample models doubt, so its errors "
                             f"cannot bound the noise; flagged by the out-of-sample estimate")
    elif unhealthy:
        out["reason"] = (f"no robust model passed its checks ({', '.join(unhealthy)}); "
                         f"flagged by the out-of-sample estimate alone")
    return out


CANARY_RECALLS = (0.25, 0.5, 0.75)
# Where cleanlab's estimate sets the count, the canaries' count corrects it (their geometric mean) when it
# is at least this share of the estimate (chosen on the development draw: random-flip sets 0.41-0.64 of
# it, instance-dependent ones 0-0.23).
CANARY_AGREE = 1 / 3


def canary_count(score: np.ndarray, is_canary: np.ndarray) -> int:
    """How many real rows score like the planted canaries (known mislabelled copies of real images).

    At the score a share r of the canaries reach, the real rows above it are r × the real rows that are
    mislabelled like them plus some clean rows, so each r gives an estimate from above, real rows above
    / r; the smallest over ``CANARY_RECALLS`` is returned. Canaries get random wrong labels; where the
    real noise is subtler (labels people would plausibly give) its rows score below the canaries and
    this undercounts, which is why :func:`score_training` never flags more than the out-of-sample
    estimate by it: it is a floor under a robust model's errors, and it pulls the estimate down (their
    geometric mean) only when it is at least ``CANARY_AGREE`` of it. ``score``: training rows including the canaries."""
    can, real = score[is_canary], score[~is_canary]
    if not len(can) or not len(real):
        return 0
    est = [float((real > np.quantile(can, 1 - r)).sum()) / r for r in CANARY_RECALLS]
    return int(round(min(est)))


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


@dataclass
class Scores:
    """The training rows' combined score and flags (real rows only) with the selection record."""

    signals: dict  # name -> (N_aug,)
    not_judged: tuple
    score: np.ndarray
    flags: np.ndarray
    n_issues: int
    combo: dict
    canary_weight: np.ndarray
    flagging: dict = field(default_factory=dict)  # the flag-count rule and why (flag_count)
    aug_window: dict | None = None  # the augmented model's epochs behind aum_aug and why (aug_window)


def score_training(run: TableContext, trained: dict, cv: dict, infl: dict) -> Scores:
    """Every registered signal, the canary-chosen combination and the top-n flags."""
    from cleanlab.count import estimate_joint

    from audit.health import excluded_signals

    real, y = ~run.is_canary, run.train_labels
    robust = [m for m in run.models if m != "natural"]
    rule = flag_count(y[real], cv["oos_probs"][real], {m: trained[m]["train_logits"][real].argmax(1) for m in run.robust},
                      unhealthy=tuple(m for m in robust if m in run.unhealthy))
    n_issues = rule["n"]
    # the share of the rows the models trained on with a wrong label: the estimated issues and the canaries
    noise_share = (n_issues + int(run.is_canary.sum())) / len(y) if len(y) else None
    sig, not_judged = compute_signals(SignalInputs(labels=y, natural=trained["natural"],
                                                   robust={m: trained[m] for m in robust},
                                                   aug=trained.get("aug"), cv=cv, infl=infl,
                                                   given_probs=run.given_train_probs(), noise_share=noise_share))
    excluded = tuple(excluded_signals(run.unhealthy, sig))
    window = None
    if "aug" in trained:
        correct = trained["aug"]["correct"]
        (start, end), first, e = aug_window(correct, noise_share), aug_first_fit(correct, noise_share), len(correct)
        bound = aug_fit_bound(noise_share or 0.0)
        window = {
            "epochs": [start, end], "of": e, "noise_share": round(float(noise_share or 0.0), 4),
            "fit_bound": round(bound, 4),
            "reason": ("the second half of its epochs" if end == e else
                       f"epochs {start + 1}-{end} of {e}: from epoch {first + 1} on it fit over "
                       f"{bound:.0%} of the given labels (1 - {AUG_NOISE_TRUST} x the estimated share of wrong "
                       f"ones, canaries included), so it was fitting label issues"
                       + (" (the window never ends before a quarter of the run)" if end > first else ""))}
    k, n_tr = run.ds.num_classes, int(real.sum())
    joint = estimate_joint(y[real], cv["oos_probs"][real]) if n_tr > k else np.ones((k, k))
    c_w = canary_weights(joint, y[run.is_canary], run.canaries.clean_labels)
    combo = choose_combination(sig, run.is_canary, n_exclude=n_issues, ineligible=not_judged + excluded,
                               canary_weight=c_w)
    score = rank01(combo["score"][real])
    if run.is_canary.any():
        rule["canary_count"] = c_n = canary_count(combo["score"], run.is_canary)
    if rule["rule"] == "min" and n_issues < rule["out_of_sample"] and run.is_canary.any():
        # A robust model that fit some of the noise refuses fewer labels than are wrong; the canaries show
        # how many real rows score like known mislabelled copies, and that count is a floor under its errors.
        if c_n > n_issues:
            worst = min(rule["robust_errors"], key=rule["robust_errors"].get)
            n_issues = min(rule["out_of_sample"], c_n)
            rule.update(n=n_issues, rule="canary_floor",
                        reason=f"the {worst} model refused {rule['robust_errors'][worst]} training labels, fewer than "
                               f"the {c_n} real rows that score like the {int(run.is_canary.sum())} planted canaries "
                               f"(known mislabelled copies): it fit some of the noise; flagged "
                               f"min(out-of-sample estimate {rule['out_of_sample']}, {c_n}) = {n_issues}")
    oos_sets_n = rule["rule"] == "out_of_sample" or (
        rule["rule"] == "min" and min(rule["robust_errors"].values()) > rule["out_of_sample"])
    if run.is_canary.any() and oos_sets_n and CANARY_AGREE * n_issues <= c_n < n_issues:
        # Where cleanlab's estimate sets the count, the canaries may correct it. Where the real noise is like
        # them (labels wrong at random, as misfiled files are), the two count the same noise with errors of
        # opposite sign: the estimate also counts clean rows weak models get confidently wrong (2.3x the
        # truth on a 2,000-image colour set), and the canaries, copies of typical images, score above the
        # real noise, so the canary count runs under it (0.72x on digits). Their geometric mean is flagged.
        # Where the noise is subtler than the canaries (instance-dependent), few real rows score like them:
        # the count falls below a third of the estimate and is not used. A robust model's errors, where
        # they set the count, are a measurement and stay.
        rule["rule_before_canaries"] = rule["rule"]
        n_new = int(round(np.sqrt(n_issues * c_n)))
        before = rule["reason"].split("; flagged by the out-of-sample estimate")[0]  # why the estimate set n
        rule.update(rule="canary_count",
                    reason=(f"{before}; " if before else "") +
                           f"{c_n} real rows score like the {int(run.is_canary.sum())} planted canaries (known "
                           f"mislabelled copies), {c_n / n_issues:.0%} of cleanlab's out-of-sample estimate of "
                           f"{n_issues} (a third or more: the noise looks random, like the canaries'), and the "
                           f"estimate also counts clean rows the out-of-sample models get wrong; flagged the "
                           f"geometric mean of the two, sqrt({n_issues} x {c_n}) = {n_new}")
        n_issues = rule["n"] = n_new
    # cleanlab's confident-joint count from the out-of-sample models ran 1.2-2x the true number of wrong
    # labels on every set of the development suite (models 69-96% accurate on the test rows; most where
    # they were weakest): clean rows those models get confidently wrong are counted too. Where that count
    # sets n, the run says so.
    if n_issues and n_issues == rule["out_of_sample"]:
        te = run.test_labels
        acc = (f" ({float((cv['test_probs'].mean(0).argmax(1) == te).mean()):.0%} accurate on the test rows)"
               if len(te) and "test_probs" in cv else "")
        rule["caution"] = (f"the count is cleanlab's estimate from the out-of-sample models{acc}, which tends to "
                           f"run above the true number (1.2-2x on the development suite, most with weak models), "
                           f"so the last of the {n_issues} flags are the least certain")
    elif (rule["rule"] == "min" and n_issues and run.is_canary.any()
          and n_issues == min(rule["robust_errors"].values()) and c_n < CANARY_AGREE * n_issues):
        # A robust model's errors set the count, but few real rows score like the canaries: the noise is
        # subtler than random flips, or many refused labels are clean images the model finds hard. On the
        # development suite (stop-32 runs, all three draws) such counts ran 0.8-1.0x the truth where the robust
        # model was 94-98% accurate on the test rows and 1.4-3.1x where it was 52-76% accurate.
        worst = min(rule["robust_errors"], key=rule["robust_errors"].get)
        te = run.test_labels
        acc = (f"; it is {float((trained[worst]['test_logits'].argmax(1) == te).mean()):.0%} accurate on the test rows"
               if len(te) and "test_logits" in trained[worst] else "")
        rows = "real row scores" if c_n == 1 else "real rows score"
        rule["caution"] = (f"the count is the {worst} model's {n_issues} refused training labels, but only {c_n} "
                           f"{rows} like the {int(run.is_canary.sum())} planted canaries: the noise is subtler "
                           f"than random flips, or many refusals are clean images the model finds hard{acc} "
                           f"(on the development suite such counts ran 0.8-1.0x the truth with models over 90% "
                           f"accurate and 1.4-3.1x with models under 80%), so the last of the {n_issues} flags "
                           f"are the least certain")
    if n_issues == 0 and run.is_canary.any() and n_tr:
        # Never a silent zero: both estimates found nothing, so the planted canaries set the threshold:
        # flag the real rows that score above half of the canaries (known mislabelled copies).
        cut = np.median(combo["score"][run.is_canary])
        n_issues = int((combo["score"][real] > cut).sum())
        rule.update(n=n_issues, rule="canaries",
                    reason=f"the out-of-sample estimate and the robust models' errors found no label issues; "
                           f"flagged the {n_issues} rows scoring above half of the {int(run.is_canary.sum())} "
                           f"planted canaries (known mislabelled copies)")
    flags = np.zeros(n_tr, bool)
    if n_issues:
        flags[np.argsort(-score, kind="stable")[:n_issues]] = True
    warnings = []
    if excluded and not set(sig) - set(not_judged) - set(excluded):
        warnings.append("every signal comes from a model that failed its checks; issue_score still chose among "
                        "them all, so treat its ranking with care")
    if rule["reason"]:
        warnings.append(f"flagging: {rule['reason']}")
    if rule.get("caution"):
        warnings.append(f"flagging: {rule['caution']}")
    if not flags.any():
        warnings.append("nothing flagged: " + ("no planted canaries to set a threshold (too few training rows); "
                                               if not run.is_canary.any() else "")
                        + "the review queue shows the top-ranked examples; try more --epochs or another --seed")
    rule["warnings"] = warnings
    rule["excluded_signals"] = list(excluded)
    return Scores(sig, not_judged + excluded, score, flags, n_issues, combo, c_w, rule, window)


@dataclass
class Evidence:
    """Per row of both splits (train then test): the suggested label and its support."""

    given: np.ndarray
    probs: np.ndarray  # averaged out-of-sample and robust probabilities
    alt: np.ndarray
    votes: np.ndarray
    flagged: np.ndarray
    memorization: np.ndarray
    category: np.ndarray
    neighbor_labels: np.ndarray
    test_quality: np.ndarray
    test_score: np.ndarray


def gather_evidence(run: TableContext, trained: dict, cv: dict, infl: dict, sc: Scores) -> Evidence:
    real, k = ~run.is_canary, run.ds.num_classes
    y_tr, y_te = run.train_labels, run.test_labels
    robust = run.robust  # healthy robust models only
    rob_tr = [softmax(trained[m]["train_logits"][real]) for m in robust]
    test_cv = cv["test_probs"].mean(0)
    rob_te = [softmax(trained[m]["test_logits"]) for m in robust]
    ev = np.concatenate([np.mean([cv["oos_probs"][real]] + rob_tr, axis=0), np.mean([test_cv] + rob_te, axis=0)])
    nb_lab = y_tr[real][infl["neighbor_idx"]]  # (N_aug + N_test, 10)
    nb = np.concatenate([nb_lab[:len(run.is_canary)][real], nb_lab[len(run.is_canary):]])
    knn_major = np.array([np.bincount(r, minlength=k).argmax() for r in nb])
    lq_te, score_te, flag_te = _test_scores(run, trained, test_cv, robust)
    given = np.r_[y_tr[real], y_te]
    alt = ev.argmax(1)
    flagged = np.r_[sc.flags, flag_te]
    oos_arg = np.concatenate([cv["oos_probs"][real], test_cv]).argmax(1)
    votes = (oos_arg == alt).astype(int) + (knn_major[:len(given)] == alt).astype(int)
    if robust:
        rob_all = [np.concatenate([a, b]) for a, b in zip(rob_tr, rob_te)]
        votes += np.any([p.argmax(1) == alt for p in rob_all], axis=0).astype(int)
    mem = np.nan_to_num(np.r_[cv["memorization"][real], np.full(len(y_te), np.nan)], nan=0.0)
    cat = _categories(flagged, given, ev, votes, mem, alt)
    return Evidence(given, ev, alt, votes, flagged, mem, cat, nb, lq_te, score_te)


def _test_scores(run: TableContext, trained: dict, test_cv: np.ndarray, robust: list[str]):
    """Test rows: cleanlab on fold-averaged probabilities (test is out-of-sample for every fold)."""
    from audit.signals.util import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    y_te, k = run.test_labels, run.ds.num_classes
    n_te = len(y_te)
    lq = get_label_quality_scores(y_te, test_cv) if n_te else np.zeros(0)
    parts = [rank01(1 - lq)] + [rank01(-margin(trained[m]["test_logits"], y_te)) for m in robust]
    score = rank01(np.mean(parts, axis=0)) if n_te else np.zeros(0)
    flags = np.zeros(n_te, bool)
    if n_te > 2 * k and len(np.unique(y_te)) == k:
        flags = find_label_issues(y_te, test_cv)
    return lq, score, flags


def build_tables(run: TableContext, trained: dict, cv: dict, infl: dict, issues: dict | None = None) -> Tables:
    """examples.parquet, pairs.parquet and dynamics.npz as tables, with metrics and manifest extras.
    ``issues``: the ``issues`` stage's arrays (:func:`audit.issues.find_issues`, dataset order); their
    columns join every row by ``example_id`` and their summary goes to the manifest's ``issue_types``."""
    sc = score_training(run, trained, cv, infl)
    ev = gather_evidence(run, trained, cv, infl, sc)
    df = _base_columns(run, sc, ev)
    _model_columns(df, run, trained)
    _signal_columns(df, run, trained, cv, infl, sc, ev)
    df = _with_canary_sources(df, run, trained, cv, infl, sc)
    extra = _selection_record(run, sc)
    if issues is not None:
        df, extra["issue_types"] = _issue_columns(df, run, issues)
    pairs = _pairs_table(run, infl)
    metrics = _metrics(df, run, trained, sc, len(pairs))
    meta = {"class_names": list(run.ds.class_names), "dataset": run.ds.spec, "config_hash": run.config_hash,
            "models": list(run.models), "fingerprint": run.fingerprint}
    real = ~run.is_canary
    dyn = {"example_ids": run.ds.example_ids[run.train_rows].astype(str), "models": np.array(run.models)}
    for m in list(run.models) + (["aug"] if "aug" in trained else []):
        dyn[f"margin_{m}"] = trained[m]["margin"][:, real].astype(np.float16)
        dyn[f"correct_{m}"] = trained[m]["correct"][:, real]
    return Tables(df, pairs, dyn, metrics, extra, meta)


def _issue_columns(df: pd.DataFrame, run: TableContext, issues: dict) -> tuple[pd.DataFrame, dict]:
    """The issue types' columns (:func:`audit.issues.issue_columns`) on each row by ``example_id``, and
    the manifest's ``issue_types``."""
    from audit.issues import issue_columns, issue_summary

    ds = run.ds
    cols = issue_columns(issues, example_ids=ds.example_ids, labels=ds.labels, class_names=ds.class_names)
    pos = pd.Index(ds.example_ids.astype(str)).get_indexer(df["example_id"])
    if (pos < 0).any():
        raise ValueError(f"issue types: {int((pos < 0).sum())} table rows have no dataset row")
    new = pd.DataFrame({k: v[pos] for k, v in cols.items()}, index=df.index)
    return pd.concat([df, new], axis=1), issue_summary(issues, ds.class_names)


def _base_columns(run: TableContext, sc: Scores, ev: Evidence) -> pd.DataFrame:
    ds, rows = run.ds, np.r_[run.train_rows, run.test_rows]
    df = pd.DataFrame({
        "example_id": ds.example_ids[rows].astype(str),
        "split": ds.split[rows].astype(str),
        "index": ds.index[rows].astype(np.int64),
        "given_label": ev.given.astype(np.int64),
        "suggested_label": ev.alt.astype(np.int64),
        "issue_score": np.r_[sc.score, ev.test_score].astype(np.float64),
        "is_label_issue": ev.flagged,
        "category": ev.category,
    })
    if ds.paths is not None:
        df["path"] = np.asarray(ds.paths)[rows].astype(str)
    return df


def _model_columns(df: pd.DataFrame, run: TableContext, trained: dict) -> None:
    """Per model M: pred_M, correct_M, loss_M, margin_M, adv_correct_M (test), aum/forgetting/first_learned (train)."""
    real, given = ~run.is_canary, df["given_label"].to_numpy()
    n_tr = int(real.sum())
    for m in run.models:
        lg = np.concatenate([trained[m]["train_logits"][real], trained[m]["test_logits"]])
        pred, p = lg.argmax(1), softmax(lg)
        df[f"pred_{m}"] = pred.astype(np.int64)
        df[f"correct_{m}"] = pred == given
        df[f"loss_{m}"] = -np.log(np.clip(p[np.arange(len(given)), given], 1e-12, None))
        df[f"margin_{m}"] = margin(lg, given)
        for col, key in (("adv_correct", "adv_correct_test"), ("apgd_correct", "apgd_correct_test")):
            if key in trained[m]:
                adv = np.full(len(given), None, dtype=object)
                adv[n_tr:] = trained[m][key]
                df[f"{col}_{m}"] = pd.array(adv, dtype="boolean")
        dyn = _dynamics(trained[m])
        for k in ("aum", "forgetting", "first_learned"):
            col = _train_only(dyn[k][real], len(given))
            df[f"{k}_{m}"] = col if k == "aum" else _nullable_int(col)


def _train_only(values: np.ndarray, n: int) -> np.ndarray:
    """A training-rows column padded with NaN for the test rows."""
    col = np.full(n, np.nan)
    col[:len(values)] = values
    return col


def _signal_columns(df, run: TableContext, trained, cv, infl, sc: Scores, ev: Evidence) -> None:
    from audit.signals.util import find_label_issues

    real, n, k = ~run.is_canary, len(df), run.ds.num_classes
    n_tr, y_tr = int(real.sum()), run.train_labels[real]
    df["steps_to_flip"] = _nullable_int(_train_only(trained["natural"]["steps_to_flip"][real], n))
    df["self_influence"] = _train_only(infl["self_influence"][real], n)
    for name in ("memorization", "memorization_se", "memorization_soft", "cv_aum"):
        df[name] = _train_only(cv[name][real], n)
    if "aug" in trained:
        df["aum_aug"] = _train_only(-sc.signals["aum_aug"][real], n)
    df["label_quality"] = np.r_[1.0 - sc.signals["cleanlab"][real], ev.test_quality]  # cleanlab signal = 1 − quality
    if "given_cleanlab" in sc.signals:
        df["given_label_quality"] = np.r_[1.0 - sc.signals["given_cleanlab"][real], _given_test_quality(run)]
    fired = np.zeros((n, 0), bool)
    for name, v in sc.signals.items():  # every signal in the detector shape: <name>_score, is_<name>_issue
        df[f"{name}_score"] = _train_only(v[real], n)
        iss = np.zeros(n, bool)
        if name == "cleanlab":  # cleanlab's own decision, the documented baseline workflow
            iss[:n_tr] = find_label_issues(y_tr, cv["oos_probs"][real]) if n_tr > k else False
        elif name == "given_cleanlab":  # cleanlab's own decision on the user's probabilities
            iss[:n_tr] = find_label_issues(y_tr, run.given_train_probs()[real]) if n_tr > k else False
        elif sc.n_issues:
            iss[np.argsort(-v[real], kind="stable")[:sc.n_issues]] = True
        df[f"is_{name}_issue"] = iss
        fired = np.column_stack([fired, iss])
    names = list(sc.signals)
    df["signals_fired"] = [",".join(nm for nm, f in zip(names, r) if f) for r in fired]
    robust = [m for m in run.models if m != "natural"]
    nat_fit = df["correct_natural"].to_numpy(bool)
    df["natural_fit_robust_miss"] = nat_fit & np.any([~df[f"correct_{m}"].to_numpy(bool) for m in robust], axis=0) \
        if robust else np.zeros(n, bool)
    df["category_reason"] = _category_reasons(ev.category, ev.given, ev.alt, ev.probs, ev.votes, ev.memorization,
                                              run.ds.class_names)
    nb_ids = run.ds.example_ids[run.train_rows][infl["neighbor_idx"]]
    nb_ids = np.concatenate([nb_ids[:len(run.is_canary)][real], nb_ids[len(run.is_canary):]])
    df["neighbor_ids"] = [list(map(str, r)) for r in nb_ids]
    df["neighbor_labels"] = [list(map(int, r)) for r in ev.neighbor_labels]
    df["evidence_confidence"] = ev.probs.max(1)
    if run.ds.clean_labels is not None:
        df["clean_label"] = run.ds.clean_labels[np.r_[run.train_rows, run.test_rows]].astype(np.int64)
        df["is_injected_noise"] = df["clean_label"].to_numpy() != df["given_label"].to_numpy()


def _given_test_quality(run: TableContext) -> np.ndarray:
    """cleanlab label quality of --pred-probs on the test rows it covers (NaN elsewhere)."""
    from cleanlab.rank import get_label_quality_scores

    te = run.test_rows
    out = np.full(len(te), np.nan)
    cov = run.given_probs.covered[te]
    if cov.any():
        out[cov] = get_label_quality_scores(run.test_labels[cov], run.given_probs.values[te][cov].astype(np.float64))
    return out


def _with_canary_sources(df: pd.DataFrame, run: TableContext, trained: dict, cv: dict, infl: dict,
                         sc: Scores) -> pd.DataFrame:
    """Add the rows whose images trained as canaries, so every example has its row.

    They are audited by what stays valid when a row's image trained with another label: its
    out-of-sample probabilities (the folds that held it out never saw it), the robust models'
    predictions and its neighbours. Their ``issue_score`` is the combined score at the percentile of
    their out-of-sample label quality among the audited rows; the other signals are NaN.
    """
    from cleanlab.rank import get_label_quality_scores

    df["held_out_as_canary"] = False
    can, k, ds = run.is_canary, run.ds.num_classes, run.ds
    rows = run.source_rows
    if not len(rows):
        return df
    given = ds.labels[rows].astype(np.int64)
    robust = run.robust  # healthy robust models only
    oos = cv["oos_probs"][can]
    probs = np.mean([oos] + [softmax(trained[m]["train_logits"][can]) for m in robust], axis=0)
    alt = probs.argmax(1)
    nb_pos = infl["neighbor_idx"][:len(can)][can]
    nb_lab = run.train_labels[~can][nb_pos]
    votes = (oos.argmax(1) == alt).astype(int) + (np.array([np.bincount(r, minlength=k).argmax() for r in nb_lab]) == alt)
    if robust:
        votes += np.any([trained[m]["train_logits"][can].argmax(1) == alt for m in robust], axis=0).astype(int)
    lq = get_label_quality_scores(given, oos)
    audited = np.sort(sc.signals["cleanlab"][~can])
    pct = np.searchsorted(audited, 1.0 - lq, side="right") / max(1, len(audited))
    score = np.quantile(sc.score, np.clip(pct, 0, 1)) if len(sc.score) else np.zeros(len(rows))
    cut = sc.score[sc.flags].min() if sc.flags.any() else np.inf
    flagged = score >= cut
    cat = _categories(flagged, given, probs, votes, np.zeros(len(rows)), alt)
    reasons = _category_reasons(cat, given, alt, probs, votes, np.zeros(len(rows)), ds.class_names)
    note = "held out as a canary this run (scored by out-of-sample label quality only; rerun with another --seed)"
    new = {"example_id": ds.example_ids[rows].astype(str), "split": ds.split[rows].astype(str),
           "index": ds.index[rows].astype(np.int64), "given_label": given, "suggested_label": alt.astype(np.int64),
           "issue_score": score.astype(np.float64), "is_label_issue": flagged, "category": cat,
           "label_quality": lq, "cleanlab_score": 1.0 - lq, "evidence_confidence": probs.max(1),
           "category_reason": [f"{r}; {note}" if r else note for r in reasons], "held_out_as_canary": True,
           "neighbor_ids": [list(map(str, r)) for r in ds.example_ids[run.train_rows][nb_pos]],
           "neighbor_labels": [list(map(int, r)) for r in nb_lab], "signals_fired": ""}
    if ds.paths is not None:
        new["path"] = np.asarray(ds.paths)[rows].astype(str)
    if run.given_probs is not None:
        glq = get_label_quality_scores(given, run.given_probs.values[rows].astype(np.float64))
        new.update(given_label_quality=glq, given_cleanlab_score=1.0 - glq)
    for m in run.models:
        lg = trained[m]["train_logits"][can]
        p = softmax(lg)
        new.update({f"pred_{m}": lg.argmax(1).astype(np.int64), f"correct_{m}": lg.argmax(1) == given,
                    f"loss_{m}": -np.log(np.clip(p[np.arange(len(given)), given], 1e-12, None)),
                    f"margin_{m}": margin(lg, given)})
    if ds.clean_labels is not None:
        new["clean_label"] = ds.clean_labels[rows].astype(np.int64)
        new["is_injected_noise"] = new["clean_label"] != given
    return _append_rows(df, pd.DataFrame(new), robust)


def _append_rows(df: pd.DataFrame, extra: pd.DataFrame, robust: list[str]) -> pd.DataFrame:
    """``extra``'s rows into ``df`` with df's columns and dtypes (missing values: NaN, NA or False),
    training rows first, each split in dataset order."""
    for c in df.columns:
        if c in extra:
            continue
        kind = df[c].dtype
        extra[c] = (False if kind == bool else pd.array([pd.NA] * len(extra), dtype=kind)
                    if isinstance(kind, pd.api.extensions.ExtensionDtype) else
                    [[] for _ in range(len(extra))] if c.startswith("neighbor_") else np.nan)
    if robust:
        extra["natural_fit_robust_miss"] = extra["correct_natural"] & np.any(
            [~extra[f"correct_{m}"].to_numpy(bool) for m in robust], axis=0)
    out = pd.concat([df, extra[df.columns].astype(df.dtypes.to_dict())], ignore_index=True)
    order = np.lexsort((out["index"].to_numpy(), (out["split"] != "train").to_numpy()))
    return out.iloc[order].reset_index(drop=True)


def _pairs_table(run: TableContext, infl: dict) -> pd.DataFrame:
    te_ids, tr_ids = run.ds.example_ids[run.test_rows], run.ds.example_ids[run.train_rows]
    return pd.DataFrame({
        "test_id": te_ids[infl["pair_query"]].astype(str),
        "train_id": tr_ids[infl["pair_train"]].astype(str),
        "rank": infl["pair_rank"].astype(np.int32),
        "similarity": infl["pair_similarity"].astype(np.float64),
        "influence": infl["pair_influence"].astype(np.float64),
        "fz_influence": infl["pair_fz_influence"].astype(np.float64),
        "fz_influence_se": infl["pair_fz_influence_se"].astype(np.float64),
        "reason": infl["pair_reason"].astype(str),
    })


def _metrics(df: pd.DataFrame, run: TableContext, trained: dict, sc: Scores, n_pairs: int) -> dict:
    tr, te = (df["split"] == "train").to_numpy(), (df["split"] == "test").to_numpy()
    flags = df["is_label_issue"].to_numpy(bool)
    metrics: dict = {"num_flagged_train": int(flags[tr].sum()), "num_flagged_test": int(flags[te].sum()),
                     "estimated_noise_rate": sc.n_issues / max(1, int((~run.is_canary).sum())),
                     "num_pairs": int(n_pairs), "num_canary_sources": int(df["held_out_as_canary"].sum())}
    for m in run.models:
        metrics[f"{m}_train_accuracy"] = float(df[f"correct_{m}"][tr & ~df["held_out_as_canary"]].mean())
        metrics[f"{m}_test_accuracy"] = float(df[f"correct_{m}"][te].mean()) if te.any() else float("nan")
        metrics[f"{m}_test_adv_accuracy"] = float(trained[m]["adv_correct_test"].mean()) if te.any() else float("nan")
        if "apgd_correct_test" in trained[m]:
            metrics[f"{m}_test_apgd_accuracy"] = float(trained[m]["apgd_correct_test"].mean()) if te.any() else float("nan")
    if "aug" in trained:
        metrics["aug_test_accuracy"] = float(trained["aug"]["test_accuracy"])
    if run.ds.clean_labels is not None:
        truth, score = df["is_injected_noise"].to_numpy(bool)[tr], df["issue_score"].to_numpy()[tr]
        metrics.update({f"noise_{k}": v for k, v in detection_metrics(score, truth).items()})
        tp = int((flags[tr] & truth).sum())
        metrics["noise_precision"] = tp / max(1, int(flags[tr].sum()))
        metrics["noise_recall"] = tp / max(1, int(truth.sum()))
        fit = df["correct_natural"].to_numpy(bool)[tr & ~df["held_out_as_canary"].to_numpy(bool)]
        t_fit = df["is_injected_noise"].to_numpy(bool)[tr & ~df["held_out_as_canary"].to_numpy(bool)]
        metrics["natural_fits_noise"] = float(fit[t_fit].mean()) if t_fit.any() else float("nan")
    return metrics


def _selection_record(run: TableContext, sc: Scores) -> dict:
    combo, c_w = sc.combo, sc.canary_weight
    canary = {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in combo["canary"].items()}
    flag = {k: v for k, v in sc.flagging.items() if k != "excluded_signals"}
    return {"flagging": flag, "signal_selection": {
        "rule": "lowest rank sum over three canary AUPRCs (negatives: real rows outside the consensus top n; "
                "outside the candidate's own top n; every real row weighted by 1 - the share of candidates "
                "flagging it) among single signals and mean ranks of the best 2-4, canaries weighted by "
                "cleanlab's estimated noise transitions, leaving out the signals the canaries cannot judge ("
                + ", ".join(sc.not_judged) + "); is_label_issue = top n by issue_score, "
                "n = min(cleanlab confident-joint estimate, robust training errors)",
        "chosen": combo["chosen"], "members": combo["members"], "canary_scores": canary,
        "not_eligible": [k for k in sc.not_judged if k in canary],
        "candidate_members": combo.get("candidate_members", {}),
        "candidates": {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in combo.get("candidates", {}).items()},
        "num_canaries": int(run.is_canary.sum()), "num_label_issues": sc.n_issues,
        "excluded_unhealthy": sc.flagging.get("excluded_signals", []),
        "canary_weight_range": [round(float(c_w.min()), 3), round(float(c_w.max()), 3)] if len(c_w) else [],
        **({"aum_aug_window": sc.aug_window} if sc.aug_window else {})}}


def _dynamics(arr: dict) -> dict[str, np.ndarray]:
    from audit.train.engine import summarize_dynamics

    return summarize_dynamics(arr["margin"].astype(np.float32), arr["correct"], arr["loss"].astype(np.float32))


def _nullable_int(col: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """float array with NaN for 'not applicable' -> pandas nullable Int64."""
    return pd.array(np.where(np.isnan(col), None, col).tolist(), dtype="Int64")
