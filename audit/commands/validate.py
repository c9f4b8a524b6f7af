"""``audit validate --dataset SPEC``: load and check a dataset without training; print a summary.

Exit 0 when the dataset loads (the summary may still warn about duplicates or small classes; with
``--strict`` those exit 2 too), 2 on bad input with every problem listed.
"""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    from audit.data.validate import DEFAULT_MIN_TRAIN_PER_CLASS

    p = sub.add_parser("validate", help="load and check a dataset without training; print a summary",
                       description="Load DATASET as `audit run` would, check every file, row and label, and print "
                                   "counts per class and split, image size and channels, exact duplicates and "
                                   "classes too small to audit. Exit 2 naming every problem found.")
    p.add_argument("--dataset", default="digits", help="dataset spec: digits, npz:PATH, mnist:ROOT, fashion-mnist:ROOT, "
                   "cifar10:ROOT, cifar100:ROOT, folder:PATH, csv:PATH, parquet:PATH")
    p.add_argument("--download", action="store_true", help="allow torchvision sources to download (never by default)")
    p.add_argument("--memory-budget-mb", type=float, default=None,
                   help="decoded images above this stream from a memmap cache file (default: "
                        "$AUDIT_MEMORY_BUDGET_MB or 2048)")
    p.add_argument("--cache-dir", default=None, help="where such cache files go (default: $AUDIT_CACHE_DIR or "
                   "~/.cache/benign-audit)")
    p.add_argument("--decode-workers", type=int, default=None, help="processes decoding image files (default: "
                   "$AUDIT_DECODE_WORKERS, else one per CPU up to 8 from 2,000 images on, given more than 2 CPUs)")
    p.add_argument("--max-image-pixels", type=int, default=None,
                   help="refuse image files larger than this many pixels (width × height) before decoding them "
                        "(default: $AUDIT_MAX_IMAGE_PIXELS or 50,000,000)")
    p.add_argument("--min-train-per-class", type=int, default=DEFAULT_MIN_TRAIN_PER_CLASS,
                   help=f"classes with fewer training examples are reported as too small to audit "
                        f"(default {DEFAULT_MIN_TRAIN_PER_CLASS})")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--strict", action="store_true", help="exit 2 when there are duplicates across splits, "
                   "duplicates with conflicting labels, or classes too small to audit")
    p.set_defaults(func=main)


def main(args) -> int:
    from audit.data import load_dataset
    from audit.data.validate import format_summary, summarize

    ds = load_dataset(args.dataset, download=args.download, memory_budget_mb=args.memory_budget_mb,
                      cache_dir=args.cache_dir, decode_workers=args.decode_workers,
                      max_image_pixels=args.max_image_pixels)
    s = summarize(ds, min_train_per_class=args.min_train_per_class)
    print(json.dumps(s, indent=1) if args.json else format_summary(s))
    d = s["duplicates"]
    warnings = []
    if d["across_splits"]:
        warnings.append(f"{d['across_splits']} duplicate groups span train and test")
    if d["conflicting_labels"]:
        warnings.append(f"{d['conflicting_labels']} duplicate groups with conflicting labels")
    if s["too_small"]:
        warnings.append(f"{len(s['too_small'])} classes too small to audit")
    if args.strict and warnings:
        from audit.errors import AuditInputError

        raise AuditInputError(f"--dataset {args.dataset}: --strict: {'; '.join(warnings)}")
    return 0
