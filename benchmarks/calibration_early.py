"""The radius calibration with and without its early accept, on the same data in one process.

    OMP_NUM_THREADS=1 python benchmarks/calibration_early.py --suite benchmarks/data/suite1 --seed 1 \
        [--sets NAME[,NAME]] [--csv benchmarks/results/calibration_early.csv]

For each set of a development suite (``benchmarks/devsuite.py make``), the data are prepared exactly as
``audit run --dataset SPEC --seed S --threads 1`` prepares them (defaults resolved, canaries planted), and
:func:`audit.train.calibrate.calibrate_eps` runs twice: to the end of every training (``EARLY = False``,
the checks only recorded), then stopping at the first check that passes (the default). Printed and written
per set: the radius each chose, the seconds each took, and the epochs the chosen radius trained.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def calibrate(spec: str, seed: int, early: bool, search: str | None = None) -> tuple[dict, float]:
    from audit.config import RunConfig, resolve_defaults, validate_config
    from audit.data.base import TRAIN
    from audit.pipeline import build_train_data, prepare_dataset
    from audit.recipes import train_recipe
    from audit.rows import subset
    from audit.train import calibrate as cal

    cfg = RunConfig(dataset=spec, seed=seed, threads=1)
    ds = prepare_dataset(cfg)
    cfg = validate_config(resolve_defaults(cfg, ds.shape, int((ds.split == TRAIN).sum()), False))
    data, _ = build_train_data(ds, cfg)
    robust = [m for m in cfg.models if m != "natural"][0]
    nat, rob = train_recipe(cfg, "natural"), train_recipe(cfg, robust)
    real = np.flatnonzero(~data.is_canary)
    cal.EARLY = early
    if search is not None:
        cal.SEARCH = search
    t0 = time.perf_counter()
    res = cal.calibrate_eps(subset(data.train_images, real), data.train_labels[real], data.num_classes, nat, rob,
                            device=torch.device("cpu"), budget_rows=rob.epochs * len(data.train_labels))
    return res, time.perf_counter() - t0


def parse_args(doc: str, sets) -> argparse.Namespace:
    """The benchmark's options (``--suite``, ``--seed``, ``--sets``, ``--csv``); one torch thread."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--suite", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", default=",".join(sets))
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    return args


def main() -> None:
    import devsuite

    args = parse_args(__doc__, devsuite.SETS)
    rows = []
    for name in args.sets.split(","):
        spec = devsuite.spec_of(Path(args.suite), name)
        full, t_full = calibrate(spec, args.seed, early=False)
        early, t_early = calibrate(spec, args.seed, early=True)
        last = early["tried"][-1]
        row = {"suite": Path(args.suite).name, "seed": args.seed, "set": name,
               "eps_full": full["eps"], "eps_early": early["eps"],
               "fallback_full": full["fallback"], "fallback_early": early["fallback"],
               "seconds_full": round(t_full, 1), "seconds_early": round(t_early, 1), "need": full["need"],
               "held_out": full["held_out"],
               "radii_tried": len(early["tried"]), "chosen_epochs_run": last["epochs_run"], "chosen_epochs": last["epochs"],
               "checks_full": ";".join(f"{t['eps']:.4g}:" + ",".join(f"{e}={a}" for e, a in t["checks"])
                                       + f",end={t['robust_accuracy']}" for t in full["tried"])}
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    if args.csv:
        append_csv(rows, Path(args.csv))


def append_csv(rows: list[dict], out: Path) -> None:
    """Add ``rows`` to the CSV ``out`` (written to a temporary name, then renamed)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if out.exists():
        df = pd.concat([pd.read_csv(out), df], ignore_index=True)
    tmp = out.with_name(f".{out.name}.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(out)


if __name__ == "__main__":
    main()
