"""Whole-dataset inference in chunks: logits, features, adversarial correctness, PGD steps to flip."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from audit.device import autocast
from audit.train.attacks import PGD


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
        x = images[sl].to(device).float().div_(255.0)
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
                        batch: int = 512) -> np.ndarray:
    """Per example: still classified as ``labels`` after ``attack`` (:meth:`Attack.fooled`; for PGD
    every iterate of every restart counts). Returns bool (N,)."""
    out = []
    for sl in _chunks(len(images), batch):
        x = images[sl].to(device).float().div_(255.0)
        out.append((~attack.fooled(model, x, labels[sl].to(device))).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, bool)


def steps_to_flip(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: PGD, device: torch.device,
                  batch: int = 512) -> np.ndarray:
    """Per example, PGD steps needed to move the prediction off ``labels`` (0 = already wrong,
    ``attack.steps + 1`` = never within budget). Few steps on a fitted example = fragile fit."""
    out = []
    for sl in _chunks(len(images), batch):
        x = images[sl].to(device).float().div_(255.0)
        out.append(attack.steps_to_flip(model, x, labels[sl].to(device)).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, int)
