"""Coverage and width of the review queue's 90% interval (audit/calibration.py), old vs new, with
simulated reviewers on seeded synthetic queues whose truth is known.

    OMP_NUM_THREADS=1 python benchmarks/calibration_coverage.py [--sessions 40] [RUN ...]

Scenario grid (the generator is ``_scenario`` in tests/test_calibration.py): flags in four log-uniform
ranges 100–300, 300–1,000, 1,000–3,000, 3,000–10,000; reviews log-uniform 20–500; flag precision 5–95%,
falling down the queue; reviewed in queue order (``queue``), at random (``random``) or as the app's
protocol (``app``: the top of the queue plus 5–25 random checks). Per family (flag range × order) and
method: the share of sessions whose interval held the true errors left (target ≥ 0.88) with a 90%
Wilson interval over sessions, and the mean width of the interval, as a share of the unreviewed flags
and in examples. ``old`` is audit/calibration.py at commit d23aa4b (12 equal-count bands, bottom prior
N(0, 1.2²)), read with ``git show``; both use 1,000 posterior draws. Each RUN (a run directory with
injected noise) adds 100 sessions of the app's protocol on its real queue. Writes
benchmarks/results/calibration_coverage.csv.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import audit.calibration as new  # noqa: E402
from test_calibration import MODES, _decide, _scenario  # noqa: E402

OLD_COMMIT = "d23aa4b"
FLAG_RANGES = ((100, 300), (300, 1000), (1000, 3000), (3000, 10_000))
OUT = ROOT / "benchmarks" / "results" / "calibration_coverage.csv"


def old_module():
    """audit/calibration.py as it was before issue #22 item 12, or None without git."""
    try:
        src = subprocess.run(["git", "show", f"{OLD_COMMIT}:audit/calibration.py"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    mod = types.ModuleType("calibration_old")
    sys.modules["calibration_old"] = mod  # dataclasses look their module up
    exec(compile(src, f"calibration_old@{OLD_COMMIT}", "exec"), mod.__dict__)
    return mod


def wilson(hits: int, n: int, level: float = 0.9) -> tuple[float, float]:
    z = norm.ppf((1 + level) / 2)
    p = hits / n
    mid, half = (p + z * z / (2 * n)), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (mid - half) / (1 + z * z / n), (mid + half) / (1 + z * z / n)


def grid(methods: dict, sessions: int) -> list[dict]:
    rows = []
    for f, (lo_n, hi_n) in enumerate(FLAG_RANGES):
        for m, mode in enumerate(MODES):
            rng = np.random.default_rng([f, m])
            cases = [_scenario(rng, mode, int(round(np.exp(rng.uniform(np.log(lo_n), np.log(hi_n))))))
                     for _ in range(sessions)]
            for name, mod in methods.items():
                t0 = time.perf_counter()
                hits, rel, absw = 0, [], []
                for i, (out, truth, _) in enumerate(cases):
                    est = mod.estimate_from_outcomes(out, draws=1000, seed=i)
                    hits += est.remaining_low <= truth <= est.remaining_high
                    rel.append((est.remaining_high - est.remaining_low) / max(1, est.unreviewed))
                    absw.append(est.remaining_high - est.remaining_low)
                cl, ch = wilson(hits, sessions)
                rows.append({"family": f"{lo_n}-{hi_n} flags, {mode}", "flags": f"{lo_n}-{hi_n}", "order": mode,
                             "method": name, "sessions": sessions, "coverage": hits / sessions,
                             "coverage_low90": round(cl, 3), "coverage_high90": round(ch, 3),
                             "mean_width_share": round(float(np.mean(rel)), 4),
                             "mean_width": round(float(np.mean(absw)), 1),
                             "seconds": round(time.perf_counter() - t0, 1)})
                r = rows[-1]
                print(f"{r['family']:28s} {name:4s} coverage {r['coverage']:.2f} [{cl:.2f}, {ch:.2f}]  "
                      f"width {r['mean_width_share']:.3f} of unreviewed ({r['mean_width']:.0f})", flush=True)
    return rows


def run_sessions(methods: dict, run: str, sessions: int = 100) -> list[dict]:
    """The app's protocol on a real run's queue: a random stretch from the top, 5–25 random checks."""
    ex = pd.read_parquet(Path(run) / "examples.parquet")
    q = new.queue_order(ex)
    wrong = q["given_label"].to_numpy() != q["clean_label"].to_numpy()
    rows = []
    for name, mod in methods.items():
        rng = np.random.default_rng(0)
        hits, rel = 0, []
        for i in range(sessions):
            rev = np.zeros(len(q), bool)
            rev[:int(rng.integers(0, len(q) + 1))] = True
            checks = new.random_sample(ex, int(rng.integers(5, 26)), int(rng.integers(1 << 30)), flagged=True)
            rev |= q["example_id"].isin(checks).to_numpy()
            est = mod.estimate_queue(ex, _decide(q[rev]), draws=1000, seed=i)
            hits += est.remaining_low <= int(wrong[~rev].sum()) <= est.remaining_high
            rel.append((est.remaining_high - est.remaining_low) / max(1, est.unreviewed))
        cl, ch = wilson(hits, sessions)
        rows.append({"family": f"run {run}", "flags": str(len(q)), "order": "app", "method": name,
                     "sessions": sessions, "coverage": hits / sessions, "coverage_low90": round(cl, 3),
                     "coverage_high90": round(ch, 3), "mean_width_share": round(float(np.mean(rel)), 4),
                     "mean_width": np.nan, "seconds": np.nan})
        print(f"{run}: {name} flag precision {wrong.mean():.2f} coverage {hits / sessions:.2f} "
              f"width {np.mean(rel):.3f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*")
    ap.add_argument("--sessions", type=int, default=40, help="sessions per family and method")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    methods = {"new": new}
    old = old_module()
    if old is not None:
        methods = {"old": old, "new": new}
    rows = grid(methods, args.sessions)
    for run in args.runs:
        rows += run_sessions(methods, run)
    df = pd.DataFrame(rows)
    summary = df[~df.family.str.startswith("run ")].groupby(["method", "order"])[
        ["coverage", "mean_width_share"]].mean().round(3)
    print(summary.to_string())
    out = Path(args.out)
    tmp = out.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
