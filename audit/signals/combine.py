"""One ``issue_score`` from many signals, chosen by evidence on the data at hand (the canaries).

Every signal is oriented so that higher = more likely mislabelled and turned into a rank percentile
in [0, 1]. Candidate scores are each signal alone and the mean rank of the best 2, 3 and 4 signals
(ordered by how well they rank the canaries). Each candidate's canary AUPRC is measured three ways,
differing in which real rows count as negatives (see :func:`choose_combination`); the candidate with the
lowest sum of its ranks under the three wins, ties to the simpler one. ``is_label_issue`` flags the top
n examples (see :func:`audit.signals.table.n_label_issues`).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score


def rank01(x: np.ndarray) -> np.ndarray:
    """Average-rank percentile in [0, 1] (ties share a rank, :func:`scipy.stats.rankdata`); NaN counts as lowest."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=-np.inf)
    n = len(x)
    if n <= 1:
        return np.zeros(n)
    return (rankdata(x, method="average") - 1.0) / (n - 1)


def detection_metrics(score: np.ndarray, truth: np.ndarray, weight: np.ndarray | None = None) -> dict[str, float]:
    truth = np.asarray(truth, bool)
    if truth.all() or not truth.any():
        return {"auroc": float("nan"), "auprc": float("nan")}
    return {"auroc": float(roc_auc_score(truth, score, sample_weight=weight)),
            "auprc": float(average_precision_score(truth, score, sample_weight=weight))}


def choose_combination(signals: dict[str, np.ndarray], is_canary: np.ndarray, n_exclude: int = 0,
                       ineligible: tuple[str, ...] = (), canary_weight: np.ndarray | None = None) -> dict:
    """signals: name -> (N,) raw scores (higher = worse) over training rows *including* canaries.

    Canaries are scored against the real rows minus the ``n_exclude`` that the consensus of all
    signals (their mean rank) puts on top: those are probably real label noise, and counting them as
    negatives would reward a signal for *missing* real noise (its canaries then meet less
    competition). That consensus view charges a candidate better than the consensus for the real
    noise only it finds, so each candidate is also scored against the real rows minus *its own* top
    ``n_exclude`` (``self_auprc``) and with each real row weighted by 1 − the share of candidates that
    put it in their own top ``n_exclude`` (``soft_auprc``). The candidate with the lowest sum of its
    ranks under the three AUPRCs is chosen (ties to the simpler), a rule chosen on development seeds and
    confirmed on fresh ones (README, "selection rules"). ``canary_weight`` (one per canary, mean 1)
    makes canaries that look like the real noise count more (see :func:`canary_weights`). Signals in
    ``ineligible`` are scored and reported but never chosen: the canaries cannot judge them fairly
    (``canary_judged=False`` in :mod:`audit.signals.registry`). Returns
    ``{"score": (N,) in [0, 1], "chosen": name, "members": [...], "canary": {name: metrics},
    "candidates": {name: metrics}, "candidate_members": {name: [...]}}`` (see :func:`candidates`).
    """
    ranks = {k: rank01(v) for k, v in signals.items()}
    use = np.ones(len(is_canary), bool)
    if n_exclude > 0:
        consensus = np.mean(list(ranks.values()), axis=0)
        real = np.flatnonzero(~is_canary)
        use[real[np.argsort(-consensus[real], kind="stable")[:n_exclude]]] = False
    w = np.ones(len(is_canary))
    if canary_weight is not None:
        w[is_canary] = canary_weight
    per_signal = {k: detection_metrics(r[use], is_canary[use], w[use]) for k, r in ranks.items()}
    if not is_canary.any():
        # No canaries (tiny data): fall back to a fixed, documented preference order.
        order = [k for k in ("cleanlab", "aum_natural", "memorization") if k in ranks] or list(ranks)
        return {"score": ranks[order[0]], "chosen": order[0], "members": [order[0]], "canary": per_signal}
    pool = [k for k in ranks if k not in ineligible] or list(ranks)
    order = sorted(pool, key=lambda k: -np.nan_to_num(per_signal[k]["auprc"], nan=-1))
    cands = candidates(ranks, order)
    scored = {name: detection_metrics(s[use], is_canary[use], w[use]) for name, (_, s) in cands.items()}
    simplicity = {name: len(members) for name, (members, _) in cands.items()}
    names = list(cands)
    for name, auprc in zip(names, _self_and_soft_auprc(cands, is_canary, w, n_exclude)):
        scored[name].update(self_auprc=auprc[0], soft_auprc=auprc[1])
    total = sum(rankdata([-np.nan_to_num(scored[k][m], nan=-1) for k in names], method="average")
                for m in ("auprc", "self_auprc", "soft_auprc"))
    for name, t in zip(names, total):
        scored[name]["rank_sum"] = float(t)
    best = min(names, key=lambda k: (scored[k]["rank_sum"], simplicity[k]))
    members, s = cands[best]
    return {"score": rank01(s), "chosen": best, "members": members, "canary": per_signal,
            "candidates": scored, "candidate_members": {k: m for k, (m, _) in cands.items()}}


