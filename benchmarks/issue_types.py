"""Issue types beyond label errors on planted cases, side by side with cleanlab's Datalab.

    python benchmarks/issue_types.py [--seeds 0,1,2] [--datasets digits,mnist10k]
                                     [--out benchmarks/results/issue_types.csv]

Data: scikit-learn's bundled digits (1,797 8×8) and, when the file exists, ``/work/shared/datasets/
mnist10k.npz`` (10,000 28×28 MNIST digits; skipped otherwise). Per dataset and seed, into the
training rows (a seeded 3:1 split):

* near duplicates: 4% of the training rows get a copy, the kinds in turn (exact, shifted one pixel,
  brightness ×0.8..1.2 ±20, re-encoded with σ = 4 noise; :mod:`audit.issues.planted`); the truth is
  every copy and its original;
* leaks: 2% as many test rows, copies of training rows (ours only: Datalab has no notion of a split);
* outliers: 1% of the training rows are foreign images (uniform noise, inverted digits).

Methods, each on the same rows:

* ``ours``: :func:`audit.issues.duplicates.find_copies` (pixels) and
  :func:`audit.issues.outliers.find_outliers` on the embedding;
* ``datalab``: ``cleanlab.Datalab(...).find_issues(features=embedding, issue_types={"near_duplicate": {},
  "outlier": {}})`` with its defaults (where ``Datalab`` cannot be built because the ``datasets``
  package is missing, the same two issue managers it runs, on a stand-in; the output says which);
* ``embedding_cosine``: near copies as a threshold on the embedding's cosine similarity (0.99), the
  rule :mod:`audit.issues.duplicates` explains it does not use.

Embeddings: ``pixels`` (mean-centred pixel vectors, what a run without a model uses) and ``mlp`` (the
256 hidden units of a scikit-learn MLP trained on the training rows for 30 epochs: a natural
model's penultimate features, as a run's natural model gives them). Also printed: each quality score's
largest value on the clean images (the reference for the thresholds in :class:`audit.issues.IssueConfig`).
Writes one row per dataset, seed, issue, method and embedding, then prints the mean ± 95% half-width.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

MNIST10K = Path("/work/shared/datasets/mnist10k.npz")
OUT = Path(__file__).parent / "results" / "issue_types.csv"
HOW: set[str] = set()  # how Datalab ran (see datalab())


def load(name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """uint8 (N, 1, H, W) images and labels, or None when the optional file is absent."""
    if name == "digits":
        from sklearn.datasets import load_digits

        b = load_digits()
        return np.rint(b.images * (255 / 16)).clip(0, 255).astype(np.uint8)[:, None], b.target.astype(np.int64)
    if name == "mnist10k":
        if not MNIST10K.exists():
            return None
        z = np.load(MNIST10K)
        return z["images"][:, None].astype(np.uint8), z["labels"].astype(np.int64)
    raise SystemExit(f"unknown dataset {name!r} (known: digits, mnist10k)")


def planted(images, labels, seed: int) -> dict:
    """The dataset with planted copies, leaks and outliers, and the truth for each."""
    from audit.issues.planted import OUTLIER_KINDS, foreign, plant_copies, plant_each

    rng = np.random.default_rng(seed)
    n = len(images)
    split = np.where(rng.random(n) < 0.25, "test", "train")
    tr = np.flatnonzero(split == "train")
    copies, src, kind = plant_copies(images[tr], int(0.04 * len(tr)), rng)
    leaks, _, _ = plant_copies(images[tr], int(0.02 * len(tr)), rng)
    odd, osrc, _ = plant_each(images[tr], int(0.01 * len(tr)), rng, OUTLIER_KINDS, foreign)
    x = np.concatenate([images, copies, leaks, odd])
    y = np.r_[labels, labels[tr[src]], labels[tr[:len(leaks)]], labels[tr[osrc]]]
    s = np.r_[split, ["train"] * len(copies), ["test"] * len(leaks), ["train"] * len(odd)]
    a, b, c = n + len(copies), n + len(copies) + len(leaks), len(x)
    dup = np.zeros(len(x), bool)
    dup[n:a] = True
    dup[tr[src]] = True
    leak = np.zeros(len(x), bool)
    leak[a:b] = True
    out = np.zeros(len(x), bool)
    out[b:c] = True
    return {"images": x, "labels": y, "split": s, "near_duplicate": dup, "leak": leak, "outlier": out,
            "copy_kind": np.r_[np.full(n, ""), kind, np.full(c - a, "")]}


def mlp_features(images, labels, split, seed: int) -> np.ndarray:
    """The hidden layer (256 ReLU units) of an MLP trained on the training rows: (N, 256) float32."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x = images.reshape(len(images), -1).astype(np.float32) / 255
    tr = split == "train"
    clf = MLPClassifier(hidden_layer_sizes=(256,), max_iter=30, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x[tr], labels[tr])
    return np.maximum(x @ clf.coefs_[0] + clf.intercepts_[0], 0).astype(np.float32)


