"""``audit verify RUN``: retrain on the given, cleaned and true labels and show what cleaning gained."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "verify", help="retrain on the given, cleaned and true labels; compare clean and adversarial accuracy",
        description="Retrain the run's natural (and PGD-AT) model with the run's recipe over several seeds on "
                    "(a) the given labels, (b) the cleaned labels, (c) the true labels when the run injected the "
                    "noise; report clean and adversarial test accuracy (the run's evaluation attack at its eps "
                    "and at eps/4) with 95% intervals. Writes RUN/verify.json and RUN/verify.png; a rerun "
                    "skips every finished training.")
    p.add_argument("run", help="a complete run directory (from `audit run`)")
    p.add_argument("--seeds", type=int, default=3, help="trainings per variant and model (default 3)")
    p.add_argument("--apply", choices=("suggested", "decisions"), default="suggested",
                   help="cleaned labels: the suggested labels of flagged rows with the review decisions "
                        "overriding (suggested), or the review decisions only (decisions); default suggested")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, default=None,
                   help="train every model for this many epochs (default: the run's epochs)")
    g.add_argument("--epochs-scale", type=float, default=None,
                   help="multiply the run's epochs by this factor (default 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress lines (default: one line per training)")
    p.set_defaults(func=main)


def main(args) -> int:
    import sys

    from audit.verify import format_table, verify_run

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[verify] {msg}", file=sys.stderr, flush=True)

    report = verify_run(args.run, seeds=args.seeds, apply=args.apply, epochs=args.epochs,
                        epochs_scale=args.epochs_scale, device=args.device, progress=False, log=log)
    print(format_table(report))
    print(f"wrote {report['run']}/verify.json and verify.png ({report['trained']} trainings, "
          f"{report['seconds']:.0f} s)")
    return 0
