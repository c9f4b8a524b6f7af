"""Coverage of the review queue's 90% interval (audit/calibration.py) with simulated reviewers.

    python benchmarks/calibration_coverage.py RUN [RUN ...]

For each run directory with injected noise, and for synthetic score/noise data (flag precision
0.4–0.9), 100 simulated review sessions per seed: a reviewer who decides by the true labels reviews a
random stretch from the top of the queue plus the first 5–25 of the app's random flagged checks
(the protocol of tests/test_calibration.py, whose helpers this uses). Prints the share of sessions whose
interval held the true number of errors left (target 0.85–0.95).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_calibration import _coverage, _synthetic  # noqa: E402


def main(runs: list[str]) -> None:
    for run in runs:
        ex = pd.read_parquet(Path(run) / "examples.parquet")
        fl = ex[(ex.split == "train") & ex.is_label_issue]
        cov = [_coverage(lambda rng, d=ex: d, seed=s) for s in (0, 1)]
        print(f"{run}: flag precision {fl.is_injected_noise.mean():.2f}; coverage "
              + ", ".join(f"{c:.2f}" for c in cov) + " (session seeds 0, 1)")
    cov = [_coverage(_synthetic, seed=s) for s in (0, 1, 2)]
    print("synthetic score/noise data: coverage " + ", ".join(f"{c:.2f}" for c in cov) + " (seeds 0, 1, 2)")


if __name__ == "__main__":
    main(sys.argv[1:])
