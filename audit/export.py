"""The cleaned label list: one row per training example, written as CSV or Parquet, and beside it the
flagged test labels, listed for a person to check and never removed automatically.

Exports never change a label silently. What is applied is a policy (``--apply``):

=================================  ==============  ====================  =========================
row                                ``none``        ``decisions``         ``suggested``
                                                   (the default)
=================================  ==============  ====================  =========================
not flagged, no decision           given           given                 given
flagged, no decision               given           given                 suggested label (or
                                                                         removed with drop_flagged)
reviewer decided ``keep``          given           given, by reviewer    given, by reviewer
reviewer decided ``relabel``       given           reviewer's class      reviewer's class
reviewer decided ``remove``        given           removed               removed
=================================  ==============  ====================  =========================

``label_source`` says where ``final_label`` came from (``given``, ``reviewer``, ``suggested``); the
flags and suggestions are columns in every policy, and :class:`ExportSummary` counts kept, relabelled
and removed rows by source. The newest effective decision per example wins
(:meth:`audit.decisions.DecisionStore.latest`). CSV cells of text that begin with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return are prefixed with ``'`` so spreadsheets show them as text.

Every label index comes with its class name beside it (``given_class``, ``suggested_class``,
``final_class``; ``reviewed_class`` for test rows), from the run's class list.

A decision made about another label or image than the run now shows (a rerun into a reviewed directory
with another seed, noise rate or changed files) is *stale* and is not applied
(:meth:`audit.decisions.DecisionStore.stale`); :class:`ExportSummary` counts them and says so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from audit.errors import AuditInputError
from audit.io import atomic_write_bytes, write_parquet
from audit.rundir import RunDir

APPLY = ("none", "decisions", "suggested")
EXPORT_COLUMNS = ["example_id", "index", "given_label", "suggested_label", "issue_score", "is_label_issue",
                  "final_label", "label_source", "given_class", "suggested_class", "final_class"]
PROVENANCE_COLUMNS = ["decision", "reviewer", "decided_at"]
SIGNAL_COLUMNS = ["category", "signals_fired", "category_reason", "evidence_confidence", "path", "clean_label",
                  "is_injected_noise"]
TEST_COLUMNS = ["example_id", "index", "given_label", "suggested_label", "issue_score", "is_label_issue",
                "reviewed_label", "given_class", "suggested_class", "reviewed_class"]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def resolve_policy(apply: str | None = None, drop_flagged: bool = False,
                   use_decisions: bool | None = None) -> tuple[str, bool]:
    """(apply, drop_flagged) from the options. ``use_decisions=True`` (deprecated) and ``drop_flagged``
    alone mean ``suggested``, as they did before ``apply`` existed; no option means ``decisions``."""
    if apply is None:
        apply = "suggested" if (use_decisions or drop_flagged) else "decisions"
    if apply not in APPLY:
        raise AuditInputError(f"--apply {apply!r}: must be one of {', '.join(APPLY)}")
    if drop_flagged and apply != "suggested":
        raise AuditInputError(f"--drop-flagged: only with --apply suggested (it removes the flagged rows nobody "
                              f"decided on instead of relabelling them), not with --apply {apply}")
    if use_decisions and apply == "none":
        raise AuditInputError("--use-decisions: contradicts --apply none")
    return apply, bool(drop_flagged)


def _with_decisions(df: pd.DataFrame, run: RunDir) -> pd.DataFrame:
    """``df`` with the newest effective decision per example merged in (``decision``, ``new_label``,
    ``reviewer``, ``decided_at``; empty where none). Labels were checked by the store."""
    dec = run.decisions().latest().drop(columns=["seq"])
    out = df.merge(dec, how="left", on="example_id")
    for c in ("decision", "reviewer", "decided_at"):
        out[c] = out[c].fillna("")
    return out


def _with_class_names(df: pd.DataFrame, run: RunDir, pairs: tuple[tuple[str, str], ...]) -> pd.DataFrame:
    """``df`` with a class-name column beside each label column in ``pairs`` ((label column, name column))."""
    names = np.asarray([str(n) for n in run.class_names], dtype=object)
    for label, name in pairs:
        idx = df[label].to_numpy(np.int64)
        ok = (idx >= 0) & (idx < len(names))
        df[name] = np.where(ok, names[np.clip(idx, 0, max(len(names) - 1, 0))], "") if len(names) else ""
    return df


def label_plan(run_dir: str | Path | RunDir, apply: str = "decisions", *, drop_flagged: bool = False,
               examples: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every training row with ``final_label``, ``label_source`` and ``removed`` under the policy."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    df = run.examples() if examples is None else examples
    df = df[df["split"] == "train"].copy()
    df["final_label"] = df["given_label"].astype(np.int64)
    df["label_source"] = "given"
    df["removed"] = False
    if apply != "none":
        df = _with_decisions(df, run)
        d = df["decision"]
        relabel = (d == "relabel").to_numpy()
        df.loc[relabel, "final_label"] = df.loc[relabel, "new_label"].astype(np.int64)
        df.loc[d.isin(["keep", "relabel", "remove"]).to_numpy(), "label_source"] = "reviewer"
        df["removed"] = (d == "remove").to_numpy()
    if apply == "suggested":
        auto = df["is_label_issue"].to_numpy(bool) & (df["label_source"] == "given").to_numpy()
        df.loc[auto, "label_source"] = "suggested"
        if drop_flagged:
            df.loc[auto, "removed"] = True
        else:
            df.loc[auto, "final_label"] = df.loc[auto, "suggested_label"].astype(np.int64)
    df["final_label"] = df["final_label"].astype(np.int64)
    _with_class_names(df, run, (("given_label", "given_class"), ("suggested_label", "suggested_class"),
                                ("final_label", "final_class")))
    return df.reset_index(drop=True)


def cleaned_labels(run_dir: str | Path | RunDir, *, apply: str | None = None, drop_flagged: bool = False,
                   use_decisions: bool | None = None, examples: pd.DataFrame | None = None) -> pd.DataFrame:
    """The training rows kept under the policy (module docstring), with ``final_label``, ``label_source``,
    the provenance columns ``decision``, ``reviewer``, ``decided_at`` (unless ``apply='none'``) and
    the signals behind each row where the run has them. Only training rows: test labels are listed
    by :func:`flagged_test_labels`, never removed.

    ``examples``: the run's ``examples.parquet`` if already loaded (not modified); read otherwise.
    """
    apply, drop = resolve_policy(apply, drop_flagged, use_decisions)
    plan = label_plan(run_dir, apply, drop_flagged=drop, examples=examples)
    return _kept(plan, apply)


def _kept(plan: pd.DataFrame, apply: str) -> pd.DataFrame:
    cols = EXPORT_COLUMNS + (PROVENANCE_COLUMNS if apply != "none" else [])
    cols += [c for c in SIGNAL_COLUMNS if c in plan.columns]
    return plan.loc[~plan["removed"].to_numpy(bool), cols].reset_index(drop=True)


def flagged_test_labels(run_dir: str | Path | RunDir, *, apply: str | None = None,
                        use_decisions: bool | None = None, examples: pd.DataFrame | None = None) -> pd.DataFrame:
    """Test rows a person should look at: every flagged test example, and unless ``apply='none'``
    every test example a reviewer decided on. Nothing here is removed and no suggestion is applied:
    ``reviewed_label`` is the reviewer's class after ``relabel``, the given label otherwise, and a
    ``remove`` decision is listed (``decision`` = ``remove``) for the person to act on."""
    apply = resolve_policy(apply, False, use_decisions)[0]
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    df = run.examples() if examples is None else examples
    df = df[df["split"] == "test"].copy()
    cols = list(TEST_COLUMNS)
    df["reviewed_label"] = df["given_label"].astype(np.int64)
    show = df["is_label_issue"].to_numpy(bool)
    if apply != "none":
        df = _with_decisions(df, run)
        relabel = (df["decision"] == "relabel").to_numpy()
        df.loc[relabel, "reviewed_label"] = df.loc[relabel, "new_label"].astype(np.int64)
        show = show | (df["decision"] != "").to_numpy()
        cols += PROVENANCE_COLUMNS
    cols += [c for c in SIGNAL_COLUMNS if c in df.columns]
    cols += [c for c in ("pred_natural", "pred_pgd", "pred_trades", "pred_fgsm") if c in df.columns]
    df["reviewed_label"] = df["reviewed_label"].astype(np.int64)
    _with_class_names(df, run, (("given_label", "given_class"), ("suggested_label", "suggested_class"),
                                ("reviewed_label", "reviewed_class")))
    out = df.loc[show, cols].sort_values("issue_score", ascending=False, kind="stable").reset_index(drop=True)
    return out


def flagged_test_path(out: str | Path) -> Path:
    """Where :func:`export_labels` lists the flagged test labels: ``labels.csv`` -> ``labels.flagged-test.csv``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.flagged-test{out.suffix}")


