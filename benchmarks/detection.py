"""Detection quality: the audit's issue_score / is_label_issue against cleanlab's documented workflow.

    python benchmarks/detection.py [--dataset digits] [--kinds symmetric,pair,confusion,mixed]
                                   [--rates 0.1,0.2,0.4] [--seed 0] [--set eps=0.1 ...]
                                   [--out benchmarks/results/detection.csv]

Real image data beyond the bundled digits: ``npz:/work/shared/datasets/mnist10k.npz`` (10,000 MNIST
digits, where present) and Fashion-MNIST from ``python benchmarks/fetch_fashion_mnist.py``.

For each noise kind and rate it runs a full audit (``audit.run_audit``) and reads, from the same run:

* the audit: AUROC / AUPRC of ``issue_score`` and precision / recall of ``is_label_issue`` against
  ``is_injected_noise``; compute = the run's whole wall time;
* the baseline, cleanlab's documented workflow on the same data: K-fold out-of-sample probabilities from
  the same model family (the run's cross-validation stage: ``folds`` natural models), then
  ``cleanlab.filter.find_label_issues`` (``is_cleanlab_issue``) and its label-quality ranking
  (``cleanlab_score``); compute = that stage's wall time.

It prints one JSON line per setting and a summary: the target is 1 − AUPRC of the audit at most two
thirds of the baseline's, at no more than 3× its compute.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from audit.config import config_from_dict
from audit.pipeline import run_audit


def _pr(flag: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    tp = int((flag & truth).sum())
    return tp / max(1, int(flag.sum())), tp / max(1, int(truth.sum()))


def evaluate(run_dir: Path, manifest: dict) -> dict:
    df = pd.read_parquet(run_dir / "examples.parquet")
    tr = df[df.split == "train"]
    truth = tr["is_injected_noise"].to_numpy(bool)
    p, r = _pr(tr["is_label_issue"].to_numpy(bool), truth)
    bp, br = _pr(tr["is_cleanlab_issue"].to_numpy(bool), truth)
    st = manifest["stages"]
    return {
        "audit_auroc": roc_auc_score(truth, tr["issue_score"]), "audit_auprc": average_precision_score(truth, tr["issue_score"]),
        "audit_precision": p, "audit_recall": r, "audit_seconds": manifest["metrics"]["wall_seconds"],
        "cleanlab_auroc": roc_auc_score(truth, tr["cleanlab_score"]),
        "cleanlab_auprc": average_precision_score(truth, tr["cleanlab_score"]),
        "cleanlab_precision": bp, "cleanlab_recall": br, "cleanlab_seconds": st["crossval"]["seconds"],
        "chosen": manifest["signal_selection"]["chosen"], "members": ",".join(manifest["signal_selection"]["members"]),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--kinds", default="symmetric,pair,confusion")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a run option for every setting (RunConfig field), e.g. eps=0.1")
    ap.add_argument("--rates", default="0.1,0.2,0.4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="natural,pgd")
    ap.add_argument("--out", default=None, help="CSV of all rows (default: print only)")
    ap.add_argument("--workdir", default=None, help="keep the run directories here")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="detection-"))
    extra = {}
    for kv in args.set:
        key, _, val = kv.partition("=")
        try:
            extra[key] = json.loads(val)
        except ValueError:
            extra[key] = val
    config_from_dict(extra)  # unknown keys fail here, before any training
    rows = []
    for kind in args.kinds.split(","):
        for rate in map(float, args.rates.split(",")):
            cfg = config_from_dict({"dataset": args.dataset, "noise": rate, "noise_kind": kind, "seed": args.seed,
                                    "models": args.models, **extra})
            out = work / f"{Path(args.dataset.split(':')[-1]).stem}-{kind}-{rate}"
            shutil.rmtree(out, ignore_errors=True)  # compute is measured from scratch, never from a cache
            t0 = time.perf_counter()
            man = run_audit(cfg, out, progress=False)
            row = {"dataset": args.dataset, "kind": kind, "rate": rate, **evaluate(out, man),
                   "fresh_seconds": round(time.perf_counter() - t0, 1)}
            row["missed_ratio"] = (1 - row["audit_auprc"]) / max(1e-9, 1 - row["cleanlab_auprc"])
            row["compute_ratio"] = row["audit_seconds"] / max(1e-9, row["cleanlab_seconds"])
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    df = pd.DataFrame(rows)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out, index=False)
    ok = (df.missed_ratio <= 2 / 3) & (df.compute_ratio <= 3)
    print(f"target met (1-AUPRC <= 2/3 of cleanlab's at <= 3x compute) in {int(ok.sum())} of {len(df)} settings; "
          f"median missed ratio {df.missed_ratio.median():.3f}, median compute ratio {df.compute_ratio.median():.2f}")


if __name__ == "__main__":
    main()
