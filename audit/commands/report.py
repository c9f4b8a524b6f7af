"""``audit report RUN``: a self-contained ``RUN/report.html`` with plots and galleries."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write RUN/report.html: plots and galleries, images embedded (one file)")
    p.add_argument("run", help="a complete run directory (from `audit run` or `audit batch`)")
    p.add_argument("--out", default=None, help="HTML file to write (default RUN/report.html)")
    p.add_argument("--top", type=int, default=24, help="flagged training examples in the gallery (default 24)")
    p.add_argument("--pairs", type=int, default=12, help="train→test pairs in the gallery (default 12)")
    p.set_defaults(func=main)


def main(args) -> int:
    from audit.errors import AuditInputError
    from audit.report import build_report

    for opt in ("top", "pairs"):
        if getattr(args, opt) < 0:
            raise AuditInputError(f"--{opt} {getattr(args, opt)}: must be ≥ 0")
    path = build_report(args.run, out=args.out, top=args.top, pairs=args.pairs)
    print(f"wrote {path}")
    return 0
