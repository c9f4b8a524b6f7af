"""Print the README's detection tables from the committed CSVs, so every number there has a command.

    python benchmarks/readme_tables.py benchmarks/results/detection_digits_test.csv [...]

For each per-seed CSV of ``benchmarks/detection.py`` it prints one markdown row per setting (dataset,
noise kind, rate): the seeds, the audit's and cleanlab's AUPRC as mean ± 95% t-interval half-width over
the seeds, the missed-share ratio (1 − AUPRC against cleanlab's, lower is better), precision / recall of
the flags, the compute ratio, the canary judge's Spearman correlation and its worst regret, and the
signals chosen per seed. CSVs with the ``--equal-compute`` columns get a second table: cleanlab's
workflow given the audit's wall time (its repeats or epochs, its AUPRC and flags, and the audit's missed
ratio against it).
"""

from __future__ import annotations

import sys

import pandas as pd

from audit.verify import mean_interval


def _mean_ci(v: pd.Series) -> str:
    """"mean ± 95% t half-width" over seeds (:func:`audit.verify.mean_interval`), the mean alone for one."""
    v = v.dropna().to_numpy(float)
    if not len(v):
        return "–"
    s = mean_interval(list(v))
    return f"{s['mean']:.3f}" if s["low"] is None else f"{s['mean']:.3f} ± {s['high'] - s['mean']:.3f}"


def table(df: pd.DataFrame) -> str:
    head = ("| data | noise | seeds | audit AUPRC | cleanlab AUPRC | missed ratio | audit P / R | cleanlab P / R "
            "| compute | judge ρ | max regret | chosen |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for (data, kind, rate), g in df.groupby(["dataset", "kind", "rate"], sort=False):
        chosen = " / ".join(sorted(set(g["members"].astype(str).str.replace(",", "+"))))
        lines.append(
            f"| {data.split(':')[-1].split('/')[-1]} | {kind} {rate:.0%} | {','.join(map(str, g['seed']))} "
            f"| {_mean_ci(g['audit_auprc'])} | {_mean_ci(g['cleanlab_auprc'])} | {g['missed_ratio'].mean():.2f} "
            f"| {g['audit_precision'].mean():.2f} / {g['audit_recall'].mean():.2f} "
            f"| {g['cleanlab_precision'].mean():.2f} / {g['cleanlab_recall'].mean():.2f} "
            f"| {g['compute_ratio'].mean():.1f}× | {g['judge_spearman'].mean():.2f} | {g['regret'].max():.3f} "
            f"| {chosen} |")
    return "\n".join(lines)


def equal_compute_table(df: pd.DataFrame) -> str:
    head = ("| data | noise | seeds | audit AUPRC | cleanlab AUPRC, 1× | cleanlab, equal compute | its AUPRC "
            "| its P / R | its time / audit's | missed ratio against it |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for (data, kind, rate), g in df.groupby(["dataset", "kind", "rate"], sort=False):
        mode = "/".join(sorted(set(g["eq_mode"])))
        knob = g["eq_repeats"] if mode == "repeats" else g["eq_epochs"]
        lines.append(
            f"| {data.split(':')[-1].split('/')[-1]} | {kind} {rate:.0%} | {','.join(map(str, g['seed']))} "
            f"| {_mean_ci(g['audit_auprc'])} | {_mean_ci(g['cleanlab_auprc'])} "
            f"| {mode} {'/'.join(map(str, sorted(set(knob))))} | {_mean_ci(g['eq_cleanlab_auprc'])} "
            f"| {g['eq_cleanlab_precision'].mean():.2f} / {g['eq_cleanlab_recall'].mean():.2f} "
            f"| {(g['eq_seconds'] / g['audit_seconds']).mean():.2f} | {g['eq_missed_ratio'].mean():.2f} |")
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    for p in paths:
        df = pd.read_csv(p)
        print(f"`{p}` ({len(df)} runs):\n")
        print(table(df))
        print(f"\nmean missed ratio {df['missed_ratio'].mean():.2f} (worst {df['missed_ratio'].max():.2f}); "
              f"mean judge ρ {df['judge_spearman'].mean():.2f}; regret ≤ 0.01 in "
              f"{int((df['regret'] <= 0.01).sum())} of {len(df)} runs\n")
        if "eq_cleanlab_auprc" in df:
            print("Against cleanlab's workflow given the audit's wall time:\n")
            print(equal_compute_table(df))
            print(f"\nmean missed ratio against it {df['eq_missed_ratio'].mean():.2f} "
                  f"(worst {df['eq_missed_ratio'].max():.2f})\n")


if __name__ == "__main__":
    main(sys.argv[1:])
