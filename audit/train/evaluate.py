"""Whole-dataset inference in chunks: logits, features, adversarial correctness, PGD steps to flip."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from audit.device import autocast
from audit.rows import take
from audit.train.attacks import PGD, APGDEnsemble

EVAL_ATTACKS = ("pgd", "apgd")


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


@torch.no_grad()
def infer(model: nn.Module, images: torch.Tensor, device: torch.device, batch: int = 1024,
          features: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images (N, C, H, W) -> logits (N, K) float32 and, if asked, penultimate features (N, D)."""
    model.eval()
    logits, feats = [], []
    for sl in _chunks(len(images), batch):
        x = take(images, sl).to(device).float().div_(255.0)
        with autocast(device):
            if features:
                h = model.features(x)
                feats.append(h.float().cpu())
                logits.append(model.head(h).float().cpu())
            else:
                logits.append(model(x).float().cpu())
    lg = torch.cat(logits).numpy() if logits else np.zeros((0, 0), np.float32)
    return lg, (torch.cat(feats).numpy() if features else None)


def adversarial_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack, device: torch.device,
                        batch: int = 512, start: np.ndarray | None = None) -> np.ndarray:
    """Per example: still classified as ``labels`` after ``attack`` (:meth:`Attack.fooled`; for PGD
    every iterate of every restart counts). ``start`` (bool (N,), only for :class:`APGDEnsemble`):
    examples already known to be broken. Returns bool (N,)."""
    out = []
    for sl in _chunks(len(images), batch):
        x = take(images, sl).to(device).float().div_(255.0)
        kw = {} if start is None else {"start": torch.as_tensor(start[sl], device=device)}
        out.append((~attack.fooled(model, x, labels[sl].to(device), **kw)).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, bool)


def eval_attack(kind: str, *, eps: float, norm: str, steps: int, restarts: int, num_classes: int,
                apgd_steps: int = 100, seed: int = 0):
    """The evaluation attack ``--eval-attack``: ``pgd`` = PGD with ``steps`` steps of 2.5·eps/steps,
    random start, ``restarts`` restarts (every iterate counts); ``apgd`` = that PGD, then APGD-CE and
    APGD-T (``apgd_steps`` each, ``restarts`` restarts) on the examples it leaves correct."""
    if kind not in EVAL_ATTACKS:
        raise ValueError(f"unknown evaluation attack {kind!r} (known: {', '.join(EVAL_ATTACKS)})")
    pgd = PGD(eps=eps, step_size=2.5 * eps / steps, steps=steps, norm=norm, random_start=True, restarts=restarts)
    if kind == "pgd":
        return pgd
    return APGDEnsemble(eps=eps, num_classes=num_classes, pgd=pgd, norm=norm, steps=apgd_steps,
                        restarts=restarts, seed=seed)


def robust_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, kind: str, *, eps: float,
                   norm: str, steps: int, restarts: int, num_classes: int, device: torch.device, seed: int = 0,
                   apgd_steps: int = 100, pgd_correct: np.ndarray | None = None) -> np.ndarray:
    """Per example: still correct under the evaluation attack ``kind`` (:func:`eval_attack`), bool (N,).

    For ``apgd``, pass ``pgd_correct`` (this model's PGD result on the same rows) to skip PGD: APGD then
    runs only on the examples PGD left correct, and the result is never above it (an example counts as
    robust only if every attack fails)."""
    attack = eval_attack(kind, eps=eps, norm=norm, steps=steps, restarts=restarts, num_classes=num_classes,
                         apgd_steps=apgd_steps, seed=seed)
    start = None if pgd_correct is None or kind == "pgd" else ~np.asarray(pgd_correct, bool)
    torch.manual_seed(seed)
    return adversarial_correct(model, images, labels, attack, device, start=start)


def steps_to_flip(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: PGD, device: torch.device,
                  batch: int = 512) -> np.ndarray:
    """Per example, PGD steps needed to move the prediction off ``labels`` (0 = already wrong,
    ``attack.steps + 1`` = never within budget). Few steps on a fitted example = fragile fit."""
    out = []
    for sl in _chunks(len(images), batch):
        x = take(images, sl).to(device).float().div_(255.0)
        out.append(attack.steps_to_flip(model, x, labels[sl].to(device)).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, int)
