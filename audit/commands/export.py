"""``audit export RUN --out FILE.csv|FILE.parquet``: the cleaned label list, and the flagged test labels beside it."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write the cleaned label list of a run (CSV or Parquet)",
                       description="Write the cleaned training labels (final_label, label_source, the signals) and, "
                                   "in a second file, the flagged test labels. Test examples are never removed.")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", required=True, help="FILE.csv or FILE.parquet")
    p.add_argument("--test-out", default=None,
                   help="where to list the flagged test labels (default: FILE.flagged-test.csv beside --out)")
    p.add_argument("--drop-flagged", action="store_true", help="drop flagged rows instead of relabelling them")
    p.add_argument("--use-decisions", action="store_true",
                   help="apply the review app's decisions (newest per example) and add provenance: "
                        "decision, reviewer, decided_at")
    p.set_defaults(func=main)


def main(args) -> int:
    from pathlib import Path

    from audit.export import export_labels, flagged_test_path

    test_out = Path(args.test_out) if args.test_out else flagged_test_path(args.out)
    df = export_labels(args.run, args.out, test_out=test_out, drop_flagged=args.drop_flagged,
                       use_decisions=args.use_decisions)
    changed = int((df["final_label"] != df["given_label"]).sum())
    line = f"wrote {args.out}: {len(df)} training examples, {changed} relabelled"
    if args.use_decisions:
        by_reviewer = int((df["label_source"] == "reviewer").sum())
        line += f", {by_reviewer} decided by a reviewer"
    print(line)
    print(f"wrote {test_out}: flagged test labels to check (test examples are never removed)")
    return 0