def neutralise_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose text cells that a spreadsheet would run as a formula (leading ``=``, ``+``,
    ``-``, ``@``, tab, carriage return) start with ``'`` instead (OWASP's CSV injection advice)."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object or pd.api.types.is_string_dtype(out[c]):
            live = out[c].map(lambda v: isinstance(v, str) and v.startswith(FORMULA_START)).to_numpy(bool)
            out.loc[live, c] = "'" + out.loc[live, c]
    return out


def csv_bytes(df: pd.DataFrame) -> bytes:
    """``df`` as CSV with formula-leading text neutralised (:func:`neutralise_formulas`)."""
    return neutralise_formulas(df).to_csv(index=False).encode()


def _write(df: pd.DataFrame, out: Path, run: RunDir, meta: dict) -> None:
    if out.suffix == ".csv":
        atomic_write_bytes(out, csv_bytes(df))
    else:
        write_parquet(out, df, {"source_run": str(run.path), "class_names": run.class_names, **meta})


@dataclass(frozen=True)
class ExportSummary:
    """What an export did: ``counts[(action, source)]`` with action ``kept``/``relabelled``/``removed``
    and source ``given``/``reviewer``/``suggested``; undecided flagged rows left as given."""

    apply: str
    rows: int
    counts: dict
    flagged_undecided_given: int
    stale: int = 0

    def line(self) -> str:
        parts = []
        for action in ("kept", "relabelled", "removed"):
            by = {s: n for (a, s), n in self.counts.items() if a == action and n}
            total = sum(by.values())
            detail = ", ".join(f"{n} {'suggestion' if s == 'suggested' else s}" for s, n in sorted(by.items()))
            parts.append(f"{total} {action}" + (f" ({detail})" if detail else ""))
        text = f"{self.rows} training rows under --apply {self.apply}: " + ", ".join(parts)
        if self.flagged_undecided_given and self.apply == "none":
            text += f"; {self.flagged_undecided_given} flagged rows keep their given label (nothing applied)"
        elif self.flagged_undecided_given:
            text += (f"; {self.flagged_undecided_given} flagged rows nobody decided on keep their given label "
                     "(--apply suggested applies the suggestions)")
        if self.stale and self.apply != "none":
            text += (f"; {self.stale} review decisions were made on another label or image than this run shows "
                     "and were not applied (review them again: `audit app`)")
        return text


