"""`audit export`: the cleaned label list round-trips through CSV and Parquet; labels change only under
an explicit policy (--apply none|decisions|suggested) and the summary counts every change by source."""

from __future__ import annotations

import numpy as np
import pandas as pd

from audit.cli import main as cli


def test_export_csv_and_parquet_round_trip(digits_run, tmp_path, capsys):
    out, man = digits_run
    assert cli(["export", str(out), "--out", str(tmp_path / "labels.csv"), "--apply", "suggested"]) == 0
    ex = pd.read_parquet(out / "examples.parquet")
    fl = ex[(ex.split == "train") & ex.is_label_issue]
    n_flagged, n_changed = len(fl), int((fl.suggested_label != fl.given_label).sum())
    n_train = man["dataset"]["num_train"]
    same = n_flagged - n_changed  # flagged rows whose suggestion is their given label: kept, by suggestion
    kept = f"{n_train - n_changed} kept ({n_train - n_flagged} given, {same} suggestion)" if same else \
        f"{n_train - n_flagged} kept ({n_train - n_flagged} given)"
    assert (f"{n_train} training rows under --apply suggested: {kept}, {n_changed} relabelled ({n_changed} "
            f"suggestion), 0 removed") in capsys.readouterr().out
    assert cli(["export", str(out), "--out", str(tmp_path / "labels.parquet"), "--apply", "suggested"]) == 0
    a = pd.read_csv(tmp_path / "labels.csv")
    b = pd.read_parquet(tmp_path / "labels.parquet")
    assert list(a.columns[:8]) == ["example_id", "index", "given_label", "suggested_label", "issue_score",
                                   "is_label_issue", "final_label", "label_source"]
    pd.testing.assert_frame_equal(a[b.columns[:8]], b[b.columns[:8]], check_dtype=False)
    ex = pd.read_parquet(out / "examples.parquet")
    tr = ex[ex.split == "train"].reset_index(drop=True)
    assert len(a) == len(tr) and (a["example_id"] == tr["example_id"]).all()
    expect = np.where(tr.is_label_issue, tr.suggested_label, tr.given_label)
    assert (a["final_label"].to_numpy() == expect).all()
    # relabelling by the flags fixes more injected noise than it breaks
    fixed = ((a.final_label == a.clean_label) & a.is_injected_noise).sum()
    broken = ((a.final_label != a.clean_label) & ~a.is_injected_noise).sum()
    assert fixed >= 0.8 * a.is_injected_noise.sum() and broken <= 0.15 * a.is_injected_noise.sum(), (fixed, broken)


def test_never_reviewed_run_exports_the_given_labels_by_default(digits_run, tmp_path, capsys):
    out, man = digits_run
    assert cli(["export", str(out), "--out", str(tmp_path / "labels.csv")]) == 0
    n_flagged, n_train = man["metrics"]["num_flagged_train"], man["dataset"]["num_train"]
    assert capsys.readouterr().out.splitlines()[0] == (
        f"wrote {tmp_path / 'labels.csv'}: {n_train} training rows under --apply decisions: {n_train} kept "
        f"({n_train} given), 0 relabelled, 0 removed; {n_flagged} flagged rows nobody decided on keep their given "
        "label (--apply suggested applies the suggestions)")
    a = pd.read_csv(tmp_path / "labels.csv", keep_default_na=False)
    assert len(a) == n_train and (a.final_label == a.given_label).all() and (a.label_source == "given").all()
    assert a.is_label_issue.sum() == n_flagged and "suggested_label" in a.columns  # flags and suggestions as columns
    assert (a.decision == "").all()
    assert cli(["export", str(out), "--out", str(tmp_path / "none.csv"), "--apply", "none"]) == 0
    n = pd.read_csv(tmp_path / "none.csv")
    assert (n.final_label == n.given_label).all() and "decision" not in n.columns


def test_export_drop_flagged(digits_run, tmp_path):
    out, _ = digits_run
    assert cli(["export", str(out), "--out", str(tmp_path / "d.csv"), "--drop-flagged"]) == 0
    d = pd.read_csv(tmp_path / "d.csv")
    ex = pd.read_parquet(out / "examples.parquet")
    n_train = (ex.split == "train").sum()
    assert len(d) == n_train - ex.loc[ex.split == "train", "is_label_issue"].sum()
    assert not d["is_label_issue"].any() and (d.final_label == d.given_label).all()


