"""aum_aug's window: the augmented model's epochs after it learned the classes and before it fits the
label issues (audit.signals.registry.aug_window). Exact on constructed training records."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from audit.signals.registry import AUG_NOISE_TRUST, SIGNALS, SignalInputs, aug_fit_bound, aug_window


def _fits(shares: list[float], n: int = 100) -> np.ndarray:
    """(E, n) records whose epoch e fits the first round(shares[e] * n) rows."""
    return np.array([np.arange(n) < round(s * n) for s in shares])


def test_aug_window_by_hand():
    assert aug_fit_bound(0.2) == pytest.approx(1.0 - AUG_NOISE_TRUST * 0.2) == pytest.approx(0.85)
    never = _fits([0.1] + [0.8] * 39)  # never over 0.85: the second half, as before
    assert aug_window(never, 0.2) == (20, 40)
    assert aug_window(never, None) == aug_window(never, 0.0) == (20, 40)  # no estimate: the second half
    crosses = _fits([0.1] * 5 + [0.8] * 19 + [0.9] * 16)  # first over 0.85 at epoch 24
    assert aug_window(crosses, 0.2) == (12, 24)
    assert aug_window(crosses, 0.1) == (20, 40)  # a share of 0.1: the bound is 0.925, never passed
    early = _fits([0.1, 0.95] + [0.99] * 38)  # fits everything at once: never before a quarter of the run
    assert aug_window(early, 0.2) == (5, 10)


def test_aum_aug_stops_before_the_augmented_model_memorizes():
    """A model that learns most clean rows at epoch 4 (a hard 30% between epochs 8 and 30) and memorizes the
    20% mislabelled ones from epochs 24-35: the AUM over its second half misses many of them, the window
    before it fits them ranks nearly all of them first."""
    rng = np.random.default_rng(0)
    n, e = 500, 40
    noisy = rng.random(n) < 0.2
    hard = rng.random(n) < 0.3  # clean rows learned late, at various epochs
    t = np.arange(e)[:, None]
    learn = np.where(hard, rng.integers(8, 30, n), 4)[None, :]
    memorize = rng.integers(24, 36, n)[None, :]  # each mislabelled row from some epoch after 24
    margin = np.where(noisy, np.where(t >= memorize, 3.0, -1.0), np.where(t >= learn, 2.0, -0.5))
    correct = margin > 0
    share = float(noisy.mean())
    assert correct.mean(1).max() > aug_fit_bound(share)  # it does memorize
    first = int(np.flatnonzero(correct.mean(1) > aug_fit_bound(share))[0])
    assert 24 < first < e and aug_window(correct, share) == (first // 2, first)

    def score(noise_share):  # the registered signal on these records alone
        return SIGNALS["aum_aug"].fn(SignalInputs(labels=np.zeros(n, np.int64), natural={}, robust={}, cv={}, infl={},
                                                  aug={"margin": margin, "correct": correct}, noise_share=noise_share))

    windowed, second_half = roc_auc_score(noisy, score(share)), roc_auc_score(noisy, score(None))
    assert windowed > 0.98 and second_half < 0.85, (windowed, second_half)
