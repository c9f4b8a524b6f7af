"""A calibrated review queue: how many label errors are left among the flagged training examples, how
many the next reviews will find, how many the flags miss, and when reviewing further stops paying.

Every effective decision on a training example is an observation: ``keep`` says the flag was wrong,
``relabel`` / ``remove`` say it was right (``skip`` and undone decisions are not decisions).

**Flagged set.** The flagged training examples, in queue order (``issue_score`` high to low, ties by
``example_id``, as the app's queue), are cut into score bands (:func:`review_edges`): the densely
reviewed head of the queue (the longest prefix of which at least 90% is reviewed: what a reviewer who
works down the queue has done) and the rest are banded apart, each in equal-count bands of at least 15
and at most 40 bands over the whole queue. In band ``b`` the share of real errors (the precision of the
flags there) is ``p_b``; the ``m_b`` reviewed examples of the band give a Binomial likelihood
``k_b ~ Bin(m_b, p_b)``. The prior pools the bands: the log-odds follow a random walk with a downward
drift along the queue (flags lower in the queue are less often right), ``logit p_{b+1} = logit p_b +
D·t + S·sqrt(t)·N(0, 1)`` where ``t`` is the distance between the bands' centres as a share of the queue,
with a weak prior on the top band (``N(2, 2²)``) and a weaker one on the band at the flag threshold
(``N(0, 2.5²)``: the cut-off sits about where an example is as likely wrong as right, but the flags'
precision there may be anything from 0.01 to 0.99). The total drift ``D`` and spread ``S`` are inferred
from the reviews over a small grid (a hierarchical model). So a band with many reviews is estimated from
its own reviews, a band with none borrows from its neighbours, and a band far from any review is wide.
Everything is exact on a grid of log-odds (forward filtering, backward sampling), no MCMC.

Why the head is banded apart (issue #22, item 12): with equal-count bands capped at 12, a queue of
8,000 flags has bands of 667; a reviewer who worked down the top few hundred reviewed the *top* of the
first band, whose precision is higher than the rest of that band's, and the band's posterior, made
narrow by hundreds of reviews, was applied to the hundreds of unreviewed examples below them: a
confident, biased count (coverage 0.77). With the narrow bottom prior (``N(0, 1.2²)``) the estimate was
also pulled towards precision 0.5 at the threshold wherever few random checks said otherwise.

The errors left in the unreviewed flagged examples are drawn as ``sum_b Bin(u_b, p_b)`` over joint
posterior draws of the ``p_b`` (``u_b``: unreviewed examples of band ``b``); the 90% interval is the
5%–95% quantiles of those draws. The errors in the next 50 are the same sum over the next 50
unreviewed examples in queue order.

**Calibration target.** The nominal 90% interval of the errors left covers the true count in at least
88% of simulated review sessions in every scenario family: flags 100–10,000, reviews 20–500, flag
precision 5–95% falling down the queue by 0–5 in log-odds, reviewed in queue order (top first), at
random, or as the app's protocol (the top of the queue plus 5–25 random checks). Measured by
``python benchmarks/calibration_coverage.py`` (``benchmarks/results/calibration_coverage.csv``):
40 sessions per family (flag range × order), 1,000 draws: mean coverage over the four flag ranges
0.99 in queue order (old: 0.86), 0.94 with the app's protocol (old: 0.88; 0.85 at 3,000–10,000 flags,
now 0.97), 0.91 at random (unchanged); widths as a share of the unreviewed flags 0.52 (old 0.45), 0.32
(0.31), 0.18 (0.18). Not yet shown in every family: random order at 300–1,000 flags gave 0.82 (90%
Wilson interval over its 40 sessions 0.71–0.90, the same as the old method's 0.85).
``tests/test_calibration.py`` checks 200 seeded synthetic sessions (coverage at least 0.85, see there
for the slack). Reviewing in queue order only, without random checks, the unreviewed rest of the queue
is known only through the prior and the drift: the interval is honest but wide (about half the
unreviewed count); the random checks are what narrow it.

**Unflagged set.** A seeded random sample of unflagged training examples (:func:`unflagged_sample`),
reviewed like any other, estimates their error rate (Jeffreys prior ``Beta(1/2, 1/2)``), hence the
errors the flags miss and the recall of the flags, with an interval from the same draws.

**Stop rule.** Reviewing further is unlikely to pay when the expected errors in the next 50 fall
below a threshold (default 5: fewer than one error in ten reviews).

Pure numpy/scipy; :func:`review_state` reads a run directory, the rest works on plain tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit, logsumexp
from scipy.stats import norm

ERROR_DECISIONS = ("relabel", "remove")  # the flag was right
CLEAN_DECISIONS = ("keep",)  # the flag was wrong
GRID = np.linspace(-7.0, 7.0, 141)  # log-odds grid of a band's precision
TOTAL_DRIFTS = (0.0, -1.0, -2.5, -5.0)  # log-odds change from the top band to the bottom one
TOTAL_STEPS = (0.5, 1.5, 3.0)  # random-walk spread over the whole queue (per band: / sqrt(bands - 1))
TOP_PRIOR = (2.0, 2.0)  # mean, sd of the top band's log-odds
BOTTOM_PRIOR = (0.0, 2.5)  # mean, sd of the bottom band's log-odds (the flag threshold); was 1.2
BAND_SIZE = 15  # fewest examples in a band
MAX_BANDS = 40  # most bands over the whole queue (was 12: the band cap)
HEAD_SHARE = 0.9  # a prefix at least this much reviewed is the reviewed head, banded apart


@dataclass
class BandEstimate:
    """One score band of the flagged queue."""

    band: int
    score_high: float
    score_low: float
    size: int
    reviewed: int
    errors: int
    precision: float  # posterior mean
    precision_low: float
    precision_high: float


@dataclass
class QueueEstimate:
    """Errors left among the unreviewed flagged training examples, and what the next reviews will find."""

    flagged: int
    reviewed: int
    confirmed_errors: int
    remaining: float  # posterior median of errors left among the unreviewed flagged examples
    remaining_low: int
    remaining_high: int
    unreviewed: int
    next_n: int
    next_expected: float
    next_low: int
    next_high: int
    stop: bool
    stop_below: float
    level: float
    bands: list[BandEstimate] = field(default_factory=list)

    def lines(self) -> list[str]:
        pct = f"{round(self.level * 100)}%"
        if self.flagged == 0:
            return ["No training example is flagged: nothing to review in the queue."]
        out = [(f"{self.reviewed} of {self.flagged} flagged training examples reviewed; "
               f"{self.confirmed_errors} confirmed label errors.")]
        if self.unreviewed == 0:
            out.append("Every flagged example is reviewed: no label errors are left in the flagged set.")
            return out
        out.append(f"About {self.remaining:.0f} label errors left in the {self.unreviewed} unreviewed flagged examples "
                   f"({pct} interval {self.remaining_low}–{self.remaining_high}).")
        out.append(f"Expected errors in the next {self.next_n}: {self.next_expected:.1f} "
                   f"({pct} interval {self.next_low}–{self.next_high}).")
        if self.stop:
            out.append(f"Reviewing further is unlikely to pay: fewer than {self.stop_below:g} errors expected "
                       f"in the next {self.next_n}.")
        else:
            out.append(f"Reviewing further pays: at least {self.stop_below:g} errors expected in the next {self.next_n}.")
        return out


@dataclass
class RecallEstimate:
    """Errors the flags miss, from a random sample of unflagged training examples a reviewer checked."""

    unflagged: int
    sample_size: int
    sample_reviewed: int
    sample_errors: int
    missed: float  # posterior median of label errors among the unflagged training examples
    missed_low: int
    missed_high: int
    recall: float
    recall_low: float
    recall_high: float
    level: float

    def lines(self) -> list[str]:
        pct = f"{round(self.level * 100)}%"
        if self.sample_reviewed == 0:
            return [(f"Review the {self.sample_size} randomly drawn unflagged examples to estimate how many errors "
                    f"the flags miss.")]
        return [(f"{self.sample_errors} label errors in {self.sample_reviewed} randomly drawn unflagged examples "
                f"reviewed."),
                (f"About {self.missed:.0f} label errors among the {self.unflagged} unflagged training examples "
                f"({pct} interval {self.missed_low}–{self.missed_high}): the flags catch about "
                f"{self.recall:.0%} of the errors ({pct} interval {self.recall_low:.0%}–{self.recall_high:.0%}).")]


# -- tables -> arrays ------------------------------------------------------------------------------
def queue_order(examples: pd.DataFrame) -> pd.DataFrame:
    """The flagged training rows in the app's queue order: ``issue_score`` high to low, ties by id."""
    df = examples[(examples["split"] == "train") & examples["is_label_issue"].astype(bool)]
    key = np.nan_to_num(df["issue_score"].to_numpy(float), nan=-np.inf)
    order = np.lexsort((df["example_id"].to_numpy().astype(str), -key))
    return df.iloc[order].reset_index(drop=True)


