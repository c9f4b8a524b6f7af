"""Attacks stay in their ball and in [0, 1], and PGD is stronger than no attack."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from audit.train.attacks import FGSM, PGD, APGDEnsemble, TradesKL


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
    torch.manual_seed(2)
    by_hand = m(FGSM(eps=0.1)(m, x, y)).argmax(1) != y
    torch.manual_seed(2)
    assert torch.equal(FGSM(eps=0.1).fooled(m, x, y), by_hand)  # one-shot attacks: judged on what they return


def test_steps_to_flip_is_monotone_in_budget():
    m = _model()
    x, y = torch.rand(64, 1, 4, 4), torch.randint(0, 3, (64,))
    few = PGD(eps=0.05, step_size=0.02, steps=5, random_start=False).steps_to_flip(m, x, y)
    wrong = m(x).argmax(1) != y
    assert (few[wrong] == 0).all() and (few[~wrong] >= 1).all() and (few <= 6).all()


def test_steps_to_flip_matches_the_full_batch_trajectory():
    """Dropping flipped examples from the batch changes no other example's count."""
    m = _model()
    x, y = torch.rand(96, 1, 4, 4), torch.randint(0, 3, (96,))
    pgd = PGD(eps=0.2, step_size=0.03, steps=8, random_start=False)
    ref = torch.full((96,), 9, dtype=torch.long)
    delta = torch.zeros_like(x, requires_grad=True)
    for t in range(9):
        logits = m(x + delta)
        ref[(logits.argmax(1) != y) & (ref == 9)] = t
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(logits, y, reduction="sum"), delta)
        delta = ((x + (delta + 0.03 * g.sign()).clamp(-0.2, 0.2)).clamp(0, 1) - x).detach().requires_grad_(True)
    got = pgd.steps_to_flip(m, x, y)
    assert torch.equal(got, ref)
    assert 0 < int((got == 9).sum()) < 96 and int((got >= 2).sum()) > 0  # the test exercises compaction


def test_fooled_is_at_least_as_strong_as_the_final_iterate():
    """Same random start: every example fooled by the last iterate is caught, and a restart adds more."""
    m = _model()
    x, y = torch.rand(128, 1, 4, 4), torch.randint(0, 3, (128,))
    pgd = PGD(eps=0.15, step_size=0.05, steps=6, restarts=1)
    torch.manual_seed(1)
    final = m(pgd(m, x, y)).argmax(1) != y
    torch.manual_seed(1)
    once = pgd.fooled(m, x, y)
    torch.manual_seed(1)
    twice = PGD(eps=0.15, step_size=0.05, steps=6, restarts=2).fooled(m, x, y)
    assert bool((once | ~final).all()) and bool((twice | ~once).all())
    assert bool(once[m(x).argmax(1) != y].all())
    assert 0 < int(final.sum()) <= int(once.sum()) <= int(twice.sum()) < 128
    assert m.training  # the model's mode is restored


@pytest.fixture(scope="module")
def digits_models():
    """A natural and a PGD-trained MLP on digits (a few epochs) and the test split."""
    from audit.data import TEST, TRAIN, load_dataset
    from audit.train.engine import TrainSpec, train_model
    from audit.train.models import build_model

    ds = load_dataset("digits")
    tr, te = ds.split_indices(TRAIN), ds.split_indices(TEST)
    x, y = torch.from_numpy(np.asarray(ds.images[tr])), torch.as_tensor(ds.labels[tr].astype(np.int64))
    models = {}
    for method, epochs in (("natural", 8), ("pgd", 12)):
        torch.manual_seed(0)
        spec = TrainSpec(method=method, epochs=epochs, batch_size=64, lr=0.05, eps=0.1, step_size=0.03, steps=5, seed=0)
        models[method] = train_model(build_model("mlp", (1, 8, 8), 10, 0.25), x, y, spec,
                                     device=torch.device("cpu"), progress=False).model
    return models, torch.from_numpy(np.asarray(ds.images[te])), torch.as_tensor(ds.labels[te].astype(np.int64))


def test_apgd_is_at_least_as_strong_as_pgd_and_pgd_training_survives_it(digits_models):
    pytest.importorskip("torchattacks")
    from audit.train.evaluate import robust_correct

    models, x, y = digits_models
    kw = dict(eps=0.1, norm="linf", steps=10, restarts=1, num_classes=10, device=torch.device("cpu"), seed=1,
              apgd_steps=20)
    acc = {}
    for name, m in models.items():
        pgd = robust_correct(m, x, y, "pgd", **kw)
        apgd = robust_correct(m, x, y, "apgd", pgd_correct=pgd, **kw)
        assert not (apgd & ~pgd).any()  # robust under APGD implies robust under PGD
        acc[name] = (pgd.mean(), apgd.mean())
        assert np.array_equal(apgd, robust_correct(m, x, y, "apgd", **kw))  # same as running PGD inside
    rng = torch.get_rng_state()
    APGDEnsemble(eps=0.1, num_classes=10, steps=5).fooled(models["pgd"], x[:50].float() / 255, y[:50])
    assert torch.equal(rng, torch.get_rng_state())  # torchattacks' reseeding does not leak
    assert acc["natural"][1] < 0.45 < 0.55 < acc["pgd"][1]  # PGD training stays robust under APGD
    assert acc["natural"][1] < acc["natural"][0] and acc["pgd"][1] < acc["pgd"][0]  # APGD finds what PGD missed


def test_shrinking_attack_batches_run_without_cudnn_autotuning_and_restore_it():
    """The flip-time loop drops broken examples at each step, so its batch size changes every step;
    cuDNN autotuning (on for training on a GPU) would re-time each new size. It is off inside the loop
    and back to what it was afterwards, also when the model raises."""
    seen = []

    class Spy(nn.Module):
        def __init__(self, fail=False):
            super().__init__()
            self.net, self.fail = _model(), fail

        def forward(self, x):
            seen.append((len(x), torch.backends.cudnn.benchmark))
            if self.fail:
                raise RuntimeError("boom")
            return self.net(x)

    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 4, 4), torch.randint(0, 3, (64,))
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True
        PGD(eps=0.5, step_size=0.1, steps=10).steps_to_flip(Spy(), x, y)
        assert len({n for n, _ in seen}) > 2  # the batch did shrink
        assert not any(flag for _, flag in seen)
        assert torch.backends.cudnn.benchmark is True
        with pytest.raises(RuntimeError):
            PGD(eps=0.5, step_size=0.1, steps=10).fooled(Spy(fail=True), x, y)
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before
