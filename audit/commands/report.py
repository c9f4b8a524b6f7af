"""``audit report RUN``: a self-contained ``RUN/report.html`` with plots and galleries."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write RUN/report.html: plots and galleries, images embedded (one file)",
                       description="Write one self-contained HTML page: headline metrics, plots, galleries of the "
                                   "flagged examples and train→test pairs, the review decisions and verify.json when "
                                   "present. Images are read only from a dataset whose fingerprint matches the run's "
                                   "manifest; otherwise the command exits 2 saying why (--no-images leaves them out).")
    p.add_argument("run", help="a complete run directory (from `audit run` or `audit batch`)")
    p.add_argument("--out", default=None, help="HTML file to write (default RUN/report.html; not one of the run's files)")
    p.add_argument("--top", type=int, default=24, help="flagged training examples in the gallery (default 24)")
    p.add_argument("--pairs", type=int, default=12, help="train→test pairs in the gallery (default 12)")
    p.add_argument("--no-images", action="store_true",
                   help="leave the pictures out and never read the dataset (default: embed them)")
    p.set_defaults(func=main)


def main(args) -> int:
    from audit.errors import AuditInputError
    from audit.report import build_report
    from audit.rundir import DatasetUnverified

    for opt in ("top", "pairs"):
        if getattr(args, opt) < 0:
            raise AuditInputError(f"--{opt} {getattr(args, opt)}: must be ≥ 0")
    try:
        path = build_report(args.run, out=args.out, top=args.top, pairs=args.pairs, images=not args.no_images)
    except DatasetUnverified as e:
        raise AuditInputError(f"{e} (--no-images writes the report without them)") from None
    print(f"wrote {path}")
    return 0