def outcomes(ids: pd.Series, decisions: pd.DataFrame) -> np.ndarray:
    """Per id: 1 = the reviewer found a label error (relabel/remove), 0 = kept, -1 = no decision.
    ``decisions``: :meth:`audit.decisions.DecisionStore.latest` (``example_id``, ``decision``)."""
    dec = pd.Series(decisions["decision"].to_numpy(), index=decisions["example_id"].astype(str))
    d = ids.astype(str).map(dec)
    return np.where(d.isin(ERROR_DECISIONS), 1, np.where(d.isin(CLEAN_DECISIONS), 0, -1)).astype(np.int8)


def band_edges(n: int, band_size: int = 15, max_bands: int = 12) -> np.ndarray:
    """Equal-count bands over ``n`` queue positions: edges (B + 1,), at least 2 bands when n ≥ 2."""
    b = int(np.clip(round(n / band_size), min(2, n), max_bands)) if n else 0
    return np.linspace(0, n, b + 1).round().astype(int)


def reviewed_head(reviewed: np.ndarray, share: float | None = None) -> int:
    """Length of the densely reviewed head of the queue: the longest prefix of which at least
    ``HEAD_SHARE`` is reviewed (0 when none is)."""
    share = HEAD_SHARE if share is None else share
    reviewed = np.asarray(reviewed, bool)
    if not len(reviewed):
        return 0
    dense = np.flatnonzero(np.cumsum(reviewed) >= share * np.arange(1, len(reviewed) + 1) - 1e-9)
    return int(dense[-1] + 1) if len(dense) else 0