def test_export_bad_suffix_is_usage_error(digits_run, tmp_path, capsys):
    out, _ = digits_run
    assert cli(["export", str(out), "--out", str(tmp_path / "x.txt")]) == 2
    assert "x.txt" in capsys.readouterr().err
    assert not (tmp_path / "x.txt").exists()


def _copy_run(src, dst):
    import shutil

    dst.mkdir()
    for name in ("manifest.json", "examples.parquet", "pairs.parquet", "dynamics.npz"):
        shutil.copy2(src / name, dst / name)
    return dst


def _reviewed(src, dst):
    """A copy of the run with a few decisions: keep, relabel, two removes, an undone remove, two on test rows."""
    from audit.decisions import DecisionStore

    out = _copy_run(src, dst)
    ex = pd.read_parquet(out / "examples.parquet").set_index("example_id")
    fl = ex[(ex.split == "train") & ex.is_label_issue].sort_values("issue_score", ascending=False).index
    ok = ex[(ex.split == "train") & ~ex.is_label_issue].index
    test_flagged = ex[(ex.split == "test") & ex.is_label_issue].index
    test_ok = ex[(ex.split == "test") & ~ex.is_label_issue].index
    s = DecisionStore(out)
    s.record(fl[0], "keep", reviewer="ann")
    s.record(fl[1], "relabel", reviewer="ann", new_label=(ex.at[fl[1], "given_label"] + 3) % 10)
    s.record(fl[2], "remove", reviewer="bob")
    s.record(ok[0], "remove", reviewer="bob")
    s.record(fl[3], "remove", reviewer="bob")
    s.record(fl[3], "undo", reviewer="bob")  # undone: the automatic rule applies again
    s.record(test_ok[0], "remove", reviewer="cat")  # a person may question a test label; it is listed, not dropped
    s.record(test_flagged[0], "relabel", reviewer="cat", new_label=(ex.at[test_flagged[0], "given_label"] + 1) % 10)
    return out, ex, fl, ok, test_flagged, test_ok


def test_export_policies_count_changes_by_source(digits_run, tmp_path, capsys):
    out, ex, fl, _, _, _ = _reviewed(digits_run[0], tmp_path / "run")
    tr = ex[ex.split == "train"]
    n_train, n_fl = len(tr), int(tr.is_label_issue.sum())
    undecided = tr.loc[fl[3:]]
    moved = int((undecided.suggested_label != undecided.given_label).sum())
    want = {
        "none": f"{n_train} training rows under --apply none: {n_train} kept ({n_train} given), 0 relabelled, "
                f"0 removed; {n_fl} flagged rows keep their given label (nothing applied)",
        "decisions": f"{n_train - 2} training rows under --apply decisions: {n_train - 3} kept ({n_train - 4} given, "
                     f"1 reviewer), 1 relabelled (1 reviewer), 2 removed (2 reviewer); {n_fl - 3} flagged rows "
                     "nobody decided on keep their given label (--apply suggested applies the suggestions)",
        "suggested": f"{n_train - 2} training rows under --apply suggested: {n_train - 3 - moved} kept "
                     f"({n_train - n_fl - 1} given, 1 reviewer" + (f", {n_fl - 3 - moved} suggestion" if n_fl - 3 - moved else "")
                     + f"), {1 + moved} relabelled (1 reviewer, {moved} suggestion), 2 removed (2 reviewer)",
    }
    for policy, line in want.items():
        dest = tmp_path / f"{policy}.csv"
        assert cli(["export", str(out), "--out", str(dest), "--apply", policy]) == 0
        assert capsys.readouterr().out.splitlines()[0] == f"wrote {dest}: {line}"
        a = pd.read_csv(dest, keep_default_na=False).set_index("example_id")
        assert len(a) == (n_train if policy == "none" else n_train - 2)
        assert a.at[fl[1], "final_label"] == (ex.at[fl[1], "given_label"] + (0 if policy == "none" else 3)) % 10
        assert a.at[fl[3], "final_label"] == ex.at[fl[3], ("suggested_label" if policy == "suggested" else "given_label")]
    assert cli(["export", str(out), "--out", str(tmp_path / "x.csv"), "--apply", "decisions", "--drop-flagged"]) == 2
    assert "--drop-flagged" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()