def _own_tops(cands: dict, is_canary: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Per candidate: the indices of its own top ``n`` real (non-canary) rows."""
    real = np.flatnonzero(~is_canary)
    return {name: real[np.argsort(-s[real], kind="stable")[:n]] for name, (_, s) in cands.items()}


def soft_weights(cands: dict, is_canary: np.ndarray, n: int) -> np.ndarray:
    """Per row: 1 − the share of candidates with the row in their own top ``n`` real rows (canaries: 1)."""
    votes = np.zeros(len(is_canary))
    for top in _own_tops(cands, is_canary, n).values():
        votes[top] += 1
    return np.where(is_canary, 1.0, 1.0 - votes / max(1, len(cands)))


def _self_and_soft_auprc(cands: dict, is_canary: np.ndarray, w: np.ndarray, n: int) -> list[tuple[float, float]]:
    """Per candidate (in order): canary AUPRC against the real rows minus its own top ``n``, and with
    each real row weighted by :func:`soft_weights`."""
    tops = _own_tops(cands, is_canary, n)
    soft = soft_weights(cands, is_canary, n) * w
    keep = soft > 0
    out = []
    for name, (_, s) in cands.items():
        use = np.ones(len(is_canary), bool)
        use[tops[name]] = False
        out.append((detection_metrics(s[use], is_canary[use], w[use])["auprc"],
                    detection_metrics(s[keep], is_canary[keep], soft[keep])["auprc"]))
    return out


def candidates(ranks: dict[str, np.ndarray], order: list[str]) -> dict[str, tuple[list[str], np.ndarray]]:
    """The scores the selector chooses among: each signal of ``order`` alone (its rank percentile) and
    ``mean_top{m}``, the mean rank of the first m = 2, 3, 4 of ``order`` (best canary AUPRC first).
    Returns name -> (members, score)."""
    out = {k: ([k], ranks[k]) for k in order}
    for m in (2, 3, 4):
        if len(order) >= m:
            out[f"mean_top{m}"] = (order[:m], np.mean([ranks[k] for k in order[:m]], axis=0))
    return out


def canary_weights(noise_joint: np.ndarray, given: np.ndarray, source: np.ndarray, floor: float = 0.25) -> np.ndarray:
    """Weights (mean 1) that make the canaries look like the real noise.

    Canaries get uniformly random wrong labels, but real noise is often structured (a class confused
    with one other class), and a signal that finds random flips can miss structured ones: on
    Fashion-MNIST with pair noise, cleanlab ranked the canaries well (0.87) and the real noise badly
    (0.60). ``noise_joint`` is cleanlab's estimate of P(given label = i, true label = j) on the real
    rows; a canary relabelled from class ``source`` to ``given`` is weighted by that transition's share
    of the estimated noise, plus ``floor`` × the average so that no canary drops out entirely.
    """
    off = np.asarray(noise_joint, np.float64).copy()
    np.fill_diagonal(off, 0.0)
    if off.sum() <= 0 or len(given) == 0:
        return np.ones(len(given))
    raw = off[given, source]
    raw = raw / max(raw.mean(), 1e-12)
    w = raw + floor
    return w / w.mean()
