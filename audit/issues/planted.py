"""Planted issues with known answers, for the tests and ``benchmarks/issue_types.py``.

Each function takes uint8 images (N, C, H, W) and a seeded generator and returns new images plus the
rows they came from, so a caller can append them to a dataset and know exactly which rows are issues.
"""

from __future__ import annotations

import numpy as np

COPY_KINDS = ("exact", "shift", "brightness", "reencode")
QUALITY_KINDS = ("dark", "light", "blurry", "blank")
OUTLIER_KINDS = ("noise", "inverted")


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def translate(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """(C, H, W) moved by (dy, dx) pixels; the uncovered border repeats the edge (the background)."""
    c, h, w = img.shape
    p = np.pad(img, ((0, 0), (abs(dy), abs(dy)), (abs(dx), abs(dx))), mode="edge")
    return p[:, abs(dy) - dy:abs(dy) - dy + h, abs(dx) - dx:abs(dx) - dx + w]


def near_copy(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One copy of ``img`` (C, H, W) uint8: ``exact``; ``shift`` (one pixel in a random direction);
    ``brightness`` (×0.8..1.2 and ±20 levels); ``reencode`` (Gaussian noise σ = 4 levels, requantized)."""
    x = img.astype(np.float64)
    if kind == "exact":
        return img.copy()
    if kind == "shift":
        dy, dx = [(0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (-1, -1)][rng.integers(6)]
        return translate(img, dy, dx)
    if kind == "brightness":
        return _clip(x * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20))
    if kind == "reencode":
        return _clip(x + rng.normal(0, 4, x.shape))
    raise ValueError(f"unknown copy kind {kind!r} (known: {', '.join(COPY_KINDS)})")


def plant_copies(images: np.ndarray, m: int, rng: np.random.Generator,
                 kinds: tuple[str, ...] = COPY_KINDS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``m`` copies of distinct random rows, the kinds in turn. Returns (copies (m, C, H, W), source
    rows (m,), kind names (m,))."""
    src = rng.choice(len(images), size=m, replace=False)
    kind = np.array([kinds[i % len(kinds)] for i in range(m)])
    out = np.stack([near_copy(np.asarray(images[s]), k, rng) for s, k in zip(src, kind)]) if m else images[:0]
    return out, src, kind


def degrade(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``dark`` (×0.3), ``light`` (washed out: 0.6·255 + 0.4·x), ``blurry`` (Gaussian σ = 1 pixel per
    8 pixels of side), ``blank`` (one grey level for every pixel)."""
    from scipy.ndimage import gaussian_filter

    x = img.astype(np.float64)
    if kind == "dark":
        return _clip(x * 0.3)
    if kind == "light":
        return _clip(0.6 * 255 + 0.4 * x)
    if kind == "blurry":
        sigma = max(1.0, img.shape[-1] / 8)
        return _clip(gaussian_filter(x, sigma=(0, sigma, sigma), mode="nearest"))
    if kind == "blank":
        return np.full_like(img, rng.integers(0, 256))
    raise ValueError(f"unknown quality kind {kind!r} (known: {', '.join(QUALITY_KINDS)})")


def foreign(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """An image of another kind: ``noise`` (uniform random pixels) or ``inverted`` (255 − x)."""
    if kind == "noise":
        return rng.integers(0, 256, img.shape).astype(np.uint8)
    if kind == "inverted":
        return (255 - img).astype(np.uint8)
    raise ValueError(f"unknown outlier kind {kind!r} (known: {', '.join(OUTLIER_KINDS)})")


def plant_each(images: np.ndarray, m: int, rng: np.random.Generator, kinds: tuple[str, ...],
               make) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``m`` images ``make(images[row], kind, rng)`` of distinct random rows, the kinds in turn."""
    src = rng.choice(len(images), size=m, replace=False)
    kind = np.array([kinds[i % len(kinds)] for i in range(m)])
    out = np.stack([make(np.asarray(images[s]), k, rng) for s, k in zip(src, kind)]) if m else images[:0]
    return out, src, kind