def test_export_use_decisions_with_provenance_and_test_labels_apart(digits_run, tmp_path, capsys):
    out, ex, fl, ok, test_flagged, test_ok = _reviewed(digits_run[0], tmp_path / "run")
    assert cli(["export", str(out), "--out", str(tmp_path / "labels.csv"), "--use-decisions"]) == 0
    captured = capsys.readouterr()
    assert "labels.flagged-test.csv" in captured.out and "deprecated" in captured.err
    assert "--apply suggested" in captured.out and "2 removed (2 reviewer)" in captured.out
    a = pd.read_csv(tmp_path / "labels.csv", keep_default_na=False).set_index("example_id")
    n_train = int((ex.split == "train").sum())
    assert len(a) == n_train - 2 and fl[2] not in a.index and ok[0] not in a.index
    assert set(a.index) <= set(ex.index[ex.split == "train"])  # no test row in the training labels
    assert a.loc[fl[0], ["decision", "reviewer", "label_source"]].tolist() == ["keep", "ann", "reviewer"]
    assert a.at[fl[0], "final_label"] == ex.at[fl[0], "given_label"]
    assert a.at[fl[1], "final_label"] == (ex.at[fl[1], "given_label"] + 3) % 10
    assert a.at[fl[1], "decided_at"] != ""
    assert a.loc[fl[3], ["decision", "label_source"]].tolist() == ["", "suggested"]
    assert a.at[fl[3], "final_label"] == ex.at[fl[3], "suggested_label"]
    assert a.at[ok[1], "label_source"] == "given" and a.at[ok[1], "decision"] == ""
    assert a.at[fl[0], "signals_fired"] == ex.at[fl[0], "signals_fired"]  # the signals travel with the label

    t = pd.read_csv(tmp_path / "labels.flagged-test.csv", keep_default_na=False).set_index("example_id")
    assert set(t.index) == set(test_flagged) | {test_ok[0]}
    assert t.at[test_ok[0], "decision"] == "remove"
    assert t.at[test_ok[0], "reviewed_label"] == ex.at[test_ok[0], "given_label"]
    assert t.at[test_flagged[0], "reviewed_label"] == (ex.at[test_flagged[0], "given_label"] + 1) % 10


def test_flagged_test_labels_listed_without_decisions_and_never_dropped(digits_run, tmp_path):
    out, man = digits_run
    assert cli(["export", str(out), "--out", str(tmp_path / "d.parquet"), "--drop-flagged",
                "--test-out", str(tmp_path / "s.csv")]) == 0
    assert (pd.read_csv(tmp_path / "s.csv", keep_default_na=False)["decision"] == "").all()
    assert cli(["export", str(out), "--out", str(tmp_path / "d.parquet"), "--apply", "none",
                "--test-out", str(tmp_path / "t.csv")]) == 0
    t = pd.read_csv(tmp_path / "t.csv")
    ex = pd.read_parquet(out / "examples.parquet")
    want = ex[(ex.split == "test") & ex.is_label_issue]
    assert len(t) == man["metrics"]["num_flagged_test"] == len(want)
    assert set(t.example_id) == set(want.example_id) and (t.reviewed_label == t.given_label).all()
    assert "decision" not in t.columns
    assert cli(["export", str(out), "--out", str(tmp_path / "e.csv"), "--test-out", str(tmp_path / "e.csv")]) == 2


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(digits_run, tmp_path):
    from audit.decisions import DecisionStore
    from audit.export import neutralise_formulas

    df = pd.DataFrame({"t": ["=1+1", "+A1", "-2+3", "@SUM(A1)", "\tx", "\rx", "ok", "a=b", None], "n": range(-4, 5)})
    got = neutralise_formulas(df)
    assert got["t"].tolist()[:8] == ["'=1+1", "'+A1", "'-2+3", "'@SUM(A1)", "'\tx", "'\rx", "ok", "a=b"]
    assert pd.isna(got["t"].iloc[8]) and got["n"].tolist() == list(range(-4, 5))  # numbers stay numbers
    out = _copy_run(digits_run[0], tmp_path / "run")
    first = pd.read_parquet(out / "examples.parquet").query("split == 'train'")["example_id"].iloc[0]
    DecisionStore(out).record(first, "keep", reviewer='=HYPERLINK("http://evil","x")')
    assert cli(["export", str(out), "--out", str(tmp_path / "l.csv")]) == 0
    text = (tmp_path / "l.csv").read_text()
    assert "'=HYPERLINK" in text and ',=HYPERLINK' not in text and ',"=HYPERLINK' not in text
    assert cli(["export", str(out), "--out", str(tmp_path / "l.parquet")]) == 0  # Parquet keeps the value as it is
    assert pd.read_parquet(tmp_path / "l.parquet").set_index("example_id").at[first, "reviewer"].startswith("=HYPER")
