"""``audit run``: the whole audit of one dataset into a run directory."""

from __future__ import annotations

import argparse
from dataclasses import fields

from audit.config import RunConfig, base_type, check_value, flag
from audit.errors import AuditInputError


def _parse(name: str):
    """argparse ``type=`` for one option: parse the text, then check it like every other source."""
    t = base_type(name)

    def parse(text: str):
        try:  # numbers as floats: check_value makes an integral one an int, and refuses 1.5 for an int option
            value = text if t in (str, tuple) else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if t is int else 'a number'}") from None
        try:
            return check_value(name, value)
        except AuditInputError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None

    parse.__name__ = name
    return parse


def add_run_options(p) -> None:
    """Every RunConfig field as a flag, generated from its declaration (help, default, range)."""
    for f in fields(RunConfig):
        m, t = f.metadata, base_type(f.name)
        default = ",".join(f.default) if isinstance(f.default, tuple) else f.default
        shown = "" if f.default is None or "(default" in m["help"] else f" (default: {default})"
        if t is bool:
            p.add_argument(flag(f.name), action="store_true", default=f.default, help=m["help"] + shown)
            continue
        metavar = "{" + ",".join(m["choices"]) + "}" if m["choices"] and t is str else None
        p.add_argument(flag(f.name), type=_parse(f.name), default=f.default, metavar=metavar,
                       help=m["help"] + shown)


def config_from_args(args) -> RunConfig:
    return RunConfig(**{f.name: getattr(args, f.name) for f in fields(RunConfig)})


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="audit one dataset: train, score, pair, write Parquet",
                       description="Train a natural and robust models on DATASET, score every example for label "
                                   "issues, pair test errors with the training images behind them, and write "
                                   "the run directory --out (a rerun resumes finished stages).")
    add_run_options(p)
    p.add_argument("--out", required=True, help="run directory (created; a rerun resumes finished stages)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage lines (default: shown)")
    p.set_defaults(func=main)


def summary_lines(man: dict, out: str) -> list[str]:
    """The end of ``audit run``: what was found, how the models did, where the files are, what next."""
    m, ds = man["metrics"], man["dataset"]
    lines = [f"audited {ds['num_train']:,} training and {ds['num_test']:,} test images of {ds['spec']} "
             f"in {m.get('wall_seconds', 0):.0f} s",
             f"flagged {m['num_flagged_train']:,} training labels as likely wrong "
             f"(estimated noise rate {m['estimated_noise_rate']:.1%}) and {m['num_flagged_test']:,} test labels"]
    for model in man["config"]["models"]:
        apgd = m.get(f"{model}_test_apgd_accuracy")
        lines.append(f"{model:>8} model: test accuracy {m[f'{model}_test_accuracy']:.3f}, under attack "
                     f"{m[f'{model}_test_adv_accuracy']:.3f}" + (f" (APGD {apgd:.3f})" if apgd is not None else "")
                     + f", train accuracy {m[f'{model}_train_accuracy']:.3f}")
    if "given_train_accuracy" in m:  # --pred-probs alone (--models none)
        lines.append(f"   given probabilities: train agreement {m['given_train_accuracy']:.3f}"
                     + (f", test accuracy {m['given_test_accuracy']:.3f}" if "given_test_accuracy" in m else ""))
    health = man.get("health") or {}
    if health.get("ok") is False or man.get("warnings"):
        lines += [f"warning: {w}" for w in man.get("warnings", [])]
    retried = {r: a for r, a in (health.get("attempts") or {}).items() if len(a) > 1}
    for role, tries in retried.items():
        why = "; then ".join((f"{t['stopped']}; " if t.get("stopped") else "") + t["retry"] for t in tries if t.get("retry"))
        lines.append(f"{role} model retrained {len(tries) - 1}x after failed checks ({why})")
    if "noise_auprc" in m:
        lines.append(f"injected noise found: AUROC {m['noise_auroc']:.3f}, AUPRC {m['noise_auprc']:.3f}, "
                     f"precision {m['noise_precision']:.2f}, recall {m['noise_recall']:.2f}")
    other = (man.get("issue_types") or {}).get("summary")
    if other:
        lines.append(other)
    lines.append(f"wrote {out}/ (examples.parquet, pairs.parquet, manifest.json)")
    lines += decision_lines(out)
    return lines + next_steps(out)


def next_steps(out: str) -> list[str]:
    """The same closing lines after ``run``, ``verify`` and ``export``: what to do with the run next."""
    return ["next:",
            f"  audit app {out}        # review the flagged examples (decisions go to {out}/decisions.sqlite)",
            f"  audit report {out}     # one HTML page with the evidence",
            f"  audit verify {out}     # retrain on the cleaned labels: did cleaning pay?",
            f"  audit export {out} --out labels.csv   # the cleaned label list"]


def decision_lines(out: str) -> list[str]:
    """What became of the review decisions already in ``out`` (a rerun into a reviewed directory): how
    many still match what was reviewed and how many no longer do, and why."""
    from pathlib import Path

    from audit.decisions import DB_NAME, DecisionStore

    if not (Path(out) / DB_NAME).is_file():
        return []
    store = DecisionStore(out)
    current, stale = store.latest(), store.stale()
    if current.empty and stale.empty:
        return []
    line = f"review decisions in {out}: {len(current):,} still match what the reviewer saw"
    if len(stale):
        why = stale["stale_reason"].str.replace(r" \(was.*", "", regex=True).value_counts()
        detail = ", ".join(f"{n:,} {r}" for r, n in why.items())
        line += (f"; {len(stale):,} no longer do ({detail}): kept in the log, not applied by export or verify, "
                 "and back in the review queue")
    return [line]


def main(args) -> int:
    from audit.pipeline import run_audit
    from audit.rundir import check_out_dir

    check_out_dir(args.out, args.dataset)
    man = run_audit(config_from_args(args), args.out, progress=not args.quiet)
    print("\n".join(summary_lines(man, args.out)))
    return 0
