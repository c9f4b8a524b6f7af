"""Image quality: ``dark``, ``light``, ``blurry``, ``low_information``, ``odd_size``; cheap pixel statistics.

Every statistic is taken on the luminance (0.299 R + 0.587 G + 0.114 B, or the grey channel) of the
image as the models see it, and every score is relative to the dataset's median, so data whose
typical image is dark (MNIST's black background) is not dark as a whole: what is flagged is an image
unlike the rest. Scores lie in [0, 1]; the thresholds are :class:`audit.issues.base.IssueConfig`'s.
``odd_size`` needs each image's size before it was fitted to the common size; sources that decode
files record it (``source_wh``), arrays (npz, torchvision, digits) have one size by construction.
"""

from __future__ import annotations

import numpy as np

from audit.issues.base import IssueConfig, register

DARK = register("dark", "images much darker than the dataset's typical image (no bright pixels)")
LIGHT = register("light", "washed-out images, much lighter than the dataset's typical image (no dark pixels)")
BLURRY = register("blurry", "images with far less fine detail for their contrast than the dataset's typical image")
LOW_INFORMATION = register("low_information", "near-blank images: few distinct grey levels")
ODD_SIZE = register("odd_size", "images whose source size or aspect ratio is far from the dataset's typical one")

CHUNK = 2048
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _luminance(block: np.ndarray) -> np.ndarray:
    x = block.astype(np.float32)
    return x[:, 0] if x.shape[1] == 1 else np.einsum("nchw,c->nhw", x[:, :3], LUMA[: x.shape[1]])


def image_statistics(images, *, bins: int = 32) -> dict[str, np.ndarray]:
    """Per image (N, C, H, W uint8): ``bright_level`` / ``dark_level`` (99th / 1st percentile luminance,
    0..255), ``sharpness`` (variance of the 4-neighbour Laplacian over the interior divided by the pixel
    variance; NaN for a constant image), ``entropy`` (bits, of a ``bins``-bin luminance histogram)."""
    n = len(images)
    out = {k: np.empty(n, np.float64) for k in ("bright_level", "dark_level", "sharpness", "entropy")}
    for s in range(0, n, CHUNK):
        g = _luminance(np.asarray(images[s:s + CHUNK]))
        m = len(g)
        flat = g.reshape(m, -1)
        out["dark_level"][s:s + m], out["bright_level"][s:s + m] = np.quantile(flat, [0.01, 0.99], axis=1)
        if g.shape[1] >= 3 and g.shape[2] >= 3:
            lap = (4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:])
            var = flat.var(1)
            with np.errstate(divide="ignore", invalid="ignore"):
                out["sharpness"][s:s + m] = np.where(var > 1e-6, lap.reshape(m, -1).var(1) / var, np.nan)
        else:
            out["sharpness"][s:s + m] = np.nan
        idx = np.minimum((flat * (bins / 256.0)).astype(np.int64), bins - 1) + bins * np.arange(m)[:, None]
        counts = np.bincount(idx.ravel(), minlength=bins * m).reshape(m, bins).astype(np.float64)
        p = counts / counts.sum(1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["entropy"][s:s + m] = -np.where(p > 0, p * np.log2(p), 0.0).sum(1)
    return out


def _median(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else float("nan")


def quality_scores(stats: dict[str, np.ndarray], sizes: np.ndarray | None = None, *,
                   config: IssueConfig = IssueConfig()) -> tuple[dict[str, np.ndarray], dict]:
    """The quality issue types from :func:`image_statistics` (and source sizes (N, 2) [width, height]).

    Returns (arrays ``<type>_score`` and ``is_<type>_issue`` over all N rows, and the reference values:
    the medians the scores are relative to). ``dark``: 1 − bright_level / its median; ``light``:
    (dark_level − its median) / (255 − its median); ``blurry``: 1 − sharpness / its median (0 for a
    constant image: it is ``low_information``, not blurry); ``low_information``: 1 − entropy / its
    median; ``odd_size``: max(|log2 area ratio| / 2, |log2 aspect ratio|) to the median size (0 when the
    sizes were not recorded). Every score is clipped to [0, 1] but ``odd_size``'s, which is ≥ 0.
    """
    ref = {k: _median(v) for k, v in stats.items()}
    n = len(stats["entropy"])
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = {
            "dark": 1 - stats["bright_level"] / max(ref["bright_level"], 1e-6),
            "light": (stats["dark_level"] - ref["dark_level"]) / max(255 - ref["dark_level"], 1e-6),
            "blurry": 1 - stats["sharpness"] / ref["sharpness"] if np.isfinite(ref["sharpness"]) and ref["sharpness"] > 0
            else np.zeros(n),
            "low_information": 1 - stats["entropy"] / max(ref["entropy"], 1e-6),
        }
    out = {}
    for name, v in raw.items():
        score = np.clip(np.nan_to_num(v, nan=0.0), 0.0, 1.0)
        out[f"{name}_score"] = score
        out[f"is_{name}_issue"] = score >= getattr(config, name)
    size_score = np.zeros(n)
    if sizes is not None and len(sizes) == n and (np.asarray(sizes) > 0).all():
        wh = np.asarray(sizes, np.float64)
        area, aspect = wh[:, 0] * wh[:, 1], wh[:, 0] / wh[:, 1]
        size_score = np.maximum(np.abs(np.log2(area / np.median(area))) / 2, np.abs(np.log2(aspect / np.median(aspect))))
        ref.update(median_width=float(np.median(wh[:, 0])), median_height=float(np.median(wh[:, 1])))
    out["odd_size_score"] = size_score
    out["is_odd_size_issue"] = size_score >= config.odd_size
    ref["sizes_recorded"] = sizes is not None
    return out, ref
