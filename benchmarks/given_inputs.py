"""Bring your own model: what a user's out-of-sample probabilities add, and what they cost.

    python benchmarks/given_inputs.py --suite benchmarks/data/suite1 --sets fashion_idn,digits_idn --seed 1

For each set of ``benchmarks/devsuite.py`` (``make`` writes them; the noise there is instance-dependent)
an outside model is trained the way a user would make out-of-sample probabilities: a small CNN (two
conv layers, not the audit's architectures), cross-fitted over 4 folds of all rows (each row's
probabilities and penultimate features come from the fold that held it out), 8 epochs of Adam. Then
three audits of the same data and seed, each a real ``audit run``:

* ``given only``: ``--models none --pred-probs P --features F`` (no training);
* ``audit``: the default recipe;
* ``audit + given``: the default recipe with ``--pred-probs P --features F``.

Printed and appended to ``benchmarks/results/given_inputs.csv``: AUPRC of ``issue_score`` against the
truth, the AUPRC of cleanlab's workflow on the audit's own folds (``cleanlab_score``) and on the given
probabilities (``given_cleanlab_score``), flags (precision / recall), which score the canaries chose,
the given model's health checks, seconds of the outside model and of each audit. Timings on a shared
machine are inflated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from devsuite import spec_of, truth_of  # noqa: E402


def outside_model(images: np.ndarray, labels: np.ndarray, k: int, seed: int, folds: int = 4, epochs: int = 8):
    """Cross-fitted probabilities (N, k) and features (N, 64) of a small CNN over all rows."""
    import torch
    from torch import nn

    x = torch.from_numpy(images.astype(np.float32) / 255)
    if x.ndim == 3:
        x = x[:, None]
    elif x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    y = torch.from_numpy(labels.astype(np.int64))
    rng = np.random.default_rng(seed)
    fold = rng.permutation(len(y)) % folds
    probs, feats = np.zeros((len(y), k)), np.zeros((len(y), 64), np.float32)
    for f in range(folds):
        torch.manual_seed(seed * 100 + f)
        body = nn.Sequential(nn.Conv2d(x.shape[1], 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                             nn.Linear(32 * 16, 64), nn.ReLU())
        head = nn.Linear(64, k)
        opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=2e-3)
        fit = np.flatnonzero(fold != f)
        for _ in range(epochs):
            for b in np.array_split(rng.permutation(fit), max(1, len(fit) // 64)):
                opt.zero_grad()
                nn.functional.cross_entropy(head(body(x[b])), y[b]).backward()
                opt.step()
        held = np.flatnonzero(fold == f)
        with torch.no_grad():
            h = body(x[held])
            probs[held] = torch.softmax(head(h).double(), 1).numpy()
            feats[held] = h.numpy()
    return probs, feats


def score(run: Path, suite: Path, name: str) -> dict:
    import pandas as pd
    from sklearn.metrics import average_precision_score as ap

    ex = pd.read_parquet(run / "examples.parquet")
    man = json.loads((run / "manifest.json").read_text())
    tr = ex[ex["split"] == "train"]
    truth = truth_of(suite, name, tr)
    flags = tr["is_label_issue"].to_numpy(bool)
    tp = int((flags & truth).sum())
    given_checks = {c["check"]: c["ok"] for c in man["health"]["checks"] if c["model"] == "given"}
    out = {"audit_auprc": ap(truth, tr["issue_score"]), "flagged": int(flags.sum()),
           "precision": tp / max(1, flags.sum()), "recall": tp / max(1, truth.sum()),
           "chosen": man["signal_selection"]["chosen"], "given_checks": json.dumps(given_checks),
           "audit_seconds": man["metrics"]["compute_seconds"], "noise": float(truth.mean()), "n_train": len(tr)}
    for col in ("cleanlab_score", "given_cleanlab_score"):
        if col in tr and tr[col].notna().all():
            out[col.replace("_score", "_auprc")] = ap(truth, tr[col])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="benchmarks/data/suite1")
    ap.add_argument("--sets", default="fashion_idn,digits_idn")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", default="/tmp/audit-given-bench")
    ap.add_argument("--csv", default="benchmarks/results/given_inputs.csv")
    args = ap.parse_args()
    import pandas as pd

    from audit.config import RunConfig
    from audit.pipeline import prepare_dataset

    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    rows = []
    suite = Path(args.suite)
    for name in args.sets.split(","):
        spec = spec_of(suite, name)
        work = Path(args.work) / f"{name}_s{args.seed}"
        work.mkdir(parents=True, exist_ok=True)
        ds = prepare_dataset(RunConfig(dataset=spec, seed=args.seed))
        t0 = time.perf_counter()
        probs, feats = outside_model(np.asarray(ds.images), ds.labels, ds.num_classes, args.seed)
        outside_s = time.perf_counter() - t0
        np.save(work / "probs.npy", probs)
        np.save(work / "feats.npy", feats)
        given = ["--pred-probs", str(work / "probs.npy"), "--features", str(work / "feats.npy")]
        for mode, extra in (("given only", ["--models", "none", *given]), ("audit", []), ("audit + given", given)):
            out = work / mode.replace(" ", "_").replace("+", "plus")
            cmd = [sys.executable, "-m", "audit", "run", "--dataset", spec, "--seed", str(args.seed), "--out", str(out),
                   "--quiet", *extra]
            t1 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if r.returncode:
                print(f"{name} {mode}: {r.stderr.strip().splitlines()[-1]}", file=sys.stderr)
                continue
            row = {"set": name, "seed": args.seed, "mode": mode, **score(out, suite, name),
                   "outside_model_seconds": round(outside_s, 1), "wall_seconds": round(time.perf_counter() - t1, 1),
                   "load_avg": " ".join(f"{v:.2f}" for v in os.getloadavg())}
            rows.append(row)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    if rows:
        df = pd.DataFrame(rows)
        path = Path(args.csv)
        if path.exists():
            df = pd.concat([pd.read_csv(path), df], ignore_index=True)
        df.to_csv(path, index=False, float_format="%.4f")
        print(df[["set", "mode", "audit_auprc", "cleanlab_auprc", "given_cleanlab_auprc", "flagged", "precision",
                  "recall", "chosen", "audit_seconds"]].to_string(index=False))


if __name__ == "__main__":
    main()