def _pr(flag, truth) -> tuple[float, float]:
    tp = int((flag & truth).sum())
    return tp / max(1, int(flag.sum())), tp / max(1, int(truth.sum()))


class _DatalabInfo:
    """What Datalab's issue managers read from their Datalab: its labels and its ``statistics`` info."""

    def __init__(self, labels):
        self.labels, self.info = labels, {"statistics": {}}

    def get_info(self, key):
        return self.info.setdefault(key, {})


def datalab(labels, features) -> tuple[np.ndarray, np.ndarray, float, str, np.ndarray]:
    """Datalab's near_duplicate and outlier flags with its defaults, its seconds, how it ran and its
    outlier score (lower = more outlying).

    ``Datalab`` itself needs the ``datasets`` package; where that is missing, its two issue managers
    (``NearDuplicateIssueManager``, ``OutlierIssueManager``, the code ``find_issues`` runs for these
    issue types, with the same defaults and a shared k-NN graph) run on a stand-in holding the labels."""
    t0 = time.perf_counter()
    try:
        from cleanlab import Datalab

        lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
        lab.find_issues(features=features, issue_types={"near_duplicate": {}, "outlier": {}})
        nd = lab.get_issues("near_duplicate")["is_near_duplicate_issue"].to_numpy(bool)
        ou = lab.get_issues("outlier")["is_outlier_issue"].to_numpy(bool)
        ou_score = lab.get_issues("outlier")["outlier_score"].to_numpy(float)
        how = "Datalab"
    except ImportError:
        from cleanlab.datalab.internal.issue_manager.duplicate import NearDuplicateIssueManager
        from cleanlab.datalab.internal.issue_manager.outlier import OutlierIssueManager

        info = _DatalabInfo(labels)
        managers = [NearDuplicateIssueManager(datalab=info), OutlierIssueManager(datalab=info)]
        for m in managers:
            m.find_issues(features=features)
        nd = managers[0].issues["is_near_duplicate_issue"].to_numpy(bool)
        ou = managers[1].issues["is_outlier_issue"].to_numpy(bool)
        ou_score = managers[1].issues["outlier_score"].to_numpy(float)  # lower = more outlying
        how = "Datalab issue managers (no datasets package)"
    return nd, ou, time.perf_counter() - t0, how, ou_score


def embedding_cosine_copies(features, threshold: float = 0.99) -> np.ndarray:
    """Rows whose nearest other row has embedding cosine ≥ threshold."""
    from audit.neighbors import search

    sims, idx, _ = search(features, features, 2, method="exact", device="cpu")
    other = np.where(idx[:, 0] == np.arange(len(features)), sims[:, 1], sims[:, 0])
    return other >= threshold


