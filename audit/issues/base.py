"""The one shape of an issue type, its registry, its thresholds and its boundary check.

Every issue type writes three columns into ``examples.parquet``: ``<name>_score`` (float, higher =
worse; NaN on rows of a split the type does not judge), ``is_<name>_issue`` (bool) and
``<name>_reason`` (words; empty when the row is not an issue). Its one-line description lives here,
beside its name, and nowhere else: the app, the report and ``--help`` read :data:`ISSUE_TYPES`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRAIN, TEST = "train", "test"


@dataclass(frozen=True)
class IssueType:
    """A kind of finding: its name (the column stem), one line saying what it means, the splits it judges."""

    name: str
    description: str
    splits: tuple[str, ...] = (TRAIN, TEST)

    @property
    def columns(self) -> tuple[str, str, str]:
        return f"{self.name}_score", f"is_{self.name}_issue", f"{self.name}_reason"


ISSUE_TYPES: dict[str, IssueType] = {}


def register(name: str, description: str, splits: tuple[str, ...] = (TRAIN, TEST)) -> IssueType:
    if name in ISSUE_TYPES:
        raise ValueError(f"issue type {name!r} registered twice")
    ISSUE_TYPES[name] = IssueType(name, description, splits)
    return ISSUE_TYPES[name]


@dataclass(frozen=True)
class IssueConfig:
    """Thresholds of the issue types (the stage's sub-config: a change recomputes the stage).

    Each was chosen on data, as its comment says: the bundled digits (1,797 8×8 images) and
    ``mnist10k.npz`` (10,000 28×28 MNIST digits) as the clean reference, and the planted cases of
    ``benchmarks/issue_types.py`` (copies shifted by a pixel, brightness-changed, re-encoded with
    noise; darkened, blurred, blank and foreign images) as the positives.
    """

    # Near copies: max over shifts of ±1 pixel of the Pearson correlation of two grey descriptors
    # (at most ``descriptor_side`` pixels a side; 28×28 MNIST keeps its pixels: at 14×14 a 1-pixel shift
    # becomes half a descriptor pixel and is missed). The nearest distinct image reaches 0.99 for 4 of
    # 1,797 digits (0.2%; the most alike handwritten 1s reach 0.994) and for none of mnist10k (max
    # 0.987); 400 planted copies (exact, 1-pixel shifts, brightness ×0.8..1.2 ±20, σ=4 re-encoding)
    # score ≥ 0.99 but for one brightness copy on digits (0.9897, strokes clipped at 255).
    near_duplicate_similarity: float = 0.99
    descriptor_side: int = 32
    copy_neighbors: int = 10  # candidate partners per image and shift
    # Outliers: the combined k-NN distance (audit.issues.outliers), flagged past Tukey's fence of the
    # training rows' log distances, Q3 + outlier_iqr × IQR. With 1% planted noise / inverted images the
    # ranking is near perfect (AUROC ≥ 0.999 in pixels, 0.92-1.0 in an MLP's features) but no fence
    # suits every dataset: at 1.5, digits: precision 0.46-0.57, recall 1.0; mnist10k pixels: precision
    # 1.0, recall 0.89-0.96 (MLP features: recall 0.2-0.26); at 3.0 mnist10k flags none. Seeds 0, 1 of
    # benchmarks/issue_types.py.
    outlier_k: int = 10
    outlier_iqr: float = 1.5
    # Image quality, each relative to the dataset's median, in [0, 1], flagged at or above the value:
    # dark: 1 − (99th-percentile luminance / its median); light: how far the 1st-percentile luminance
    # rose from its median towards white; blurry: 1 − (Laplacian variance / pixel variance) over its
    # median; low_information: 1 − (histogram entropy / its median). Largest clean scores (digits;
    # mnist10k): dark 0.17; 0.21, light 0; 0, blurry 0.75; 0.62, low_information 0.50; 0.67. Smallest
    # planted: ×0.3 darkening 0.70; 0.70, washing out to 0.6·255 + 0.4·x 0.60; 0.60, Gaussian blur
    # (σ = side / 8, at least 1 pixel) 0.88; 0.99, blank images 1.0; 1.0.
    dark: float = 0.5
    light: float = 0.5
    blurry: float = 0.8
    low_information: float = 0.8
    entropy_bins: int = 32
    # odd_size: max(|log2 area ratio| / 2, |log2 aspect ratio|) against the median source size, so
    # 1.0 = 4× the area or twice as wide for its height. A rule of thumb: no dataset at hand has mixed sizes.
    odd_size: float = 1.0
    # class_imbalance: a class with fewer training rows than this share of the median class count.
    class_imbalance: float = 0.5
    # a class under-performs when its natural test accuracy is below the overall accuracy by more than
    # max(this, 2 binomial standard errors of the class)
    underperforming_gap: float = 0.05


def check_result(name: str, arrays: dict[str, np.ndarray], n: int, split: np.ndarray) -> None:
    """The boundary check of one issue type's output: shape (N,), a float score, finite on the rows of
    the splits it judges, a bool flag set only there. Raises ``ValueError`` naming the type."""
    t = ISSUE_TYPES[name]
    score, flag = arrays.get(f"{name}_score"), arrays.get(f"is_{name}_issue")
    problems = []
    if score is None or flag is None:
        problems.append("missing score or flag")
    else:
        judged = np.isin(split, t.splits)
        if score.shape != (n,) or flag.shape != (n,):
            problems.append(f"shapes {score.shape} and {flag.shape}, expected ({n},)")
        elif score.dtype.kind != "f" or flag.dtype != bool:
            problems.append(f"dtypes {score.dtype} and {flag.dtype}, expected float and bool")
        else:
            if not np.isfinite(score[judged]).all():
                problems.append(f"{int((~np.isfinite(score[judged])).sum())} non-finite scores on judged rows")
            if flag[~judged].any():
                problems.append("flags on rows of a split it does not judge")
    if problems:
        raise ValueError(f"issue type {name}: " + "; ".join(problems))
