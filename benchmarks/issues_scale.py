"""Time and memory of the issues stage's two searches against dataset size: near copies and outliers.

    OMP_NUM_THREADS=1 python benchmarks/issues_scale.py [--sizes 100000,300000] [--threads 1]
        [--dir /tmp/audit-scale] [--out benchmarks/results/issues_scale.json]

For each N, the synthetic 28×28 grey images of ``benchmarks/scale.py`` (``write_synthetic``: 10 classes,
each a fixed random template plus noise, the last N/6 rows the test split) are written once to
``DIR/synthetic-N.npz``. A fresh subprocess (so peak RSS is per size) loads them, plants near copies
and outliers with known answers, and times what :func:`audit.issues.find_issues` runs for these two
types, with the defaults the pipeline uses (``method="auto"``: exact below the thresholds, the
approximate paths past them):

- ``copies``: :func:`audit.issues.duplicates.find_copies` on the images. ``PLANT_COPIES`` training rows
  are overwritten with near copies of other training rows (half a 1-pixel shift, half a brightness
  change, :func:`audit.issues.planted.near_copy`); ``copy_recall`` is the share of them flagged
  ``is_near_duplicate_issue`` with their source in the same ``duplicate_group``.
- ``outliers``: :func:`audit.issues.outliers.find_outliers` on 64-d embeddings standing in for a
  model's penultimate features: a class centre plus a point of an 8-dimensional latent space mapped
  into the 64 dimensions, plus small isotropic noise (features of a trained network have a low
  intrinsic dimension; isotropic 64-d Gaussian vectors would have none, and no index helps there).
  ``PLANT_OUTLIERS`` rows get uniformly random directions instead; ``outlier_recall`` is the share
  of them flagged ``is_outlier_issue``.

Peak RSS is the subprocess's ``ru_maxrss`` after each step (a step's figure includes those before it).
Prints one JSON line per size and writes them all to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PLANT_COPIES = 1000
PLANT_OUTLIERS = 200
EMB_DIM, LATENT_DIM = 64, 8


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def embeddings(labels: np.ndarray, seed: int = 1) -> np.ndarray:
    """float32 (N, EMB_DIM): class centre + latent (LATENT_DIM) mapped linearly + noise, in chunks."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(int(labels.max()) + 1, EMB_DIM)).astype(np.float32)
    maps = rng.normal(size=(len(centres), LATENT_DIM, EMB_DIM)).astype(np.float32) / np.sqrt(LATENT_DIM)
    out = np.empty((len(labels), EMB_DIM), np.float32)
    for s in range(0, len(labels), 65536):
        y = labels[s:s + 65536]
        z = rng.normal(size=(len(y), LATENT_DIM)).astype(np.float32)
        out[s:s + len(y)] = centres[y] + np.einsum("nl,nld->nd", z, maps[y]) + 0.1 * rng.normal(size=(len(y), EMB_DIM))
    return out


def child(path: str, threads: int) -> dict:
    import torch

    from audit.issues.duplicates import find_copies
    from audit.issues.outliers import find_outliers
    from audit.issues.planted import near_copy
    from audit.neighbors import resolve_threads

    torch.set_num_threads(resolve_threads(threads))
    res = {"threads": torch.get_num_threads(), "rss_start_mb": _peak_mb()}
    t = time.perf_counter()
    with np.load(path) as z:
        images, labels, split = z["images"][:, None], z["labels"], z["split"].astype(str)
    n = len(labels)
    res.update(n=n, n_train=int((split == "train").sum()), load_s=round(time.perf_counter() - t, 2), rss_load_mb=_peak_mb())
    rng = np.random.default_rng(2)
    tr = np.flatnonzero(split == "train")
    pick = rng.choice(tr, 2 * PLANT_COPIES, replace=False)
    src, dst = pick[:PLANT_COPIES], pick[PLANT_COPIES:]
    for i, (s, d) in enumerate(zip(src, dst)):
        images[d] = near_copy(images[s], ("shift", "brightness")[i % 2], rng)
    emb = embeddings(labels)
    odd = rng.choice(n, PLANT_OUTLIERS, replace=False)
    emb[odd] = rng.normal(size=(PLANT_OUTLIERS, EMB_DIM)) * np.linalg.norm(emb[:1000], axis=1).mean() / np.sqrt(EMB_DIM)

    t = time.perf_counter()
    cp = find_copies(images, split)
    res.update(copies_s=round(time.perf_counter() - t, 1), rss_copies_mb=_peak_mb())
    g = cp["duplicate_group"]
    found = cp["is_near_duplicate_issue"][dst] & (g[dst] == g[src])
    res.update(copy_recall=round(float(found.mean()), 4),
               copy_recall_shift=round(float(found[0::2].mean()), 4),
               copy_recall_brightness=round(float(found[1::2].mean()), 4),
               near_duplicate_flagged=int(cp["is_near_duplicate_issue"].sum()),
               leak_flagged=int(cp["is_leak_issue"].sum()))
    del cp
    t = time.perf_counter()
    ot = find_outliers(emb, labels, split)
    res.update(outliers_s=round(time.perf_counter() - t, 1), rss_outliers_mb=_peak_mb())
    res.update(outlier_recall=round(float(ot["is_outlier_issue"][odd].mean()), 4),
               outlier_flagged=int(ot["is_outlier_issue"].sum()))
    res["total_s"] = round(res["copies_s"] + res["outliers_s"], 1)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,300000")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dir", default="/tmp/audit-scale")
    ap.add_argument("--out", default=None, help="write the JSON lines here too")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scale import write_synthetic

    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        d = Path(args.dir)
        d.mkdir(parents=True, exist_ok=True)
        path = write_synthetic(n, d / f"synthetic-{n}.npz")
        cmd = [sys.executable, __file__, "--child", str(path), "--threads", str(args.threads)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"N={n}: the measuring subprocess failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["process_s"] = round(time.perf_counter() - t, 1)
        rows.append(r)
        print(json.dumps(r), flush=True)
        if args.out:
            Path(args.out).write_text("".join(json.dumps(x) + "\n" for x in rows))


if __name__ == "__main__":
    main()