def review_edges(reviewed: np.ndarray, band_size: int = BAND_SIZE, max_bands: int = MAX_BANDS) -> np.ndarray:
    """Band edges (B + 1,) for a queue with review marks: the densely reviewed head
    (:func:`reviewed_head`) and the rest are banded apart, each in equal-count bands of at least
    ``band_size`` and at most ``max_bands`` over the whole queue."""
    reviewed = np.asarray(reviewed, bool)
    n = len(reviewed)
    if n == 0:
        return np.zeros(1, int)
    size = max(band_size, n / max_bands)
    head = reviewed_head(reviewed)
    cuts = [0, head, n] if 0 < head < n else [0, n]
    edges = [0]
    for a, b in zip(cuts[:-1], cuts[1:]):
        nb = max(1, int(round((b - a) / size)))
        if len(cuts) == 2:
            nb = min(max(nb, min(2, n)), n)
        edges.extend(np.linspace(a, b, nb + 1).round().astype(int)[1:].tolist())
    return np.unique(np.asarray(edges, int))


# -- the model -------------------------------------------------------------------------------------
def _log_emission(k: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(B, G) log-likelihood of k_b errors in m_b reviews at each grid precision."""
    logp, log1p = -np.logaddexp(0, -GRID), -np.logaddexp(0, GRID)
    return k[:, None] * logp[None] + (m - k)[:, None] * log1p[None]


@lru_cache(maxsize=256)
def _transition_cached(drift: float, step: float) -> np.ndarray:
    t = np.exp(-0.5 * ((GRID[None, :] - GRID[:, None] - drift) / step) ** 2)
    t = t / t.sum(1, keepdims=True)
    t.setflags(write=False)
    return t


def _transition(drift: float, step: float) -> np.ndarray:
    """(G, G) random-walk transition matrix on the log-odds grid, rows sum to 1."""
    return _transition_cached(round(float(drift), 6), round(float(step), 6))


def _forward(log_e: np.ndarray, trans: list) -> tuple[np.ndarray, float]:
    """Filtered probabilities (B, G) of the random walk and the log marginal likelihood (scaled
    forward algorithm); ``trans[i]`` moves band i to band i + 1."""
    log_e = log_e.copy()
    log_e[0] += norm.logpdf(GRID, *TOP_PRIOR)
    log_e[-1] += norm.logpdf(GRID, *BOTTOM_PRIOR)
    shift = log_e.max(1, keepdims=True)
    e = np.exp(log_e - shift)
    alpha = np.empty_like(e)
    a = e[0] / len(GRID)
    total = float(shift.sum())
    for i in range(len(e)):
        if i:
            a = (alpha[i - 1] @ trans[i - 1]) * e[i]
        z = a.sum()
        total += np.log(z)
        alpha[i] = a / z
    return alpha, total


def _backward_sample(alpha: np.ndarray, trans: list, n: int, rng) -> np.ndarray:
    """n joint draws (n, B) of the bands' log-odds grid indices given the filtered probabilities
    (inverse-CDF sampling: per band, the conditional CDFs given each next state drawn, laid end to end,
    and one searchsorted)."""
    b, g = alpha.shape
    out = np.empty((n, b), int)
    c = np.cumsum(alpha[-1])
    out[:, -1] = np.minimum(np.searchsorted(c / c[-1], rng.random(n), side="right"), g - 1)
    for i in range(b - 2, -1, -1):
        states, which = np.unique(out[:, i + 1], return_inverse=True)
        w = np.cumsum(alpha[i][:, None] * trans[i][:, states], 0)  # (G here, next states drawn)
        cdf = w / np.maximum(w[-1:], 1e-300) + np.arange(len(states))[None, :]
        pos = np.searchsorted(cdf.T.ravel(), rng.random(n) + which, side="right")
        out[:, i] = np.minimum(pos - which * g, g - 1)
    return out


def _gaps(centres: np.ndarray | None, b: int) -> np.ndarray:
    """Distances (B - 1,) between neighbouring bands as shares of the span from the first to the last."""
    if centres is None or b < 2:
        return np.full(max(0, b - 1), 1.0 / max(1, b - 1))
    c = np.asarray(centres, float)
    d = np.diff(c)
    return d / max(c[-1] - c[0], 1e-12)


def precision_draws(k: np.ndarray, m: np.ndarray, draws: int = 4000, seed: int = 0,
                    centres: np.ndarray | None = None) -> np.ndarray:
    """Joint posterior draws (draws, B) of the bands' precisions given k_b errors in m_b reviews;
    ``centres``: the bands' positions in the queue (default: evenly spaced)."""
    rng = np.random.default_rng(seed)
    b = len(k)
    log_e = _log_emission(np.asarray(k, float), np.asarray(m, float))
    gaps = _gaps(centres, b)
    hypers = [(d, s) for d in TOTAL_DRIFTS for s in TOTAL_STEPS]
    trans = [[_transition(d * g, s * np.sqrt(g)) for g in gaps] for d, s in hypers]
    fits = [_forward(log_e, t) for t in trans]
    logw = np.array([f[1] for f in fits])
    counts = rng.multinomial(draws, np.exp(logw - logsumexp(logw)))
    idx = [_backward_sample(f[0], t, c, rng) for f, t, c in zip(fits, trans, counts) if c]
    return expit(GRID[np.concatenate(idx)])


def _interval(x: np.ndarray, level: float) -> tuple[int, int]:
    lo, hi = np.quantile(x, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return int(lo), int(hi)


def _bands(outcome: np.ndarray):
    """Band of each queue position, and per band: errors k, reviewed m, unreviewed u."""
    n = len(outcome)
    reviewed = outcome >= 0
    edges = review_edges(reviewed)
    band_of = np.searchsorted(edges, np.arange(n), side="right") - 1
    nb = len(edges) - 1
    k = np.bincount(band_of, weights=outcome == 1, minlength=nb)
    m = np.bincount(band_of, weights=reviewed, minlength=nb)
    u = np.bincount(band_of, weights=~reviewed, minlength=nb).astype(int)
    return edges, band_of, k, m, u


def remaining_draws(outcome: np.ndarray, draws: int = 4000, seed: int = 0,
                    next_n: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior draws for the flagged queue (outcomes in queue order: 1 error, 0 kept, -1 unreviewed):
    the bands' precisions (draws, B), the errors left among the unreviewed (draws,), and the errors
    among the next ``next_n`` unreviewed in queue order (draws,)."""
    outcome = np.asarray(outcome, np.int8)
    edges, band_of, k, m, u = _bands(outcome)
    if len(edges) < 2:
        return np.zeros((draws, 0)), np.zeros(draws, int), np.zeros(draws, int)
    nxt = np.flatnonzero(outcome < 0)[:next_n]
    c = np.bincount(band_of[nxt], minlength=len(k)).astype(int)
    rng = np.random.default_rng(seed + 1)
    p = precision_draws(k, m, draws, seed, (edges[:-1] + edges[1:]) / 2)
    return p, rng.binomial(u[None, :], p).sum(1), rng.binomial(c[None, :], p).sum(1)


def estimate_from_outcomes(outcome: np.ndarray, scores: np.ndarray | None = None, *, next_n: int = 50,
                           level: float = 0.9, stop_below: float = 5.0, draws: int = 4000,
                           seed: int = 0) -> QueueEstimate:
    """The estimate from the flagged examples' outcomes in queue order (1 error, 0 kept, -1 unreviewed);
    ``scores`` (same order) only label the bands."""
    outcome = np.asarray(outcome, np.int8)
    n = len(outcome)
    edges, _, k, m, _u = _bands(outcome)
    p, left, nxt = remaining_draws(outcome, draws, seed, next_n)
    scores = np.full(n, np.nan) if scores is None else np.asarray(scores, float)
    bands = []
    for b in range(len(k)):
        lo, hi = np.quantile(p[:, b], [(1 - level) / 2, (1 + level) / 2])
        s = scores[edges[b]:edges[b + 1]]
        bands.append(BandEstimate(b + 1, float(s[0]), float(s[-1]), int(edges[b + 1] - edges[b]), int(m[b]),
                                  int(k[b]), float(p[:, b].mean()), float(lo), float(hi)))
    n_next = min(next_n, int((outcome < 0).sum()))
    next_expected = float(nxt.mean())
    (r_lo, r_hi), (n_lo, n_hi) = _interval(left, level), _interval(nxt, level)
    return QueueEstimate(
        flagged=n, reviewed=int((outcome >= 0).sum()), confirmed_errors=int((outcome == 1).sum()),
        remaining=float(np.median(left)), remaining_low=r_lo, remaining_high=r_hi,
        unreviewed=int((outcome < 0).sum()), next_n=n_next, next_expected=next_expected, next_low=n_lo,
        next_high=n_hi, stop=bool(next_expected < stop_below), stop_below=stop_below, level=level, bands=bands)


def estimate_queue(examples: pd.DataFrame, decisions: pd.DataFrame, **kwargs) -> QueueEstimate:
    """:func:`estimate_from_outcomes` for a run's ``examples.parquet`` table and its decisions
    (:meth:`audit.decisions.DecisionStore.latest`); ``kwargs`` as there."""
    q = queue_order(examples)
    return estimate_from_outcomes(outcomes(q["example_id"], decisions), q["issue_score"].to_numpy(float), **kwargs)


# -- what the flags miss ---------------------------------------------------------------------------
def random_sample(examples: pd.DataFrame, size: int = 50, seed: int = 0, *, flagged: bool = False) -> list[str]:
    """``size`` training example ids, unflagged (or with ``flagged``, flagged) ones drawn uniformly at
    random, deterministic in ``seed``: the same run and seed always give the same sample in the same
    order, and its first ``j`` ids are a random sample of their own (review them in order)."""
    tr = examples[examples["split"] == "train"]
    ids = np.sort(tr.loc[tr["is_label_issue"].astype(bool) == flagged, "example_id"].to_numpy().astype(str))
    rng = np.random.default_rng(np.random.SeedSequence([seed, len(ids), int(flagged)]))
    return ids[rng.permutation(len(ids))[:max(0, min(size, len(ids)))]].tolist()


def unflagged_sample(examples: pd.DataFrame, size: int = 50, seed: int = 0) -> list[str]:
    """The random sample of unflagged training examples whose review estimates what the flags miss."""
    return random_sample(examples, size, seed, flagged=False)


def estimate_recall(examples: pd.DataFrame, decisions: pd.DataFrame, sample_ids: list[str], *,
                    level: float = 0.9, draws: int = 4000, seed: int = 0) -> RecallEstimate:
    """Errors among the unflagged training examples and recall of the flags, from the reviewed part
    of ``sample_ids`` (:func:`unflagged_sample`; decisions outside the sample are not a random sample
    and are left out). Flagged errors: those confirmed plus the draws of those left."""
    rng = np.random.default_rng(seed + 2)
    tr = examples[examples["split"] == "train"]
    n_unflagged = int((~tr["is_label_issue"].astype(bool)).sum())
    o = outcomes(pd.Series(sample_ids, dtype=str), decisions)
    mr, er = int((o >= 0).sum()), int((o == 1).sum())
    missed = er + rng.binomial(n_unflagged - mr, rng.beta(0.5 + er, 0.5 + mr - er, draws))
    flagged = outcomes(queue_order(examples)["example_id"], decisions)
    found = (flagged == 1).sum() + remaining_draws(flagged, draws, seed)[1]
    recall = found / np.maximum(found + missed, 1)
    lo, hi = np.quantile(recall, [(1 - level) / 2, (1 + level) / 2])
    mlo, mhi = _interval(missed, level)
    return RecallEstimate(n_unflagged, len(sample_ids), mr, er, float(np.median(missed)), mlo, mhi,
                          float(np.median(recall)), float(lo), float(hi), level)


# -- a run directory -------------------------------------------------------------------------------
def review_state(run_dir: str | Path, *, sample_size: int = 50, sample_seed: int = 0,
                 **kwargs) -> tuple[QueueEstimate, RecallEstimate]:
    """Both estimates for a run directory (its ``examples.parquet`` and ``decisions.sqlite``)."""
    from audit.rundir import RunDir

    run = RunDir(run_dir)
    examples = run.examples(columns=["example_id", "split", "issue_score", "is_label_issue"])
    decisions = run.decisions().latest()
    queue = estimate_queue(examples, decisions, **kwargs)
    sample = unflagged_sample(examples, sample_size, sample_seed)
    recall = estimate_recall(examples, decisions, sample, level=queue.level)
    return queue, recall
