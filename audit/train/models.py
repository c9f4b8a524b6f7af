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


# Whitening regulariser: eigenvalues of the patch covariance get this share of their mean added before
# the inverse square root, so that directions the data barely varies in (flat tinted backgrounds) are
# not amplified a thousandfold into an attack surface.
WHITEN_EPS = 0.01
WHITEN_MAX_PATCHES = 100_000


class _AirBlock(nn.Module):
    """conv 3×3 → max-pool 2 → BN → GELU → conv 3×3 → BN → GELU (airbench's block)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        # fast-tracking running statistics (PyTorch momentum 0.6, as airbench): the attacks run the
        # model in eval mode from the first step, and a few-epoch training has few steps to converge
        self.c1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout, momentum=0.6)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout, momentum=0.6)

    def forward(self, x):
        x = F.gelu(self.b1(F.max_pool2d(self.c1(x), 2)))
        return F.gelu(self.b2(self.c2(x)))


@register("airbench")
class AirBench(_Classifier):
    """A small fast net after Keller Jordan's airbench94 (CIFAR-10 94% in seconds on a GPU), own code.

    A frozen 2×2 patch-whitening convolution (2·4·C channels: each eigenvector of the data's 2×2 patch
    covariance, scaled by 1/sqrt(eigenvalue + ``WHITEN_EPS``·mean eigenvalue), and its negation) with the
    patch mean subtracted in its bias, so inputs stay in [0, 1] and the normalisation is inside the model;
    GELU; three :class:`_AirBlock` of widths ``width`` × (64, 256, 256); a global max-pool; the head.
    32×32 input: 31 → 15 → 7 → 3 pixels. ``width`` 0.25 costs ~12 M multiply-adds an image (ResNet-18 at
    0.25: ~35 M).

    The whitening comes from the first batch the model sees (its first ``features`` call, in training
    the first batch of the seeded order), computed in float64 with eigenvector signs fixed, so it is a
    function of those images alone; ``fit_whitening`` sets it from chosen images. It is held in buffers
    (``whiten_weight``, ``whiten_bias``, ``whitened``), so checkpoints carry it and load with
    ``weights_only=True``.
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: float = 0.25):
        super().__init__()
        c = in_shape[0]
        if min(in_shape[1:]) < 16:
            raise ValueError(f"airbench needs images of at least 16×16 pixels, got {in_shape[1]}×{in_shape[2]}")
        ch = [max(8, int(round(w * width))) for w in (64, 256, 256)]
        k = 2 * 4 * c
        self.register_buffer("whiten_weight", torch.zeros(k, c, 2, 2))
        self.register_buffer("whiten_bias", torch.zeros(k))
        self.register_buffer("whitened", torch.zeros((), dtype=torch.bool))
        self._ready = False  # a Python copy of ``whitened``: no device sync per forward, no graph break
        self.blocks = nn.Sequential(_AirBlock(k, ch[0]), _AirBlock(ch[0], ch[1]), _AirBlock(ch[1], ch[2]))
        self.head = nn.Linear(ch[2], num_classes)

    @torch.no_grad()
    def fit_whitening(self, x: torch.Tensor) -> None:
        """Set the whitening from float images ``x`` (N, C, H, W) in [0, 1] (at most
        ``WHITEN_MAX_PATCHES`` patches, taken evenly)."""
        with torch.autocast(x.device.type, enabled=False):
            p = F.unfold(x.detach().double(), 2).transpose(1, 2).reshape(-1, 4 * x.shape[1])
            if len(p) > WHITEN_MAX_PATCHES:
                p = p[torch.linspace(0, len(p) - 1, WHITEN_MAX_PATCHES, device=p.device).long()]
            mean = p.mean(0)
            cov = torch.cov(p.T)
            lam, vec = torch.linalg.eigh(cov)
            lam = lam.clamp_min(0)
            # the sign of an eigenvector is arbitrary: make its largest entry positive
            big = vec.abs().argmax(0)
            vec = vec * torch.sign(vec[big, torch.arange(vec.shape[1], device=vec.device)])
            w = vec.T / torch.sqrt(lam + WHITEN_EPS * lam.mean().clamp_min(1e-12))[:, None]
            w = torch.cat([w, -w])
        self.whiten_weight.copy_(w.reshape(self.whiten_weight.shape).to(self.whiten_weight))
        self.whiten_bias.copy_((-w @ mean).to(self.whiten_bias))
        self.whitened.fill_(True)
        self._ready = True

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = bool(self.whitened)

    def features(self, x):
        if not self._ready:
            self.fit_whitening(x)
        out = self.blocks(F.gelu(F.conv2d(x, self.whiten_weight, self.whiten_bias)))
        return F.adaptive_max_pool2d(out, 1).flatten(1)


def build_model(arch: str, in_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> nn.Module:
    """Instantiate ``arch`` (``mlp``, ``mnist_cnn``, ``resnet18``, ``airbench``) for images of ``in_shape`` (C, H, W)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHS)})")
    if arch == "mlp":
        return MLP(in_shape, num_classes, width=int(round(256 * width)))
    # Convolution weights channels-last on every device: oneDNN's CPU kernels then run NHWC (airbench at
    # width 0.25 on one CPU thread trains 1.5-1.6x and infers 2.2x as fast, its max-pool most of all;
    # ``benchmarks/colour_speed.py layout``), as cuDNN's do on a GPU. Still float32; a state_dict loaded
    # into the model keeps this layout, so every model the audit builds runs it.
    return ARCHS[arch](in_shape, num_classes, width=width).to(memory_format=torch.channels_last)
