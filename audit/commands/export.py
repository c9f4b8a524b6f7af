"""``audit export RUN --out FILE.csv|FILE.parquet``: the cleaned label list."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write the cleaned label list of a run (CSV or Parquet)")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", required=True, help="FILE.csv or FILE.parquet")
    p.add_argument("--drop-flagged", action="store_true", help="drop flagged rows instead of relabelling them")
    p.add_argument("--use-decisions", action="store_true", help="apply the review app's decisions (newest per example)")
    p.set_defaults(func=main)


def main(args) -> int:
    from audit.export import export_labels

    df = export_labels(args.run, args.out, drop_flagged=args.drop_flagged, use_decisions=args.use_decisions)
    changed = int((df["final_label"] != df["given_label"]).sum())
    print(f"wrote {args.out}: {len(df)} training examples, {changed} relabelled")
    return 0
