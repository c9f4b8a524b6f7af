"""``audit export RUN --out FILE.csv|FILE.parquet [--apply none|decisions|suggested]``: the cleaned label
list, and the flagged test labels beside it."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write the cleaned label list of a run (CSV or Parquet)",
                       description="Write the training labels under a policy (final_label, label_source, "
                                   "the reviewer's decision, the flags, suggestions and signals) and, in a second "
                                   "file, the flagged test labels. Labels change only where --apply says so; "
                                   "test examples are never removed. The output may not be one of the run's files.")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", required=True, help="FILE.csv or FILE.parquet (outside the run's own files)")
    p.add_argument("--test-out", default=None,
                   help="where to list the flagged test labels (default: FILE.flagged-test.csv beside --out)")
    p.add_argument("--apply", choices=("none", "decisions", "suggested"), default=None,
                   help="none: the given labels; decisions (default): the review app's decisions (newest per "
                        "example); suggested: decisions, and the suggested label on flagged rows nobody decided on")
    p.add_argument("--drop-flagged", action="store_true",
                   help="with --apply suggested (implied): remove flagged rows nobody decided on instead of "
                        "relabelling them")
    p.add_argument("--use-decisions", action="store_true",
                   help="deprecated: the same as --apply suggested (decisions, then suggestions)")
    p.set_defaults(func=main)


def main(args) -> int:
    from audit.export import flagged_test_path, write_export

    if args.use_decisions and args.apply is None:
        print("audit: --use-decisions is deprecated; it means --apply suggested (decisions are now the default)",
              file=sys.stderr)
    test_out = args.test_out or flagged_test_path(args.out)
    _, summary = write_export(args.run, args.out, test_out=test_out, apply=args.apply,
                              drop_flagged=args.drop_flagged, use_decisions=args.use_decisions or None)
    print(f"wrote {args.out}: {summary.line()}")
    print(f"wrote {test_out}: flagged test labels to check (test examples are never removed)")
    from audit.commands.run import next_steps

    apply = f" --apply {summary.apply}" if summary.apply != "decisions" else ""
    print("\n".join(ln.replace(f"audit verify {args.run}", f"audit verify {args.run}{apply}")
                     if f"audit verify {args.run}" in ln and summary.apply == "suggested" else ln
                     for ln in next_steps(args.run) if not ln.lstrip().startswith(f"audit export {args.run}")))
    return 0
