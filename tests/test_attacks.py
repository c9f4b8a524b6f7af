"""Attacks stay in their ball and in [0, 1], and PGD is stronger than no attack."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from audit.train.attacks import FGSM, PGD, TradesKL


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_pgd_respects_ball_and_box(norm, eps):
    m = _model()
    x = torch.rand(64, 1, 4, 4)
    y = torch.randint(0, 3, (64,))
    x_adv = PGD(eps=eps, step_size=eps / 4, steps=10, norm=norm, restarts=2)(m, x, y)
    d = (x_adv - x).flatten(1)
    size = d.abs().max(1).values if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    ce = nn.functional.cross_entropy
    assert ce(m(x_adv), y) > ce(m(x), y)


def test_fgsm_and_trades_stay_in_ball():
    m = _model()
    x, y = torch.rand(32, 1, 4, 4), torch.randint(0, 3, (32,))
    for att in (FGSM(eps=0.1), TradesKL(eps=0.1, step_size=0.03, steps=5)):
        x_adv = att(m, x, y)
        assert ((x_adv - x).abs().max() <= 0.1 + 1e-5) and x_adv.min() >= 0 and x_adv.max() <= 1


def test_steps_to_flip_is_monotone_in_budget():
    m = _model()
    x, y = torch.rand(64, 1, 4, 4), torch.randint(0, 3, (64,))
    few = PGD(eps=0.05, step_size=0.02, steps=5, random_start=False).steps_to_flip(m, x, y)
    wrong = m(x).argmax(1) != y
    assert (few[wrong] == 0).all() and (few[~wrong] >= 1).all() and (few <= 6).all()
