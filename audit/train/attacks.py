"""Adversarial attacks: a small ABC and a registry (PGD ℓ∞/ℓ2, FGSM with random start, TRADES' KL attack,
and for evaluation APGD-CE + APGD-T from ``torchattacks`` on top of PGD).

All attacks work on float images in [0, 1]; ``eps`` and ``step_size`` are in those units
(eps 0.3 on MNIST = 76.5/255). Models are put in eval mode for the attack and restored after.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from audit.device import autocast


def _lp_project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1)
    n = flat.norm(dim=1).clamp_min(1e-12)
    factor = (eps / n).clamp(max=1.0)
    return (flat * factor[:, None]).view_as(delta)


def _random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return torch.empty_like(x).uniform_(-eps, eps)
    d = torch.randn_like(x)
    d = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    r = torch.rand(x.shape[0], device=x.device).view(-1, *([1] * (x.dim() - 1)))
    return d * r * eps


def _step(grad: torch.Tensor, step: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return step * grad.sign()
    g = grad.flatten(1)
    g = g / g.norm(dim=1).clamp_min(1e-12)[:, None]
    return step * g.view_as(grad)


@contextmanager
def _varying_shapes():
    """cuDNN autotuning off while batches shrink: with ``cudnn.benchmark`` on (``audit.device`` sets it
    for training's fixed batch shape), every new batch size is timed afresh, and an attack whose batch
    loses its broken examples at each step met a new size at almost every step (on an H200 that made
    the paper preset's evaluation several times slower than its training). CPU results are unchanged;
    on a GPU only cuDNN's choice of algorithm differs."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


class Attack(ABC):
    """Maps (model, x, y) to adversarial x' with ||x' − x|| ≤ eps and x' in [0, 1]."""

    @abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def fooled(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per example: is the returned adversarial example misclassified? (bool (N,)). Attacks that
        can say more cheaply (PGD: any iterate of any restart) override this."""
        x_adv = self(model, x, y)
        with torch.no_grad():
            return model(x_adv).argmax(1) != y

    def __call__(self, model, x, y):
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad(), autocast(x.device, attack=True):
                return self.perturb(model, x, y).detach()
        finally:
            model.train(was_training)


@dataclass
class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018) maximising cross-entropy.

    ``restarts`` > 1 keeps, per example, the first restart that fools the model (else the last).
    """

    eps: float
    step_size: float
    steps: int
    norm: str = "linf"
    random_start: bool = True
    restarts: int = 1

    def _one(self, model, x, y):
        delta = _random_start(x, self.eps, self.norm) if self.random_start else torch.zeros_like(x)
        delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
        for _ in range(self.steps):
            loss = F.cross_entropy(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = _lp_project(delta + _step(grad, self.step_size, self.norm), self.eps, self.norm)
                delta = (x + delta).clamp(0, 1) - x
            delta.requires_grad_(True)
        return (x + delta).detach()

    def perturb(self, model, x, y):
        best = self._one(model, x, y)
        for _ in range(self.restarts - 1):
            with torch.no_grad():
                fooled = model(best).argmax(1) != y
            if bool(fooled.all()):
                break
            cand = self._one(model, x, y)
            best = torch.where(fooled.view(-1, *([1] * (x.dim() - 1))), best, cand)
        return best

    def _flip_times(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """PGD from ``delta`` in which each example leaves the batch at its first misclassified iterate.
        Returns, per example, that iterate (0 = the start) or ``steps + 1``. Each trajectory is
        independent of the others (eval mode, summed loss), so leaving changes no other example."""
        out = torch.full((x.shape[0],), self.steps + 1, dtype=torch.long, device=x.device)
        active = torch.arange(x.shape[0], device=x.device)
        delta = (x + delta).clamp(0, 1) - x
        with torch.enable_grad(), _varying_shapes():
            for t in range(self.steps + 1):
                delta.requires_grad_(True)
                logits = model(x + delta)
                wrong = logits.argmax(1) != y
                out[active[wrong]] = t
                keep = ~wrong
                if t == self.steps or not bool(keep.any()):
                    break
                (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), delta)
                with torch.no_grad():
                    delta = _lp_project(delta + _step(grad, self.step_size, self.norm), self.eps, self.norm)
                    delta = (x + delta).clamp(0, 1) - x
                active, x, y, delta = active[keep], x[keep], y[keep], delta[keep].detach()
        return out

    def steps_to_flip(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per example, the first PGD step (1..steps) after which the prediction is no longer ``y``;
        0 when it is wrong already, ``steps + 1`` when it never flips. No random start (deterministic).
        Flipped examples leave the batch, so a fragile (natural) model costs a few steps, not ``steps``."""
        was_training = model.training
        model.eval()
        try:
            return self._flip_times(model, x, y, torch.zeros_like(x))
        finally:
            model.train(was_training)

    def fooled(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per example: does any iterate of any restart move the prediction off ``y``? (bool (N,)).

        The evaluation form of the attack: an example counts as broken at its first misclassified
        iterate (as AutoAttack keeps the first success), and each further restart runs only on the
        examples still correct, so attacking a fragile model costs a few steps.
        """
        was_training = model.training
        model.eval()
        hit = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        try:
            for _ in range(max(1, self.restarts)):
                active = torch.nonzero(~hit).flatten()
                if not len(active):
                    break
                xa, ya = x[active], y[active]
                start = _random_start(xa, self.eps, self.norm) if self.random_start else torch.zeros_like(xa)
                hit[active[self._flip_times(model, xa, ya, start) <= self.steps]] = True
        finally:
            model.train(was_training)
        return hit


@dataclass
class FGSM(Attack):
    """FGSM with random start (Wong, Rice & Kolter 2020): one step of 1.25·eps from a uniform start."""

    eps: float
    step_size: float | None = None
    norm: str = "linf"

    def perturb(self, model, x, y):
        step = self.step_size if self.step_size is not None else 1.25 * self.eps
        delta = _random_start(x, self.eps, self.norm).requires_grad_(True)
        loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = _lp_project(delta.detach() + _step(grad, step, self.norm), self.eps, self.norm)
        return (x + delta).clamp(0, 1)


@dataclass
class TradesKL(Attack):
    """TRADES' inner maximisation (Zhang et al. 2019): maximise KL(f(x) || f(x')) from a small random start."""

    eps: float
    step_size: float
    steps: int
    norm: str = "linf"

    def perturb(self, model, x, y):
        with torch.no_grad():
            p_nat = F.softmax(model(x), dim=1)
        x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
        for _ in range(self.steps):
            loss = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_nat, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                delta = _lp_project(x_adv + _step(grad, self.step_size, self.norm) - x, self.eps, self.norm)
                x_adv = (x + delta).clamp(0, 1)
            x_adv.requires_grad_(True)
        return x_adv.detach()


@dataclass
class APGDEnsemble(Attack):
    """AutoAttack's gradient attacks on top of PGD (Croce & Hein 2020): the examples ``pgd`` leaves
    correct (any iterate of any restart) are attacked by APGD-CE, those still correct by APGD-T
    (targeted, DLR loss, the ``min(9, K − 1)`` most likely other classes), both from ``torchattacks``.
    An example is robust only if it survives all three: the worst case, as AutoAttack reports it
    (without its gradient-free Square attack and FAB). APGD's step size adapts itself, so there is no
    step size to tune; ``steps`` per run (AutoAttack: 100), ``restarts`` per APGD attack.
    The global torch RNG is left as it was (torchattacks reseeds it with ``seed``).
    """

    eps: float
    num_classes: int
    pgd: PGD | None = None
    norm: str = "linf"
    steps: int = 100
    restarts: int = 1
    seed: int = 0

    def _apgd(self, model: nn.Module) -> list:
        try:
            import torchattacks
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("--eval-attack apgd needs torchattacks: pip install --no-deps torchattacks") from e
        norm = {"linf": "Linf", "l2": "L2"}[self.norm]
        common = dict(norm=norm, eps=self.eps, steps=self.steps, n_restarts=self.restarts, seed=self.seed)
        return [torchattacks.APGD(model, loss="ce", **common),
                torchattacks.APGDT(model, n_classes=min(10, self.num_classes), **common)]

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
        """Adversarial examples: ``x`` where no attack succeeded; updates ``hit`` in place."""
        x_adv = x.clone()
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), _varying_shapes():
            for att in self._apgd(model):
                active = torch.nonzero(~hit).flatten()
                if not len(active):
                    break
                cand = att(x[active], y[active]).detach()
                with torch.no_grad():
                    won = model(cand).argmax(1) != y[active]
                x_adv[active[won]] = cand[won]
                hit[active[won]] = True
        return x_adv

    def perturb(self, model, x, y):
        x_adv = self.pgd.perturb(model, x, y) if self.pgd is not None else x.clone()
        with torch.no_grad():
            hit = model(x_adv).argmax(1) != y
        fresh = self._run(model, x, y, hit.clone())
        return torch.where(hit.view(-1, *([1] * (x.dim() - 1))), x_adv, fresh)

    def fooled(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """Per example: broken by PGD (every iterate counts), APGD-CE or APGD-T (bool (N,)).
        ``start`` (bool (N,)): examples already known to be broken (e.g. by an earlier PGD evaluation);
        then PGD is not run again."""
        if start is None:
            start = self.pgd.fooled(model, x, y) if self.pgd is not None else torch.zeros(len(y), dtype=torch.bool)
        hit = start.to(x.device).clone()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                hit |= model(x).argmax(1) != y
            self._run(model, x, y, hit)
        finally:
            model.train(was_training)
        return hit