def run_one(name: str, images, labels, seed: int) -> list[dict]:
    from audit.issues.duplicates import find_copies
    from audit.issues.outliers import find_outliers, pixel_vectors

    d = planted(images, labels, seed)
    x, y, s = d["images"], d["labels"], d["split"]
    tr = s == "train"
    rows = []

    def add(issue, method, emb, flag, truth, seconds, score=None):
        from sklearn.metrics import roc_auc_score

        p, r = _pr(flag, truth)
        auroc = roc_auc_score(truth, score) if score is not None and 0 < truth.sum() < len(truth) else np.nan
        rows.append({"dataset": name, "seed": seed, "issue": issue, "method": method, "embedding": emb,
                     "precision": p, "recall": r, "auroc": auroc, "flagged": int(flag.sum()),
                     "planted": int(truth.sum()), "seconds": round(seconds, 2)})

    t0 = time.perf_counter()
    copies = find_copies(x, s)
    t_copy = time.perf_counter() - t0
    add("near_duplicate", "ours", "pixels", copies["is_near_duplicate_issue"][tr], d["near_duplicate"][tr], t_copy)
    add("leak", "ours", "pixels", copies["is_leak_issue"][~tr], d["leak"][~tr], t_copy)
    for k in ("exact", "shift", "brightness", "reencode"):
        m = tr & (d["copy_kind"] == k)
        add(f"near_duplicate:{k}", "ours", "pixels", copies["is_near_duplicate_issue"][m], d["near_duplicate"][m], 0)
    embeddings = {"pixels": pixel_vectors(x), "mlp": mlp_features(x, y, s, seed)}
    for emb_name, emb in embeddings.items():
        t0 = time.perf_counter()
        out = find_outliers(emb, y, s)
        add("outlier", "ours", emb_name, out["is_outlier_issue"][tr], d["outlier"][tr], time.perf_counter() - t0,
            out["outlier_score"][tr])
        nd, ou, sec, how, ou_score = datalab(y[tr], emb[tr])
        HOW.add(how)
        add("near_duplicate", "datalab", emb_name, nd, d["near_duplicate"][tr], sec)
        add("outlier", "datalab", emb_name, ou, d["outlier"][tr], sec, -ou_score)
        t0 = time.perf_counter()
        add("near_duplicate", "embedding_cosine", emb_name, embedding_cosine_copies(emb[tr]), d["near_duplicate"][tr],
            time.perf_counter() - t0)
    return rows


def clean_quality_maxima(name: str, images) -> dict:
    from audit.issues.quality import image_statistics, quality_scores

    q, _ = quality_scores(image_statistics(images))
    return {"dataset": name, **{k.removesuffix("_score"): round(float(v.max()), 3) for k, v in q.items()
                                if k.endswith("_score")}}


def ci95(x: pd.Series) -> float:
    from scipy import stats

    x = x.dropna()
    return float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def cleanvision_available() -> str:
    """Whether ``pip download cleanvision --no-deps`` works here (nothing is installed)."""
    import subprocess
    import sys
    import tempfile

    try:
        import cleanvision  # noqa: F401

        return "installed"
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "cleanvision", "--no-deps", "-d", d, "-q"],
                           capture_output=True, text=True, timeout=120)
        return "downloadable (not installed)" if r.returncode == 0 else "not available: " + (r.stderr.strip().splitlines() or ["?"])[-1][:200]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--datasets", default="digits,mnist10k")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--check-cleanvision", action="store_true", help="also try `pip download cleanvision --no-deps`")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    rows, maxima = [], []
    for name in args.datasets.split(","):
        data = load(name)
        if data is None:
            print(f"{name}: {MNIST10K} not found, skipped")
            continue
        maxima.append(clean_quality_maxima(name, data[0]))
        for seed in map(int, args.seeds.split(",")):
            rows += run_one(name, *data, seed)
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format="%.4f")
    g = df.groupby(["dataset", "issue", "method", "embedding"], sort=False)
    summary = g.agg(precision=("precision", "mean"), precision_ci95=("precision", ci95), recall=("recall", "mean"),
                    recall_ci95=("recall", ci95), auroc=("auroc", "mean"), flagged=("flagged", "mean"), planted=("planted", "mean"),
                    seconds=("seconds", "mean"), seeds=("seed", "nunique")).reset_index()
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print("\nlargest quality scores on the clean images (thresholds: dark 0.5, light 0.5, blurry 0.8, "
              "low_information 0.8):")
        print(pd.DataFrame(maxima).to_string(index=False))
    print(f"\ndatalab ran as: {', '.join(sorted(HOW))}")
    if args.check_cleanvision:
        print(f"\ncleanvision: {cleanvision_available()}")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
