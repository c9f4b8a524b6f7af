"""Does cleaning pay? The (a) given / (b) cleaned / (c) true-label table of ``audit verify``.

    python benchmarks/verify_gain.py                                   # digits, 10% symmetric noise
    python benchmarks/verify_gain.py --dataset npz:PATH/mnist10k.npz --noise 0.15
    python benchmarks/verify_gain.py --run RUN_DIR                     # an existing run directory

Without ``--run`` it first audits the dataset with injected noise (``audit run``, reused when the
run directory already holds it: ``--out``, default ``artifacts/verify-<name>-noise<rate>``), then runs
``audit verify`` on it: the run's recipe retrained over ``--seeds`` seeds on the given labels, on the
cleaned labels (``--apply suggested``: the tool's suggestions on the flagged rows, review decisions
overriding) and on the true labels, and prints the table with the share of the ceiling's gain in the
natural model's adversarial accuracy that cleaning recovers, at the run's eps and at eps / 4.
``--json`` also writes the summary (one JSON object) to a file.

Heavy on MNIST: 3 variants × 3 seeds × 2 models at the MNIST-like recipe (about 30 minutes on 2 CPU
cores, a few on a GPU). Digits: about 2 minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from audit.config import RunConfig
from audit.io import write_json
from audit.pipeline import run_audit
from audit.verify import format_table, verify_run


def ensure_run(dataset: str, noise: float, out: Path, seed: int) -> Path:
    """Audit ``dataset`` with ``noise`` injected into ``out`` (the stages already there are reused)."""
    run_audit(RunConfig(dataset=dataset, models=("natural", "pgd"), noise=noise, seed=seed), out, progress=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", help="dataset spec (default digits)")
    p.add_argument("--noise", type=float, default=None, help="injected noise rate (default 0.1; 0.15 for npz)")
    p.add_argument("--run", type=Path, default=None, help="verify this run directory instead of auditing first")
    p.add_argument("--out", type=Path, default=None, help="run directory to audit into")
    p.add_argument("--seed", type=int, default=0, help="the audit's seed (default 0)")
    p.add_argument("--seeds", type=int, default=3, help="verify seeds (default 3)")
    p.add_argument("--apply", choices=("suggested", "decisions"), default="suggested")
    p.add_argument("--epochs-scale", type=float, default=None, help="shorten every training (default 1)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, default=None, help="also write the summary here")
    a = p.parse_args(argv)
    run = a.run
    if run is None:
        noise = a.noise if a.noise is not None else (0.15 if a.dataset.startswith("npz:") else 0.1)
        name = Path(a.dataset.partition(":")[2]).stem if ":" in a.dataset else a.dataset
        run = ensure_run(a.dataset, noise, a.out or Path("artifacts") / f"verify-{name}-noise{noise:g}", a.seed)
    rep = verify_run(run, seeds=a.seeds, apply=a.apply, epochs_scale=a.epochs_scale, device=a.device,
                     log=lambda m: print(f"[verify] {m}", file=sys.stderr, flush=True))
    print(f"{rep['dataset']}  ({run})")
    print(format_table(rep))
    if a.json:
        write_json(a.json, rep)
    print(json.dumps({"dataset": rep["dataset"], "gain_recovered": rep["gain_recovered"], "seconds": rep["seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
