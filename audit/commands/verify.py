"""``audit verify RUN``: retrain on the given, cleaned and true labels and show what cleaning gained."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "verify", help="retrain on the given, cleaned and true labels; compare clean and adversarial accuracy",
        description="Retrain the run's natural (and PGD-AT) model with the run's recipe over several seeds on "
                    "(a) the given labels, (b) the cleaned labels (what `audit export` writes under the same "
                    "--apply), (c) the true labels when the run injected the noise; report clean and adversarial "
                    "test accuracy (the run's evaluation attack at its eps and at eps/4) with 95% intervals, and "
                    "the share of the true labels' gain that cleaning recovered, with its interval. Writes "
                    "verify.json and verify.png into RUN (or --out DIR); a rerun skips every finished training "
                    "whose cached result this machine wrote. A run that trained no models (--models none) has no "
                    "recipe of its own: verify resolves the audit's natural recipe for the data, as `audit run "
                    "--models natural` would, trains that model alone and says so.")
    p.add_argument("run", help="a complete run directory (from `audit run`)")
    p.add_argument("--seeds", type=int, default=3, help="trainings per variant and model (default 3)")
    p.add_argument("--apply", choices=("decisions", "suggested"), default="decisions",
                   help="cleaned labels, as `audit export --apply` writes them: the review decisions only "
                        "(decisions, the default, as for export), or the decisions and then the suggested label "
                        "on the flagged rows nobody decided on (suggested)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, default=None,
                   help="train every model for this many epochs (default: the run's epochs)")
    g.add_argument("--epochs-scale", type=float, default=None,
                   help="multiply the run's epochs by this factor (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: $OMP_NUM_THREADS, else 1, as for `audit run`; more is faster "
                        "only on idle cores)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write verify.json, verify.png and the cache (.cache/verify) into DIR instead of RUN "
                        "(for a run directory you cannot or would not write; default RUN)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress lines (default: one line per training)")
    p.set_defaults(func=main)


def next_lines(report: dict, run: str) -> list[str]:
    """`audit run`'s closing "next:" lines (:func:`audit.commands.run.next_steps`), less the verify just
    done, the export matching this --apply."""
    from audit.commands.run import next_steps

    lines = [ln for ln in next_steps(run) if not ln.lstrip().startswith(f"audit verify {run}")]
    if report["apply"] == "suggested":
        lines = [ln.replace(f"audit export {run} --out labels.csv", f"audit export {run} --out labels.csv "
                            "--apply suggested") for ln in lines]
    return lines


def main(args) -> int:
    import sys

    from audit.verify import format_table, verify_run

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[verify] {msg}", file=sys.stderr, flush=True)

    report = verify_run(args.run, seeds=args.seeds, apply=args.apply, epochs=args.epochs,
                        epochs_scale=args.epochs_scale, device=args.device, progress=False, threads=args.threads,
                        out=args.out, log=log)
    print(format_table(report))
    n, refused, threads = report["trained"], report["refused"], report["threads"]
    why = "; ".join(f"{k} {w}" for w, k in report.get("refused_why", {}).items())
    print(f"wrote {report['out']}/verify.json and verify.png ({n} training{'s' if n != 1 else ''}, "
          f"{report['reused']} cached results reused, {refused} refused"
          + (f" and retrained: {why}" if refused else "")
          + f"; {threads} thread{'s' if threads != 1 else ''}, {report['seconds']:.0f} s)")
    if report["out"] != report["run"]:
        print(f"`audit report {args.run}` and the app show {args.run}/verify.json, not this one")
    print("\n".join(next_lines(report, args.run)))
    return 0
