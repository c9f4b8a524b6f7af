"""Model zoo. Every model takes float images in [0, 1], N×C×H×W, and returns logits (N, K).

Each model exposes ``features(x) -> (N, D)`` (the penultimate layer, used for embeddings and the
closed-form last-layer TracIn gradients) and ``head`` (the final ``nn.Linear``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

ARCHS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(cls):
        ARCHS[name] = cls
        return cls

    return deco


class _Classifier(nn.Module):
    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register("mlp")
class MLP(_Classifier):
    """The paper's toy network: four fully connected layers (three hidden ReLU layers and the head)."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: int = 256):
        super().__init__()
        d = in_shape[0] * in_shape[1] * in_shape[2]
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(),
        )
        self.head = nn.Linear(width, num_classes)

    def features(self, x):
        return self.body(x)


@register("mnist_cnn")
class MnistCNN(_Classifier):
    """The paper's MNIST CNN: conv 32-64-128-256 with kernels 3, 4, 3, 3, then FC 1024 and the head.

    ``width`` scales the filter counts (1.0 = the paper's; 0.5 = half width for CPU).
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: float = 1.0):
        super().__init__()
        c = [max(4, int(round(w * width))) for w in (32, 64, 128, 256)]
        fc = max(64, int(round(1024 * width)))
        self.body = nn.Sequential(
            nn.Conv2d(in_shape[0], c[0], 3), nn.ReLU(),
            nn.Conv2d(c[0], c[1], 4, stride=2), nn.ReLU(),
            nn.Conv2d(c[1], c[2], 3), nn.ReLU(),
            nn.Conv2d(c[2], c[3], 3, stride=2), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            d = self.body(torch.zeros(1, *in_shape)).shape[1]
        self.fc = nn.Sequential(nn.Linear(d, fc), nn.ReLU())
        self.head = nn.Linear(fc, num_classes)

    def features(self, x):
        return self.fc(self.body(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(out)) + self.short(x))


@register("resnet18")
class ResNet18(_Classifier):
    """CIFAR-style ResNet-18 (3×3 stem, no max-pool); ``width`` scales the 64-128-256-512 channels."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: float = 1.0):
        super().__init__()
        ch = [max(8, int(64 * width * m)) for m in (1, 2, 4, 8)]
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], ch[0], 3, 1, 1, bias=False), nn.BatchNorm2d(ch[0]), nn.ReLU())
        layers, cin = [], ch[0]
        for i, cout in enumerate(ch):
            for j in range(2):
                layers.append(_BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def features(self, x):
        out = self.layers(self.stem(x))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def build_model(arch: str, in_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> nn.Module:
    """Instantiate ``arch`` (``mlp``, ``mnist_cnn``, ``resnet18``) for images of ``in_shape`` (C, H, W)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHS)})")
    if arch == "mlp":
        return MLP(in_shape, num_classes, width=int(round(256 * width)))
    return ARCHS[arch](in_shape, num_classes, width=width)
