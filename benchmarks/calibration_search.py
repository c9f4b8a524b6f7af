"""The radius calibration's search order: largest radius first against bisection, on the same data in one
process.

    OMP_NUM_THREADS=1 python benchmarks/calibration_search.py --suite benchmarks/data/suite1 --seed 1 \\
        [--sets NAME[,NAME]] [--csv benchmarks/results/calibration_search.csv]

For each set of a development suite (``benchmarks/devsuite.py make``) whose images calibrate on a subset
(the colour sets judge their top radius on the run's own model instead), the data are prepared exactly as
``audit run --dataset SPEC --seed S --threads 1`` prepares them, and
:func:`audit.train.calibrate.calibrate_eps` runs twice, with its early accept: trying the ladder largest
first (``SEARCH = "top_down"``, stop 33), then by bisection (the default). Printed and written per set: the
radius each chose, the radii each tried in order, and the seconds each took.
"""

from __future__ import annotations

import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from calibration_early import append_csv, calibrate, parse_args  # noqa: E402


def main() -> None:
    import devsuite

    args = parse_args(__doc__, [s for s in devsuite.SETS if not s.startswith("colour")])
    rows = []
    for name in args.sets.split(","):
        spec = devsuite.spec_of(Path(args.suite), name)
        down, t_down = calibrate(spec, args.seed, early=True, search="top_down")
        bis, t_bis = calibrate(spec, args.seed, early=True, search="bisect")
        row = {"suite": Path(args.suite).name, "seed": args.seed, "set": name,
               "eps_top_down": down["eps"], "eps_bisect": bis["eps"],
               "fallback_top_down": down["fallback"], "fallback_bisect": bis["fallback"],
               "seconds_top_down": round(t_down, 1), "seconds_bisect": round(t_bis, 1),
               "tried_top_down": " ".join(f"{t['eps']:.4g}" for t in down["tried"]),
               "tried_bisect": " ".join(f"{t['eps']:.4g}" for t in bis["tried"]),
               "need": bis["need"], "held_out": bis["held_out"]}
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    if args.csv:
        append_csv(rows, Path(args.csv))

if __name__ == "__main__":
    main()
