"""``audit export RUN --out FILE.csv|FILE.parquet [--apply none|decisions|suggested]``: the cleaned label
list, and the flagged test labels beside it."""

from __future__ import annotations

import sys

from audit.errors import AuditInputError


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
    p.add_argument("--drop", default=None, metavar="TYPES",
                   help="also remove training rows of these issue types, comma-separated: duplicates (keeps one "
                        "image per copy group), leaks (the training copy of each leaked test image), outliers, "
                        "dark, light, blurry, low_information, odd_size")
    p.add_argument("--format", choices=("labels", "label-studio"), default="labels",
                   help="labels (default): the cleaned label list; label-studio: the rows to review as Label "
                        "Studio tasks (TASKS.json, the suggested label as a prediction) and its labeling config")
    p.add_argument("--use-decisions", action="store_true",
                   help="deprecated: the same as --apply suggested (decisions, then suggestions)")
    p.set_defaults(func=main)


def main(args) -> int:
    from audit.export import flagged_test_path, write_export, write_label_studio

    if args.format == "label-studio":
        if args.drop or args.drop_flagged or args.test_out:
            raise AuditInputError("--format label-studio: lists the rows to review; --drop, --drop-flagged and "
                                  "--test-out belong to the label list")
        tasks, config, n = write_label_studio(args.run, args.out, apply=args.apply)
        print(f"wrote {tasks}: {n} Label Studio tasks (the rows to review, most suspicious first; the suggested "
              f"label as a prediction) and {config} (the labeling config: Settings > Labeling Interface > Code)")
        return 0
    if args.use_decisions and args.apply is None:
        print("audit: --use-decisions is deprecated; it means --apply suggested (decisions are now the default)",
              file=sys.stderr)
    test_out = args.test_out or flagged_test_path(args.out)
    _, summary = write_export(args.run, args.out, test_out=test_out, apply=args.apply,
                              drop_flagged=args.drop_flagged, use_decisions=args.use_decisions or None,
                              drop=args.drop)
    print(f"wrote {args.out}: {summary.line()}")
    print(f"wrote {test_out}: flagged test labels to check (test examples are never removed)")
    from audit.commands.run import next_steps

    apply = f" --apply {summary.apply}" if summary.apply != "decisions" else ""
    print("\n".join(ln.replace(f"audit verify {args.run}", f"audit verify {args.run}{apply}")
                     if f"audit verify {args.run}" in ln and summary.apply == "suggested" else ln
                     for ln in next_steps(args.run) if not ln.lstrip().startswith(f"audit export {args.run}")))
    return 0