def summarise(plan: pd.DataFrame, apply: str, stale: int = 0) -> ExportSummary:
    action = np.where(plan["removed"], "removed",
                      np.where(plan["final_label"] != plan["given_label"], "relabelled", "kept"))
    counts = Counter(zip(action.tolist(), plan["label_source"].tolist()))
    left = int((plan["is_label_issue"].to_numpy(bool) & (plan["label_source"] == "given").to_numpy()).sum())
    return ExportSummary(apply, int((~plan["removed"]).sum()), dict(counts), left, stale)


def write_export(run_dir: str | Path, out: str | Path, *, test_out: str | Path | None = None,
                 apply: str | None = None, drop_flagged: bool = False,
                 use_decisions: bool | None = None) -> tuple[pd.DataFrame, ExportSummary]:
    """Write the kept training labels to ``out`` (``.csv`` or ``.parquet``) and :func:`flagged_test_labels`
    to ``test_out`` (default :func:`flagged_test_path`), both atomically; neither may be one of the
    run's own files. Returns the kept rows and the summary."""
    apply, drop = resolve_policy(apply, drop_flagged, use_decisions)
    run = RunDir(run_dir)
    out = Path(out)
    test_out = flagged_test_path(out) if test_out is None else Path(test_out)
    for p, opt in ((out, "--out"), (test_out, "--test-out")):
        run.check_output(p, opt)
        if p.suffix not in (".csv", ".parquet"):
            raise AuditInputError(f"{opt} {p}: must end in .csv or .parquet")
    if test_out.resolve() == out.resolve():
        raise AuditInputError(f"--test-out {test_out}: must differ from --out")
    examples = run.examples()
    plan = label_plan(run, apply, drop_flagged=drop, examples=examples)
    kept = _kept(plan, apply)
    test = flagged_test_labels(run, apply=apply, examples=examples)
    meta = {"apply": apply, "drop_flagged": drop}
    _write(kept, out, run, {"split": "train", **meta})
    _write(test, test_out, run, {"split": "test", "flagged_test_labels": True, **meta})
    stale = len(run.decisions().stale()) if apply != "none" else 0
    return kept, summarise(plan, apply, stale)


def export_labels(run_dir: str | Path, out: str | Path, *, test_out: str | Path | None = None,
                  **kwargs) -> pd.DataFrame:
    """:func:`write_export`, returning the kept training rows. ``kwargs``: ``apply``, ``drop_flagged``,
    ``use_decisions`` (deprecated) as in :func:`cleaned_labels`."""
    return write_export(run_dir, out, test_out=test_out, **kwargs)[0]
