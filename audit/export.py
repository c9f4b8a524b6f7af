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

``drop`` removes training rows of other issue types (:mod:`audit.issues`) whatever their label:
``near_duplicate`` keeps one image of each copy group (the one least likely mislabelled) and removes
the others; ``leak`` removes the training copy of every leaked test image (so the test split is
independent of what is trained on); any other type (``outlier``, ``dark``, ``light``, ``blurry``,
``low_information``, ``odd_size``) removes its flagged rows. ``dropped_for`` names the types that
removed a row; the summary counts them.

:func:`label_studio_tasks` writes the rows a person should look at as Label Studio tasks (JSON), the
suggested label as a prediction, with a labeling config listing the classes.

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


DROP_ALIASES = {"duplicates": "near_duplicate", "near_duplicates": "near_duplicate", "leaks": "leak",
                "outliers": "outlier"}


def resolve_drop(drop: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """Issue types from ``--drop`` (comma-separated; ``duplicates``, ``leaks``, ``outliers`` as aliases)."""
    from audit.issues.base import ISSUE_TYPES

    if not drop:
        return ()
    items = drop.split(",") if isinstance(drop, str) else list(drop)
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name = DROP_ALIASES.get(item, item)
        if name not in ISSUE_TYPES or name == "class_imbalance":
            known = sorted(set(ISSUE_TYPES) - {"class_imbalance"}) + sorted(DROP_ALIASES)
            raise AuditInputError(f"--drop {item!r}: not an issue type (one of {', '.join(known)})")
        out.append(name)
    return tuple(dict.fromkeys(out))


def _drop_issues(df: pd.DataFrame, drop: tuple[str, ...], path: str, leak_partners: tuple = ()) -> None:
    """Mark rows ``removed`` for the issue types in ``drop`` (module docstring) and name them in ``dropped_for``."""
    df["dropped_for"] = ""
    for name in drop:
        flag = f"is_{name}_issue"
        if name == "leak":
            col = "leak_partner"
            if col not in df.columns:
                raise AuditInputError(f"--drop {name}: {path} has no {col} column (a run from before issue types; "
                                      "rerun `audit run`)")
            hit = df["example_id"].isin(set(leak_partners)).to_numpy()
        elif flag not in df.columns:
            raise AuditInputError(f"--drop {name}: {path} has no {flag} column (a run from before issue types; "
                                  "rerun `audit run`)")
        elif name == "near_duplicate":
            flagged = df[flag].to_numpy(bool) & (df["duplicate_group"].to_numpy() >= 0)
            grp = df.loc[flagged, ["duplicate_group", "issue_score"]]
            keep = grp.sort_values(["duplicate_group", "issue_score"], kind="stable").groupby("duplicate_group").head(1).index
            hit = flagged.copy()
            hit[df.index.get_indexer(keep)] = False
        else:
            hit = df[flag].to_numpy(bool)
        df.loc[hit, "removed"] = True
        df.loc[hit, "dropped_for"] = np.where(df.loc[hit, "dropped_for"] == "", name, df.loc[hit, "dropped_for"] + "," + name)


def label_plan(run_dir: str | Path | RunDir, apply: str = "decisions", *, drop_flagged: bool = False,
               examples: pd.DataFrame | None = None, drop: tuple[str, ...] = ()) -> pd.DataFrame:
    """Every training row with ``final_label``, ``label_source``, ``removed`` and ``dropped_for`` under
    the policy and ``drop`` (module docstring)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    df = run.examples() if examples is None else examples
    partners: tuple = ()
    if "leak_partner" in df.columns and "is_leak_issue" in df.columns:  # the training copies of leaked test rows
        leaked = (df["split"] == "test").to_numpy() & df["is_leak_issue"].to_numpy(bool)
        partners = tuple(p for p in df.loc[leaked, "leak_partner"] if isinstance(p, str) and p)
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
    _drop_issues(df, tuple(drop), str(run.path / "examples.parquet"), partners)
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
    cols += [c for c in plan.columns if c.startswith("is_") and c.endswith("_issue") and c != "is_label_issue"]
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
    dropped: dict | None = None

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
        if self.dropped:
            text += "; --drop removed " + ", ".join(f"{n} {t.replace('_', ' ')}" for t, n in self.dropped.items())
        if self.stale and self.apply != "none":
            text += (f"; {self.stale} review decisions were made on another label or image than this run shows "
                     "and were not applied (review them again: `audit app`)")
        return text


def summarise(plan: pd.DataFrame, apply: str, stale: int = 0, drop: tuple[str, ...] = ()) -> ExportSummary:
    action = np.where(plan["removed"], "removed",
                      np.where(plan["final_label"] != plan["given_label"], "relabelled", "kept"))
    counts = Counter(zip(action.tolist(), plan["label_source"].tolist()))
    left = int((plan["is_label_issue"].to_numpy(bool) & (plan["label_source"] == "given").to_numpy()).sum())
    dropped = {t: int(plan["dropped_for"].str.split(",").map(lambda v, t=t: t in v).sum()) for t in drop} \
        if drop and "dropped_for" in plan.columns else None
    return ExportSummary(apply, int((~plan["removed"]).sum()), dict(counts), left, stale, dropped)


def write_export(run_dir: str | Path, out: str | Path, *, test_out: str | Path | None = None,
                 apply: str | None = None, drop_flagged: bool = False,
                 use_decisions: bool | None = None, drop: str | tuple[str, ...] | None = None,
                 ) -> tuple[pd.DataFrame, ExportSummary]:
    """Write the kept training labels to ``out`` (``.csv`` or ``.parquet``) and :func:`flagged_test_labels`
    to ``test_out`` (default :func:`flagged_test_path`), both atomically; neither may be one of the
    run's own files. Returns the kept rows and the summary."""
    apply, drop_fl = resolve_policy(apply, drop_flagged, use_decisions)
    types = resolve_drop(drop)
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
    plan = label_plan(run, apply, drop_flagged=drop_fl, examples=examples, drop=types)
    kept = _kept(plan, apply)
    test = flagged_test_labels(run, apply=apply, examples=examples)
    meta = {"apply": apply, "drop_flagged": drop_fl, "drop": list(types)}
    _write(kept, out, run, {"split": "train", **meta})
    _write(test, test_out, run, {"split": "test", "flagged_test_labels": True, **meta})
    stale = len(run.decisions().stale()) if apply != "none" else 0
    return kept, summarise(plan, apply, stale, types)


def export_labels(run_dir: str | Path, out: str | Path, *, test_out: str | Path | None = None,
                  **kwargs) -> pd.DataFrame:
    """:func:`write_export`, returning the kept training rows. ``kwargs``: ``apply``, ``drop_flagged``,
    ``use_decisions`` (deprecated) as in :func:`cleaned_labels`."""
    return write_export(run_dir, out, test_out=test_out, **kwargs)[0]


# -- Label Studio ----------------------------------------------------------------------------------
LS_FROM, LS_TO = "label", "image"


def label_studio_config(class_names: list[str]) -> str:
    """A Label Studio labeling config: the image and one choice per class (names XML-escaped)."""
    from xml.sax.saxutils import quoteattr

    choices = "\n".join(f"    <Choice value={quoteattr(str(n))}/>" for n in class_names)
    return (f'<View>\n  <Image name="{LS_TO}" value="$image"/>\n  <Text name="given" value="$given_class"/>\n'
            f'  <Choices name="{LS_FROM}" toName="{LS_TO}" choice="single" showInLine="true">\n{choices}\n'
            "  </Choices>\n</View>\n")


def label_studio_tasks(run_dir: str | Path | RunDir, *, apply: str | None = None,
                       all_rows: bool = False) -> tuple[str, list[dict]]:
    """(labeling config, tasks): one Label Studio task per row a person should look at (flagged training
    rows nobody decided on under ``apply``, flagged test rows; every training row with ``all_rows``),
    most suspicious first. ``data`` holds the image (the source file's path where the dataset has files,
    else the pixels as a PNG data URL, read only from the fingerprint-checked dataset), the example id,
    split, given class, issue score and reason; the suggested class is a prediction with the issue score
    as its score, so Label Studio shows it pre-selected for the annotator to confirm or change."""
    import base64

    apply = resolve_policy(apply)[0]
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    ex = run.examples()
    names = [str(n) for n in run.class_names]
    plan = label_plan(run, apply, examples=ex).set_index("example_id")
    flagged = ex["is_label_issue"].to_numpy(bool).copy()
    if apply != "none":
        decided = ex["example_id"].isin(plan.index[plan["label_source"] == "reviewer"]).to_numpy()
        flagged &= ~decided
    rows = ex[flagged | ((ex["split"] == "train").to_numpy() & all_rows)]
    rows = rows.sort_values("issue_score", ascending=False, kind="stable")
    images = None
    if "path" not in rows.columns or rows["path"].isna().any():
        from audit.report import image_png

        ds = run.dataset()  # DatasetUnverified (exit 2) when the files are not the audited ones
        pos = pd.Index(np.asarray(ds.example_ids).astype(str)).get_indexer(rows["example_id"])
        images = (ds, pos, image_png)
    tasks = []
    for i, r in enumerate(rows.itertuples(index=False)):
        if images is None:
            image = str(r.path)
        else:
            ds, pos, png = images
            image = "data:image/png;base64," + base64.b64encode(png(np.asarray(ds.images[pos[i]]))).decode()
        given, suggested = names[int(r.given_label)], names[int(r.suggested_label)]
        task = {"data": {"image": image, "example_id": r.example_id, "split": r.split, "given_class": given,
                         "given_label": int(r.given_label), "issue_score": float(r.issue_score),
                         "reason": str(getattr(r, "category_reason", "") or "")},
                "predictions": [{"model_version": "benign-audit", "score": float(r.issue_score),
                                 "result": [{"from_name": LS_FROM, "to_name": LS_TO, "type": "choices",
                                             "value": {"choices": [suggested]}}]}]}
        tasks.append(task)
    return label_studio_config(names), tasks


def write_label_studio(run_dir: str | Path, out: str | Path, *, apply: str | None = None,
                       all_rows: bool = False) -> tuple[Path, Path, int]:
    """Write :func:`label_studio_tasks` to ``out`` (``.json``) and its config beside it
    (``out`` with ``.label_config.xml``), atomically; returns (tasks file, config file, task count)."""
    import json

    run = RunDir(run_dir)
    out = Path(out)
    cfg_out = out.with_name(f"{out.stem}.label_config.xml")
    for p, opt in ((out, "--out"), (cfg_out, "--out")):
        run.check_output(p, opt)
    if out.suffix != ".json":
        raise AuditInputError(f"--out {out}: a Label Studio export is JSON; name it TASKS.json")
    config, tasks = label_studio_tasks(run, apply=apply, all_rows=all_rows)
    atomic_write_bytes(cfg_out, config.encode())
    atomic_write_bytes(out, json.dumps(tasks, ensure_ascii=False).encode())
    return out, cfg_out, len(tasks)
