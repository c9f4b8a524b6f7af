"""``audit batch FILE.toml --out DIR``: many audits from one file, one sub-folder per run, a summary table."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from audit.commands.run import add_run_options
from audit.config import RunConfig
from audit.errors import AuditInputError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "batch", help="run many audits from a TOML file ([[run]] tables) and write a summary table",
        description="Run every [[run]] table of FILE.toml (keys: name, dataset, models, noise, seed and any run "
                    "option, with _ for -; an optional [defaults] table applies to all runs) into OUT/<name>. "
                    "Completed runs are skipped, a failed run is reported and the batch goes on; OUT/summary.csv "
                    "and OUT/summary.parquet list every run. Run options given here override the file for every run. "
                    "Exit code 1 when any run failed.")
    p.add_argument("file", help="batch file (TOML)")
    p.add_argument("--out", required=True, help="batch directory: one sub-folder per run, summary.csv, summary.parquet")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--report", action="store_true", help="also write report.html into every completed run")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="audits at once (default: 1 with --engine local, 2 with --engine ray)")
    g = p.add_argument_group("run options (override the file for every run)")
    add_run_options(g)
    # Only flags actually given may override the file, so these options get no default at all.
    for action in g._group_actions:
        action.default = argparse.SUPPRESS
    p.set_defaults(func=main)


def overrides_from_args(args) -> dict:
    """The run options given on the command line (RunConfig field -> value)."""
    given = vars(args)
    return {f.name: given[f.name] for f in fields(RunConfig) if f.name in given}


def main(args) -> int:
    from audit.batch import load_batch, run_batch

    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise AuditInputError(f"--max-concurrent {args.max_concurrent}: must be ≥ 1")
    runs = load_batch(args.file, overrides_from_args(args))  # every check before any training

    def event(name: str, status: str, detail: str) -> None:
        if status != "running" or args.quiet:
            print(f"[{status}] {name}: {detail}", file=sys.stderr, flush=True)

    cap = args.max_concurrent or (2 if any(r.config.engine == "ray" for r in runs) else 1)
    df = run_batch(runs, args.out, progress=not args.quiet, source=str(args.file), on_event=event,
                   max_concurrent=cap)
    if args.report:
        from audit.report import build_report

        for name, status, run_dir in zip(df["name"], df["status"], df["run_dir"]):
            if status in ("complete", "skipped"):
                build_report(run_dir)
    cols = ["name", "status", "num_flagged_train", "estimated_noise_rate", "natural_test_accuracy",
            "natural_test_adv_accuracy", "robust_test_accuracy", "robust_test_adv_accuracy", "wall_seconds"]
    print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    failed = df.loc[df["status"] == "failed", ["name", "error"]]
    for name, err in failed.itertuples(index=False):
        print(f"failed: {name}: {err} (traceback in {args.out}/{name}/error.txt)", file=sys.stderr)
    print(f"wrote {args.out}/summary.csv and summary.parquet ({len(df)} runs, {len(failed)} failed)")
    return 1 if len(failed) else 0
